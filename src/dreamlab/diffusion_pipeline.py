"""Generation three: train a DIAMOND-style diffusion world model, an agent inside its dream, and
evaluate the agent in the real environment (``dreamlab train-diffusion``), resumably.

Stages in ``--out DIR``::

    config.json              the resolved TrainDiffusionConfig
    data/                    collected episodes (only with --env/--collect-episodes)
    world_model/             DiffusionModel (fit's checkpoint: config, weights, optimizer, metrics)
    agent/                   the Q-network trained in the dream (see dreamlab.diffusion_agent)
    fidelity.json            open-loop pixel MSE vs copy-last-frame at every horizon
    dream_vs_real.{mp4,gif}  real | imagined, prediction_error.{png,json}
    eval.json                real-env evaluation of the dream-trained agent, timings, sizes

Every stage checks what is already on disk and resumes from it; a run killed at any moment
continues where its last checkpoint left off when the same command is run again.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dreamlab.checkpoint import load_model
from dreamlab.data.store import EpisodeStore
from dreamlab.diffusion_agent import DiffusionAgent, DreamQConfig, train_in_dream
from dreamlab.diffusion_worldmodel import DiffusionWorldModel, diffusion_start_states
from dreamlab.io import atomic_write_json, read_json
from dreamlab.models import actions_to_tensor
from dreamlab.models.diffusion import DiffusionModel, diffusion_preset, parameter_counts
from dreamlab.train.fit import TrainConfig, fit
from dreamlab.worldmodel import ActionSpec

__all__ = [
    "EpisodeArrays",
    "TrainDiffusionConfig",
    "build_contender",
    "diffusion_batches",
    "open_loop_fidelity",
    "train_diffusion",
    "train_diffusion_cmd",
]


class EpisodeArrays:
    """All episodes of a store in memory, indexed by step, for next-frame training examples.

    Example ``(episode e, step t)``: context frames ``obs[t-L+1 .. t]`` and actions
    ``action[t-L+1 .. t]`` (before the episode's start: the first frame repeated and zero
    actions, exactly what ``DiffusionWorldModel.observe`` builds on a fresh state), target
    ``obs[t+1]``, ``reward[t]``, ``terminated[t]``.

    Args:
        store: an ``EpisodeStore`` of frames (``obs``, ``action``, ``reward``, ``terminated``).
        action_kind: 'discrete' or 'continuous'.
        action_dim: number of actions (discrete) or action size.
        max_episodes: read at most this many episodes (the first ones).
    """

    def __init__(
        self, store: Any, action_kind: str, action_dim: int, max_episodes: int | None = None
    ) -> None:
        indices = list(store.indices)[:max_episodes]
        if not indices:
            raise ValueError(f"{getattr(store, 'path', 'store')}: holds no episodes")
        obs, act, rew, term, starts, steps = [], [], [], [], [], []
        frame_base = 0
        for i in indices:
            ep = store.episode(i)
            missing = [k for k in ("obs", "action", "reward", "terminated") if k not in ep]
            if missing:
                raise ValueError(f"episode {i}: a diffusion world model needs arrays {missing}")
            t = len(ep["action"])
            if t < 1:
                continue
            obs.append(np.asarray(ep["obs"]))
            a = actions_to_tensor(np.array(ep["action"]), action_kind, action_dim).numpy()  # type: ignore[arg-type]
            act.append(a.reshape(t, action_dim))
            rew.append(np.asarray(ep["reward"], np.float32))
            term.append(np.asarray(ep["terminated"], bool))
            starts.append(np.full(t, frame_base, np.int64))
            steps.append(np.arange(t, dtype=np.int64))
            frame_base += t + 1
        self.obs = np.concatenate(obs)  # (sum T+1, H, W, 3) uint8
        self.action = np.concatenate(act)  # (sum T, A) float32, row = frame index - episode
        self.reward = np.concatenate(rew)  # (sum T,)
        self.terminated = np.concatenate(term)  # (sum T,)
        self.episode_frame = np.concatenate(starts)  # (N,) first frame of each step's episode
        self.step = np.concatenate(steps)  # (N,) step within its episode
        self.num_steps = len(self.step)
        if self.obs.ndim != 4 or self.obs.shape[-1] != 3 or self.obs.dtype != np.uint8:
            raise ValueError(
                f"{getattr(store, 'path', 'store')}: obs must be uint8 (T+1, H, W, 3), got "
                f"{self.obs.dtype} {self.obs.shape[1:]}"
            )

    @property
    def frame_size(self) -> int:
        """Side of the frames."""
        return int(self.obs.shape[1])

    def gather(self, rows: np.ndarray, context: int) -> dict[str, np.ndarray]:
        """Training examples for global step rows ``(B,)``."""
        t = self.step[rows]  # (B,)
        offs = np.arange(-context + 1, 1)  # (L,)
        back = t[:, None] + offs[None]  # (B, L) step index of each context slot
        valid = back >= 0  # (B, L)
        frame_idx = self.episode_frame[rows, None] + np.maximum(back, 0)  # (B, L)
        step_idx = rows[:, None] + offs[None]  # (B, L) same episode where valid
        actions = np.where(valid[..., None], self.action[np.where(valid, step_idx, 0)], 0.0).astype(
            np.float32
        )  # (B, L, A)
        return {
            "context": self.obs[frame_idx],  # (B, L, H, W, 3)
            "actions": actions,
            "target": self.obs[self.episode_frame[rows] + t + 1],  # (B, H, W, 3)
            "reward": self.reward[rows],
            "terminated": self.terminated[rows].astype(np.float32),
        }


def diffusion_batches(data: EpisodeArrays, context: int, batch_size: int, seed: int) -> Any:
    """A ``fit``-ready batch source: ``start_step -> iterator of batches`` (uniform steps).

    The generator for a resumed run is seeded with ``(seed, start_step)``, so a resume draws
    fresh batches deterministically.
    """

    def stream(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([seed, start_step])
        while True:
            rows = rng.integers(0, data.num_steps, size=batch_size)
            yield data.gather(rows, context)

    return stream


# ---------------------------------------------------------------------- fidelity
def open_loop_fidelity(
    world_model: Any,
    episodes: list[dict[str, np.ndarray]],
    *,
    context: int = 4,
    horizons: tuple[int, ...] = (1, 5, 10, 20),
    seed: int = 0,
) -> dict[str, Any]:
    """Open-loop pixel MSE of the model against copying the last real frame.

    The model observes ``context`` real frames (stepping with the real actions in between),
    then imagines ``max(horizons)`` steps with the real actions; at each horizon h the imagined
    frame and the last context frame (copy-last baseline) are compared with the real frame.

    Returns:
        ``{"horizons", "model_mse", "copy_last_mse", "ratio", "episodes", "context",
        "ball_x_error"}``: means over episodes at each horizon (``ball_x_error``: mean |dx| in
        pixels of the ball's centroid where both frames show a ball, Catch only, else None).
    """
    from dreamlab.eval.fidelity import open_loop, position_probe

    horizon = max(horizons)
    need = context + horizon - 1
    episodes = [ep for ep in episodes if len(ep["action"]) >= need]
    if not episodes:
        raise ValueError(f"open_loop_fidelity: no episode has {need} steps")
    res = open_loop(world_model, episodes, context, horizon, seed=seed)
    ball_err: list[float] | None
    try:
        probe = position_probe(res.imagined, res.real)
        ball_err = [float(probe["ball_x_err"][h - 1]) for h in horizons]
    except ValueError:  # not square RGB frames: no Catch probe
        ball_err = None
    model_mse = [float(res.mse[:, h - 1].mean()) for h in horizons]
    copy_mse = [float(res.baseline_mse[:, h - 1].mean()) for h in horizons]
    return {
        "context": context,
        "episodes": len(episodes),
        "horizons": list(horizons),
        "model_mse": model_mse,
        "copy_last_mse": copy_mse,
        "ratio": [
            m / c if c > 0 else float("nan") for m, c in zip(model_mse, copy_mse, strict=True)
        ],
        "ball_x_error": ball_err,
    }


# ---------------------------------------------------------------------- the command
@dataclass
class TrainDiffusionConfig:
    """Train a DIAMOND-style diffusion world model, an agent in its dream, and evaluate it."""

    out: Path = Path("runs/diffusion")
    """run directory (created, or resumed when it exists)"""
    data: Path | None = None
    """episode store to train on; when absent, --env/--collect-episodes collect into OUT/data"""
    env: str = "catch-32"
    """env preset to collect from and evaluate in (with --data: read from the store)"""
    env_kwargs: dict[str, int | float | bool | str] = field(
        default_factory=lambda: {"discrete": True}
    )
    """env constructor keywords (with --data: read from the store)"""
    collect_episodes: int = 300
    """episodes to collect when --data is absent"""
    collect_policy: str = "random"
    """policy of that collection: random, brownian, expert"""
    preset: Literal["tiny", "diamond"] = "tiny"
    """model size: tiny (CPU, 32x32) or diamond (the paper's Atari denoiser, GPU)"""
    steps: int = 3000
    """world-model optimizer steps"""
    batch_size: int = 32
    """world-model batch size (next-frame examples)"""
    lr: float = 5e-4
    """world-model learning rate (AdamW)"""
    holdout_episodes: int = 16
    """last episodes of the store kept out of training for the fidelity measurement"""
    agent: DreamQConfig = field(default_factory=DreamQConfig)
    """Q-learning in the dream"""
    eval_episodes: int = 100
    """real-env episodes of the final evaluation"""
    seed: int = 0
    """seed of everything"""
    device: str = "cpu"
    """torch device"""
    num_threads: int = 1
    """torch CPU threads (0 keeps torch's default)"""
    progress: bool = True
    """progress bars and a summary at the end"""


_FREE = ("progress", "num_threads", "device", "out")


def _check_config(out: Path, cfg: TrainDiffusionConfig) -> None:
    path = out / "config.json"
    mine = _jsonable(asdict(cfg))
    if path.exists():
        saved = read_json(path, "run config")
        old = {k: v for k, v in saved.get("diffusion", {}).items() if k not in _FREE}
        new = {k: v for k, v in mine.items() if k not in _FREE}
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(
                f"{path}: this run was started with other settings (differing: {diff}); run the "
                "same command to resume, or use another --out"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"kind": "diffusion", "diffusion": mine})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _open_data(cfg: TrainDiffusionConfig, out: Path) -> tuple[Any, str, dict[str, Any]]:
    if cfg.data is not None:
        store = EpisodeStore.open(cfg.data)
        preset = store.meta.preset or {}
        env = str(preset.get("name", store.meta.env_id))
        kwargs = dict(preset.get("env_kwargs", {}))
        return store, env, kwargs
    from dreamlab.data.collect import CollectConfig, collect

    collect(
        CollectConfig(
            env=cfg.env,
            out=out / "data",
            episodes=cfg.collect_episodes,
            policy=cfg.collect_policy,
            seed=cfg.seed,
            workers=1,
            env_kwargs=dict(cfg.env_kwargs),
            progress=cfg.progress,
        )
    )
    return EpisodeStore.open(out / "data"), cfg.env, dict(cfg.env_kwargs)


class _Subset:
    """The first ``n`` episodes of a store (duck-types ``indices`` / ``episode`` / ``path``)."""

    def __init__(self, store: Any, n: int) -> None:
        self.store, self.indices, self.path = store, list(store.indices)[:n], store.path

    def episode(self, i: int) -> dict[str, np.ndarray]:
        return self.store.episode(i)


def fit_world_model(
    store: Any,
    spec: ActionSpec,
    out_dir: Path,
    *,
    preset: str = "tiny",
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 5e-4,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[DiffusionWorldModel, Any]:
    """Train (or resume) the diffusion model on ``store``'s episodes in ``out_dir``."""
    data = EpisodeArrays(store, spec.kind, spec.n)
    mcfg = diffusion_preset(
        preset, frame_size=data.frame_size, action_kind=spec.kind, action_dim=spec.n
    )
    torch.manual_seed(seed)
    model = DiffusionModel(mcfg)
    tcfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        log_every=50,
        checkpoint_every=250,
        seed=seed,
        device=device,
        progress=progress,
        tensorboard=False,
    )
    result = fit(
        model,
        diffusion_batches(data, mcfg.context, batch_size, seed),
        tcfg,
        out_dir,
        total_steps=steps,
        stage="diffusion",
    )
    loaded = load_model(out_dir, DiffusionModel, device=device)
    assert isinstance(loaded, DiffusionModel)
    return DiffusionWorldModel(loaded, spec), result


def train_agent(
    world_model: DiffusionWorldModel, store: Any, spec: ActionSpec, cfg: DreamQConfig, out_dir: Path
) -> tuple[DiffusionAgent, Any]:
    """Q-learning in the dream from the first frames of ``store``'s episodes (resumable)."""
    start = diffusion_start_states(world_model, store, frames="first")
    qnet, result = train_in_dream(world_model, start, spec.to_space(), cfg, out_dir)
    return DiffusionAgent(world_model, qnet), result


def train_diffusion(cfg: TrainDiffusionConfig) -> dict[str, Any]:
    """Run (or resume) every stage in ``cfg.out``; returns the evaluation summary (eval.json)."""
    from dreamlab.envs import make_env
    from dreamlab.eval.dream_vs_real import dream_vs_real
    from dreamlab.eval.evaluate import evaluate_policy

    out = Path(cfg.out)
    _check_config(out, cfg)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    store, env_name, env_kwargs = _open_data(cfg, out)
    spec = ActionSpec.from_space(_space_of(store))
    if spec.kind != "discrete":
        raise ValueError(
            f"train-diffusion: the dream-trained agent (Q-learning) needs a Discrete action space, "
            f"the store has {spec.kind}({spec.n}); for Catch collect with env_kwargs discrete=True"
        )
    num = len(store.indices)
    if num <= cfg.holdout_episodes:
        raise ValueError(
            f"{store.path}: {num} episodes, but {cfg.holdout_episodes} are held out; collect more"
        )
    train_eps = _Subset(store, num - cfg.holdout_episodes)
    t_start = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime

    # 1. world model
    cpu_wm = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    wm, fit_res = fit_world_model(
        train_eps,
        spec,
        out / "world_model",
        preset=cfg.preset,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        device=cfg.device,
        progress=cfg.progress,
    )
    cpu_wm = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_wm
    model = wm.model
    mcfg = model.config

    # 2. fidelity on held-out episodes + the dream-vs-real picture
    held = [store.episode(i) for i in list(store.indices)[num - cfg.holdout_episodes :]]
    fid_path = out / "fidelity.json"
    if fid_path.exists():
        fidelity = read_json(fid_path, "fidelity")
    else:
        fidelity = open_loop_fidelity(wm, held, context=mcfg.context, seed=cfg.seed)
        atomic_write_json(fid_path, fidelity)
        long = [ep for ep in held if len(ep["action"]) >= mcfg.context + 19]
        if long:
            dream_vs_real(wm, long[:4], out, context=mcfg.context, horizon=20, seed=cfg.seed)

    # 3. agent in the dream
    acfg = dataclasses.replace(cfg.agent, seed=cfg.seed, progress=cfg.progress)
    cpu_agent = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    agent, agent_res = train_agent(wm, train_eps, spec, acfg, out / "agent")
    cpu_agent = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_agent
    qnet = agent.qnet

    # 4. the real env
    eval_path = out / "eval.json"
    if eval_path.exists():
        summary = read_json(eval_path, "eval")
    else:
        result = evaluate_policy(
            lambda: make_env(env_name, **env_kwargs),
            agent,
            cfg.eval_episodes,
            env_name=env_name,
            seed=10_000 + cfg.seed,
            progress=cfg.progress,
        )
        counts = parameter_counts(model)
        summary = {
            **result.summary(),
            "env_kwargs": env_kwargs,
            "preset": cfg.preset,
            "params_world_model": counts["total"],
            "params_denoiser": counts["denoiser"],
            "params_reward_end": counts["reward_end"],
            "params_agent": sum(p.numel() for p in qnet.parameters()),
            "world_model_seconds": fit_res.seconds,
            "world_model_steps": fit_res.step,
            "agent_seconds": agent_res.seconds,
            "agent_dream_seconds": agent_res.dream_seconds,
            "agent_transitions": agent_res.transitions,
            "agent_updates": agent_res.updates,
            "imagined_steps_per_s": agent_res.transitions / max(agent_res.dream_seconds, 1e-9),
            "sampler": mcfg.sampler,
            "denoising_steps": mcfg.num_steps,
            "fidelity": fidelity,
            "this_call_world_model_user_cpu_seconds": cpu_wm,
            "this_call_agent_user_cpu_seconds": cpu_agent,
            "this_call_wall_seconds": time.perf_counter() - t_start,
            "this_call_user_cpu_seconds": resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0,
        }
        atomic_write_json(eval_path, summary)
    if cfg.progress:
        _print_summary(out, summary)
    return summary


def _space_of(store: Any) -> Any:
    from dreamlab.data.store import space_from_description

    return space_from_description(store.meta.action_space)


def _print_summary(out: Path, s: dict[str, Any]) -> None:
    fid = s.get("fidelity", {})
    rows = ", ".join(
        f"h={h}: {m:.4f} vs {c:.4f}"
        for h, m, c in zip(
            fid.get("horizons", []),
            fid.get("model_mse", []),
            fid.get("copy_last_mse", []),
            strict=False,
        )
    )
    rate = f", catch rate {s['catch_rate']:.1%}" if "catch_rate" in s else ""
    print(
        f"[dreamlab] diffusion run {out}: world model {s['params_world_model']:,} params, "
        f"{s['world_model_steps']} steps in {s['world_model_seconds']:.0f}s; agent "
        f"{s['agent_transitions']:,} imagined steps ({s['imagined_steps_per_s']:.0f}/s); real env "
        f"over {s['episodes']} episodes: mean return {s['mean_return']:.2f}{rate}\n"
        f"[dreamlab] open-loop pixel MSE (model vs copy-last): {rows}",
        file=sys.stderr,
    )


def train_diffusion_cmd(cfg: TrainDiffusionConfig) -> dict[str, Any]:
    """CLI wrapper of :func:`train_diffusion`."""
    return train_diffusion(cfg)


# ---------------------------------------------------------------------- compare-models
def build_contender(ctx: Any) -> Any:
    """Generation 3 for ``dreamlab compare-models``: the diffusion world model and the Q-agent
    trained in its dream, on ``ctx.data``, resumably in ``ctx.out``; ``ctx.scale`` scales the
    world-model steps, the dream rounds, the dreams and the gradient steps."""
    from dreamlab.eval.contender import Contender

    t0 = time.perf_counter()
    scale = float(ctx.scale)
    if scale <= 0:
        raise ValueError(f"build_contender: scale must be > 0, got {scale}")
    spec = ActionSpec.from_space(_space_of(ctx.data))
    if spec.kind != "discrete":
        raise ValueError(
            "diffusion contender: the dream-trained agent needs a Discrete action space, got "
            f"{spec.kind}({spec.n})"
        )
    out = Path(ctx.out)
    defaults = TrainDiffusionConfig()
    wm, fit_res = fit_world_model(
        ctx.data,
        spec,
        out / "world_model",
        preset="tiny",
        steps=max(2, round(defaults.steps * scale)),
        batch_size=defaults.batch_size,
        lr=defaults.lr,
        seed=ctx.seed,
        progress=ctx.progress,
    )
    a = defaults.agent
    acfg = dataclasses.replace(
        a,
        rounds=max(1, round(a.rounds * scale)),
        num_dreams=max(8, round(a.num_dreams * min(1.0, 5 * scale))),
        dream_steps=max(4, round(a.dream_steps * min(1.0, 5 * scale))),
        updates_per_round=max(1, round(a.updates_per_round * scale)),
        eps_decay_rounds=max(1, round(a.eps_decay_rounds * scale)),
        seed=ctx.seed,
        progress=ctx.progress,
    )
    agent, agent_res = train_agent(wm, ctx.data, spec, acfg, out / "agent")
    counts = parameter_counts(wm.model)
    start = diffusion_start_states(wm, ctx.data, frames="first")
    return Contender(
        name="diffusion (EDM, DIAMOND-style) + Q-learning in the dream",
        generation=3,
        world_model=wm,
        policy=agent,
        dream_policy=agent.act,
        dream_start=start,
        params_world_model=counts["total"],
        params_agent=sum(p.numel() for p in agent.qnet.parameters()),
        train_seconds=fit_res.seconds + agent_res.seconds,
        notes={
            "sampler": wm.model.config.sampler,
            "denoising_steps": wm.model.config.num_steps,
            "world_model_steps": fit_res.step,
            "agent_rounds": agent_res.rounds,
            "agent_transitions": agent_res.transitions,
            "build_seconds_this_call": time.perf_counter() - t0,
        },
    )
