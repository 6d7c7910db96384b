"""Generation three: train a DIAMOND-style diffusion world model, an agent inside its dream, and
evaluate the agent in the real environment (``dreamlab train-diffusion``), resumably.

Stages in ``--run DIR`` (``--out`` is the same)::

    config.json              {"kind": "diffusion", "config": the TrainDiffusionConfig}
    data/                    collected episodes (only with --env/--collect-episodes)
    world_model/             DiffusionModel (fit's checkpoint: config, weights, optimizer, metrics)
    agent/                   the Q-network trained in the dream (see dreamlab.generations.diffusion.agent)
    fidelity.json            open-loop pixel MSE vs copy-last-frame at every horizon
    dream_vs_real.{mp4,gif}  real | imagined, prediction_error.{png,json}
    eval.json                real-env evaluation of the dream-trained agent, timings, sizes
    timings.json             wall seconds of each stage, summed over resumes

Every stage checks what is already on disk and resumes from it; a run killed at any moment
continues where its last checkpoint left off when the same command is run again.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from dreamlab.checkpoint import CheckpointError, config_from_dict, load_model
from dreamlab.data.store import EpisodeStore
from dreamlab.eval.fidelity import fitting_horizons
from dreamlab.generations.diffusion.agent import DiffusionAgent, DreamQConfig, train_in_dream
from dreamlab.generations.diffusion.data import EpisodeArrays, StoreSubset, diffusion_batches
from dreamlab.generations.diffusion.fidelity import open_loop_fidelity
from dreamlab.generations.diffusion.worldmodel import DiffusionWorldModel, diffusion_start_states
from dreamlab.generations.own import StoreFacts, scaled, store_env
from dreamlab.io import atomic_write_json, read_json
from dreamlab.models.diffusion import DiffusionModel, diffusion_preset, parameter_counts
from dreamlab.rundir import (
    RunError,
    check_same_settings,
    read_run_config_of,
    store_action_space,
    timed,
    write_run_config,
)
from dreamlab.train.fit import TrainConfig, fit
from dreamlab.worldmodel import ActionSpec

__all__ = [
    "EVAL_SEED",
    "KIND",
    "PRESETS",
    "TrainDiffusionConfig",
    "check_actions",
    "fit_world_model",
    "own_config",
    "run_env",
    "run_store",
    "train_agent",
    "train_diffusion",
]

KIND = "diffusion"
"""the generation's kind in ``RUN/config.json``"""
EVAL_SEED = 10_000
"""the real evaluation's first seed is this + the run's seed"""


@dataclass
class TrainDiffusionConfig:
    """Train a DIAMOND-style diffusion world model, an agent in its dream, and evaluate it."""

    out: Annotated[Path, tyro.conf.arg(name="run", aliases=("--out",))] = Path("runs/diffusion")
    """run directory (created, or resumed when it exists)"""
    data: Path | None = None
    """episode store to train on; when absent, --env/--collect-episodes collect into RUN/data"""
    env: str = "catch-32"
    """env preset to collect from and evaluate in (with --data: read from the store)"""
    env_kwargs: dict[str, int | float | bool | str] = field(
        default_factory=lambda: {"discrete": True}
    )
    """env constructor keywords (with --data: read from the store)"""
    collect_episodes: int = 300
    """episodes to collect when --data is absent (0: ``RUN/data`` already holds the run's
    episodes, collected or linked by a run sized from ``pipeline --env/--data``)"""
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

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config.json") -> TrainDiffusionConfig:
        """Rebuild from the ``config`` of ``RUN/config.json`` (the agent's settings included)."""
        try:  # the agent's too; a FullRecord (keys removed by hand) needs every field
            return config_from_dict(cls, data, source)
        except CheckpointError as e:
            raise RunError(str(e)) from None


def _debug() -> TrainDiffusionConfig:
    return TrainDiffusionConfig(
        collect_episodes=4,
        holdout_episodes=1,
        steps=2,
        batch_size=4,
        agent=DreamQConfig(
            rounds=1, num_dreams=4, dream_steps=2, updates_per_round=2, batch_size=4
        ),
        eval_episodes=2,
    )


def check_actions(spec: ActionSpec) -> None:
    """Refuse actions that are not ``Discrete``: the agent learns by Q-learning.

    Raises:
        RunError: naming the actions and the generations that take them.
    """
    if spec.kind != "discrete":
        raise RunError(
            f"the diffusion generation's agent learns by Q-learning, which needs Discrete "
            f"actions; these are {spec.kind}({spec.n}): use --generation vmc, rssm or tokens"
        )


def own_config(
    facts: StoreFacts, env: str, env_kwargs: dict[str, Any], seed: int, scale: float = 1.0
) -> TrainDiffusionConfig:
    """A diffusion run sized from a store's :class:`~dreamlab.generations.own.StoreFacts` (the
    episodes already in ``RUN/data``): the model's frame size from the frames, a tenth of the
    episodes (1..16) held out for the fidelity measurement, dreams as long as a real episode may
    last; every budget times ``scale``.

    Raises:
        RunError: actions that are not ``Discrete`` (the agent learns by Q-learning).
    """
    check_actions(facts.spec)
    rounds = scaled(16, scale, least=1)
    return TrainDiffusionConfig(
        env=env,
        env_kwargs=dict(env_kwargs),
        collect_episodes=0,
        steps=scaled(3000, scale),
        holdout_episodes=min(16, max(1, facts.episodes // 10)),
        agent=DreamQConfig(
            rounds=rounds,
            num_dreams=scaled(256, scale, least=16),
            eps_decay_rounds=max(1, rounds // 2),
            updates_per_round=scaled(800, scale),
            max_episode_steps=facts.dream_steps,
        ),
        eval_episodes=scaled(50, scale, least=4),
        seed=seed,
    )


PRESETS: dict[str, Callable[[], TrainDiffusionConfig]] = {
    "catch-diffusion": TrainDiffusionConfig,
    "catch-diffusion-debug": _debug,
}
"""``dreamlab pipeline`` presets: ``catch-diffusion`` is what ``dreamlab train-diffusion`` does by
default; ``catch-diffusion-debug`` a seconds-long run of every stage"""

_FREE = ("progress", "num_threads", "device", "out")
"""settings a resumed run may change"""


def _record_config(out: Path, cfg: TrainDiffusionConfig) -> TrainDiffusionConfig:
    """Write ``OUT/config.json`` for a new run; for an existing one check it holds ``cfg``.
    Returns ``cfg``, with ``--data``'s env (the store's) as its env: ``play``, ``load_agent``
    and ``compare`` read the env from ``config.json``."""
    saved = read_run_config_of(out, KIND, "diffusion")
    if cfg.data is not None:  # a bad --data is one clear error before anything is written
        env, env_kwargs = run_env(cfg, EpisodeStore.open(cfg.data))
        cfg = dataclasses.replace(cfg, env=env, env_kwargs=env_kwargs)
    if saved is None:
        if cfg.data is None:
            from dreamlab.envs import make_env

            make_env(cfg.env, **cfg.env_kwargs).close()
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, KIND, asdict(cfg))
        return cfg
    # with --data the env follows the store (a run recorded before it did keeps its own)
    free = (*_FREE, "env", "env_kwargs") if cfg.data is not None else _FREE
    check_same_settings(out, saved, asdict(cfg), free=free, flag="--run")
    return cfg


def run_store(cfg: TrainDiffusionConfig, out: Path) -> EpisodeStore:
    """The episode store the run trains on: ``--data``, else ``RUN/data``."""
    return EpisodeStore.open(cfg.data if cfg.data is not None else out / "data")


def run_env(cfg: TrainDiffusionConfig, store: Any) -> tuple[str, dict[str, Any]]:
    """The env (id, keywords) the run evaluates in: the store's with ``--data``, else ``cfg``'s."""
    if cfg.data is None:
        return cfg.env, dict(cfg.env_kwargs)
    return store_env(store)


def _collect(cfg: TrainDiffusionConfig, out: Path) -> None:
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
    cfg = _record_config(out, cfg)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    if cfg.data is None and cfg.collect_episodes > 0:
        timed(out, "collect", lambda: _collect(cfg, out))
    store = run_store(cfg, out)
    env_name, env_kwargs = run_env(cfg, store)
    spec = ActionSpec.from_space(store_action_space(store))
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
    train_eps = StoreSubset(store, num - cfg.holdout_episodes)
    t_start = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime

    # 1. world model
    cpu_wm = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    wm, fit_res = timed(
        out,
        "world_model",
        lambda: fit_world_model(
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
        ),
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

        def measure() -> dict[str, Any]:
            # the horizons the held-out episodes are long enough for (an env whose episodes end
            # early, say on failure, may have none: then the table is empty)
            horizons = fitting_horizons(held, mcfg.context, (1, 5, 10, 20))
            if horizons:
                result = open_loop_fidelity(
                    wm, held, context=mcfg.context, horizons=horizons, seed=cfg.seed
                )
            else:
                result = {"horizons": [], "episodes": 0, "context": mcfg.context}
            atomic_write_json(fid_path, result)
            long = [ep for ep in held if len(ep["action"]) >= mcfg.context + 19]
            if long:
                dream_vs_real(wm, long[:4], out, context=mcfg.context, horizon=20, seed=cfg.seed)
            return result

        fidelity = timed(out, "fidelity", measure)

    # 3. agent in the dream
    acfg = dataclasses.replace(cfg.agent, seed=cfg.seed, progress=cfg.progress)
    cpu_agent = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    agent, agent_res = timed(
        out, "agent", lambda: train_agent(wm, train_eps, spec, acfg, out / "agent")
    )
    cpu_agent = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_agent
    qnet = agent.qnet

    # 4. the real env (eval.json may already hold `dreamlab evaluate`'s agents: kept)
    eval_path = out / "eval.json"
    saved = read_json(eval_path, "eval") if eval_path.exists() else {}
    if "mean_return" in saved:
        summary = saved
    else:
        result = timed(
            out,
            "evaluate",
            lambda: evaluate_policy(
                lambda: make_env(env_name, **env_kwargs),
                agent,
                cfg.eval_episodes,
                env_name=env_name,
                seed=EVAL_SEED + cfg.seed,
                progress=cfg.progress,
            ),
        )
        counts = parameter_counts(model)
        summary = {
            **saved,
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
