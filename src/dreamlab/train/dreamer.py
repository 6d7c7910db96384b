"""Dreamer's online loop: collect in the real env, fit the RSSM, learn to act in imagination.

Per ``train_every`` env steps (summed over the ``num_envs`` parallel envs) one update runs:

1. a batch of ``batch_size`` windows of ``seq_len`` steps from replay -> one RSSM gradient step;
2. the posterior states of that batch are the start states of one actor-critic update in
   imagination (:mod:`dreamlab.train.imagination`).

So the *replay ratio* (replayed steps per env step) is ``batch_size * seq_len / train_every``.
The first ``prefill_steps`` env steps use uniformly random actions and no updates.

``out_dir`` holds everything::

    config.json          the DreamerConfig (resolved)
    data/                every finished real episode (episode store; the replay buffer)
    world_model/         RSSM: config.json, model.safetensors
    actor_critic/        actor, critic, slow critic, return scale: config.json, model.safetensors
    optimizer.safetensors, trainer.json   (resume state; trainer.json is written last)
    metrics.jsonl, tb/   training curves (dreamer/train/*, dreamer/eval/*)
    eval.json            every periodic real-env evaluation and the final one

A killed run resumes from its last checkpoint: weights, optimizer, counters and RNG state are
restored and the replay buffer is re-read from ``data/`` (episodes finished after the checkpoint
are kept; the episodes in flight are lost).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.checkpoint import (
    CheckpointError,
    config_from_dict,
    load_optimizer,
    load_weights,
    save_model,
    save_optimizer,
    weights_step,
)
from dreamlab.data.store import EpisodeStore, StoreMeta
from dreamlab.dreamer_agent import DreamerAgent
from dreamlab.io import append_jsonl, atomic_write_json, atomic_write_text, read_json, read_jsonl
from dreamlab.models.actor_critic import ActorCritic, ActorCriticConfig
from dreamlab.models.rssm import RSSM, RSSMConfig, rssm_preset
from dreamlab.progress import tqdm
from dreamlab.rssm_worldmodel import RSSMWorldModel
from dreamlab.train.fit import TrainingDivergedError
from dreamlab.train.imagination import ImaginationConfig, ImaginationTrainer
from dreamlab.worldmodel import ActionSpec

__all__ = ["DreamerConfig", "DreamerResult", "DreamerTrainer", "Replay", "train_dreamer"]

TRAINER_FILE = "trainer.json"
_FREE_KEYS = ("progress", "tensorboard", "num_threads")
"""settings a resumed run may change (they do not change what is learned)"""


@dataclass
class DreamerConfig:
    """Every setting of one Dreamer run (world model, behaviour, online loop)."""

    preset: str = "custom"
    """name of the preset these settings started from"""
    env: str = "catch-32"
    """environment: preset name, registered Gymnasium id, or pkg.module:Class"""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """extra keyword arguments for the env constructor (e.g. {"discrete": true} for Catch)"""
    seed: int = 0
    """seed of the envs, the networks and the replay sampling"""
    model_size: str = "tiny"
    """RSSM size preset: tiny (CPU), small, dreamerv3-s"""
    rssm: RSSMConfig | None = None
    """full RSSM config (overrides model_size; frame size and action space are set from the env)"""
    foreground_weight: float = 10.0
    """extra image-loss weight on foreground pixels (Catch's 3x3 ball is 0.2-0.9% of a frame)"""
    actor_hidden: int = 128
    """width of the actor's and critic's hidden layers"""
    actor_layers: int = 2
    """hidden layers of the actor and the critic"""
    value_bins: int = 63
    """bins of the two-hot critic"""
    imagination: ImaginationConfig = field(
        default_factory=lambda: ImaginationConfig(actor_lr=1e-4, critic_lr=1e-4, max_starts=512)
    )
    """actor-critic settings (horizon 15, lambda-returns, return normalisation, entropy)"""
    total_env_steps: int = 20_000
    """real env steps in total (summed over the parallel envs)"""
    num_envs: int = 4
    """parallel real envs stepped in lockstep by one batched policy call"""
    prefill_steps: int = 1000
    """env steps with random actions before the first update"""
    train_every: int = 4
    """env steps per update (one world-model step + one actor-critic step)"""
    batch_size: int = 16
    """sequences per world-model batch"""
    seq_len: int = 32
    """steps per replayed sequence"""
    model_lr: float = 3e-4
    """world-model learning rate (Adam)"""
    model_grad_clip: float = 1000.0
    """clip the world model's gradient norm to this (0 disables)"""
    eval_every: int = 5000
    """env steps between real-env evaluations (0 = only the final one)"""
    eval_episodes: int = 20
    """episodes per periodic evaluation"""
    final_eval_episodes: int = 100
    """episodes of the final evaluation"""
    checkpoint_every: int = 2000
    """env steps between checkpoints (one is always written at the end)"""
    log_every: int = 50
    """updates between metric records"""
    max_episode_steps: int | None = None
    """truncate real episodes after this many steps (None keeps the env preset's limit)"""
    device: str = "cpu"
    """torch device"""
    num_threads: int = 0
    """torch CPU threads (0 keeps torch's default)"""
    progress: bool = True
    """show a progress bar and print a summary"""
    tensorboard: bool = True
    """also write metrics to TensorBoard under OUT_DIR/tb"""

    def __post_init__(self) -> None:
        positive = (
            "total_env_steps",
            "num_envs",
            "train_every",
            "batch_size",
            "seq_len",
            "eval_episodes",
            "final_eval_episodes",
            "checkpoint_every",
            "log_every",
            "actor_hidden",
            "actor_layers",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"DreamerConfig.{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("prefill_steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"DreamerConfig.{name}: expected >= 0, got {getattr(self, name)}")
        if self.model_lr <= 0:
            raise ValueError(f"DreamerConfig.model_lr: expected > 0, got {self.model_lr}")

    @property
    def replay_ratio(self) -> float:
        """Replayed steps per env step."""
        return self.batch_size * self.seq_len / self.train_every

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config.json") -> DreamerConfig:
        """Rebuild from :meth:`to_json` output (nested configs included)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object")
        values = dict(data)
        if values.get("rssm") is not None:
            values["rssm"] = config_from_dict(RSSMConfig, values["rssm"], f"{source}:rssm")
        if "imagination" in values:
            values["imagination"] = config_from_dict(
                ImaginationConfig, values["imagination"], f"{source}:imagination"
            )
        try:
            return config_from_dict(cls, values, source)
        except CheckpointError as e:
            raise ValueError(str(e)) from None

    def resolve_rssm(self, frame_size: int, spec: ActionSpec) -> RSSMConfig:
        """The RSSM config for frames of ``frame_size`` and the env's action space."""
        base = self.rssm if self.rssm is not None else rssm_preset(self.model_size)
        return dataclasses.replace(
            base,
            frame_size=frame_size,
            action_kind=spec.kind,
            action_dim=spec.n,
            foreground_weight=self.foreground_weight
            if self.rssm is None
            else base.foreground_weight,
        )


@dataclass
class DreamerResult:
    """What :func:`train_dreamer` did."""

    out_dir: Path
    env_steps: int
    updates: int
    episodes: int
    seconds: float
    final_eval: dict[str, Any] | None
    metrics: dict[str, float]


class Replay:
    """Finished episodes in memory, sampled as fixed-length windows.

    Args:
        seq_len: steps per window (episodes shorter than this are kept but never sampled).
    """

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len
        self.episodes: list[dict[str, np.ndarray]] = []
        self.num_steps = 0

    def add(self, episode: dict[str, np.ndarray]) -> None:
        """Add one episode (``obs (T+1, ...)``, ``action (T, ...)``, ``reward``, ``terminated``)."""
        self.episodes.append(
            {k: np.asarray(episode[k]) for k in ("obs", "action", "reward", "terminated")}
        )
        self.num_steps += len(episode["reward"])

    def __len__(self) -> int:
        return len(self.episodes)

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` windows, each start uniform over every valid position of every episode.

        Returns:
            ``obs (B, L+1, H, W, 3)``, ``action (B, L, ...)``, ``reward (B, L)``,
            ``terminated (B, L)``.
        """
        windows = np.array([max(0, len(e["reward"]) - self.seq_len + 1) for e in self.episodes])
        total = int(windows.sum())
        if total == 0:
            raise ValueError(
                f"Replay: no episode has {self.seq_len} steps yet; lower seq_len or collect more"
            )
        flat = rng.integers(0, total, batch_size)
        bounds = np.cumsum(windows)
        out: dict[str, list[np.ndarray]] = {"obs": [], "action": [], "reward": [], "terminated": []}
        for f in flat:
            ep_i = int(np.searchsorted(bounds, f, side="right"))
            start = int(f - (bounds[ep_i] - windows[ep_i]))
            ep = self.episodes[ep_i]
            end = start + self.seq_len
            out["obs"].append(ep["obs"][start : end + 1])
            out["action"].append(ep["action"][start:end])
            out["reward"].append(ep["reward"][start:end])
            out["terminated"].append(ep["terminated"][start:end])
        return {k: np.stack(v) for k, v in out.items()}


def _to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).to(device) for k, v in batch.items()}


def _rng_tensors(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    state = json.dumps(rng.bit_generator.state).encode()
    return {
        "torch_cpu": torch.get_rng_state(),
        "numpy": torch.frombuffer(bytearray(state), dtype=torch.uint8),
    }


class DreamerTrainer:
    """The state of one run: models, optimizers, replay, counters; ``update``, ``save``,
    ``try_resume``, ``evaluate``. :func:`train_dreamer` drives it online; the generation
    comparison (:mod:`dreamlab.eval.compare_models`) drives it offline on a fixed store."""

    def __init__(self, cfg: DreamerConfig, out_dir: Path) -> None:
        from dreamlab.envs import make_env

        self.cfg = cfg
        self.out = out_dir
        self.device = torch.device(cfg.device)
        probe = make_env(cfg.env, **cfg.env_kwargs)
        try:
            obs_shape = tuple(probe.observation_space.shape or ())
            self.action_space = probe.action_space
        finally:
            probe.close()
        if len(obs_shape) != 3 or obs_shape[0] != obs_shape[1]:
            raise ValueError(
                f"train_dreamer: env {cfg.env!r} gives observations {obs_shape}; the RSSM needs "
                "square frames (S, S, 3)"
            )
        self.obs_shape = obs_shape
        self.spec = ActionSpec.from_space(self.action_space)
        torch.manual_seed(cfg.seed)
        self.rssm = RSSM(cfg.resolve_rssm(obs_shape[0], self.spec)).to(self.device)
        ac_cfg = ActorCriticConfig(
            feature_dim=self.rssm.config.feature_dim,
            action_kind=self.spec.kind,
            action_dim=self.spec.n,
            action_low=tuple(self.spec.low) or (-1.0,),
            action_high=tuple(self.spec.high) or (1.0,),
            hidden=cfg.actor_hidden,
            layers=cfg.actor_layers,
            value_bins=cfg.value_bins,
        )
        self.ac = ActorCritic(ac_cfg).to(self.device)
        self.model_opt = torch.optim.Adam(self.rssm.parameters(), lr=cfg.model_lr, eps=1e-8)
        self.imag = ImaginationTrainer(self.ac, cfg.imagination)
        self.rng = np.random.default_rng(cfg.seed)
        self.env_steps = 0
        self.updates = 0
        self.episodes = 0
        self.seconds = 0.0
        self.evals: list[dict[str, Any]] = []
        self.replay = Replay(cfg.seq_len)
        self.store = self._open_store()

    # ------------------------------------------------------------ persistence
    def _open_store(self) -> EpisodeStore:
        from dreamlab.envs.presets import get_preset, preset_to_dict

        try:
            preset: dict[str, Any] | None = preset_to_dict(get_preset(self.cfg.env))
        except (KeyError, ValueError):
            preset = None
        meta = StoreMeta.for_env(
            self.cfg.env,
            self.obs_shape,
            self.action_space,
            preset=preset,
            extra={"collect": {"seed": self.cfg.seed, "policy": "dreamer"}},
        )
        return EpisodeStore.open_or_create(self.out / "data", meta)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.model_opt, self.imag.actor_opt, self.imag.critic_opt]

    def save(self) -> None:
        """Checkpoint everything; trainer.json last marks it complete."""
        for name, p in [*self.rssm.named_parameters(), *self.ac.named_parameters()]:
            if not torch.isfinite(p).all():
                raise TrainingDivergedError("dreamer", self.updates, f"parameter {name!r}", {})
        save_model(self.out / "world_model", self.rssm, step=self.updates)
        save_model(self.out / "actor_critic", self.ac, step=self.updates)
        for i, opt in enumerate(self._optimizers()):
            save_optimizer(
                self.out / f"optimizer_{i}",
                opt,
                step=self.updates,
                extra=_rng_tensors(self.rng) if i == 0 else None,
            )
        atomic_write_json(
            self.out / TRAINER_FILE,
            {
                "env_steps": self.env_steps,
                "updates": self.updates,
                "episodes": self.episodes,
                "seconds": self.seconds,
                "evals": self.evals,
            },
        )

    def try_resume(self) -> bool:
        """Load the last checkpoint if there is one."""
        path = self.out / TRAINER_FILE
        for ep_i in self.store.indices:
            self.replay.add(self.store.episode(ep_i))
        if not path.exists():
            return False
        state = read_json(path, what="dreamer trainer state")
        updates = int(state["updates"])
        steps = {
            "trainer.json": updates,
            "world_model": weights_step(self.out / "world_model"),
            "actor_critic": weights_step(self.out / "actor_critic"),
        }
        if len(set(steps.values())) != 1:
            raise CheckpointError(
                f"{self.out}: checkpoint files are from different updates {steps}; delete the "
                "directory to restart"
            )
        load_weights(self.rssm, self.out / "world_model")
        load_weights(self.ac, self.out / "actor_critic")
        for i, opt in enumerate(self._optimizers()):
            _, extra = load_optimizer(self.out / f"optimizer_{i}", opt)
            if i == 0:
                torch.set_rng_state(extra["torch_cpu"].to(torch.uint8))
                self.rng.bit_generator.state = json.loads(bytes(extra["numpy"].tolist()).decode())
        self.env_steps = int(state["env_steps"])
        self.updates = updates
        self.episodes = int(state["episodes"])
        self.seconds = float(state["seconds"])
        self.evals = list(state.get("evals", []))
        return True

    # ------------------------------------------------------------ learning
    def update(self) -> dict[str, float]:
        """One world-model step and one actor-critic step."""
        cfg = self.cfg
        batch = _to_tensors(self.replay.sample(self.rng, cfg.batch_size), self.device)
        self.rssm.train()
        loss, metrics = self.rssm.compute_loss(batch, return_sequence=True)
        seq = metrics.pop("_sequence")
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                "dreamer", self.updates, "the world-model loss", dict(metrics)
            )
        self.model_opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.model_grad_clip if cfg.model_grad_clip > 0 else math.inf
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.rssm.parameters(), clip))
        self.model_opt.step()
        term = batch["terminated"].float()  # (B, L)
        start_cont = torch.cat([torch.ones_like(term[:, :1]), 1.0 - term], 1)  # (B, L+1)
        ac_metrics = self.imag.update(
            self.rssm,
            seq.deter.flatten(0, 1),
            seq.stoch.flatten(0, 1),
            start_cont.flatten(),
        )
        self.updates += 1
        out = {f"model/{k}": v for k, v in metrics.items()}
        out.update({f"behavior/{k}": v for k, v in ac_metrics.items()})
        return out

    def agent(self) -> DreamerAgent:
        self.rssm.eval()
        return DreamerAgent(RSSMWorldModel(self.rssm, self.spec), self.ac, seed=self.cfg.seed)

    def evaluate(self, episodes: int, seed: int) -> dict[str, Any]:
        from dreamlab.envs import make_env
        from dreamlab.eval.evaluate import evaluate_policy

        result = evaluate_policy(
            lambda: make_env(self.cfg.env, **self.cfg.env_kwargs),
            self.agent(),
            episodes,
            env_name=self.cfg.env,
            seed=seed,
            num_envs=min(16, episodes),
            record=False,
            progress=False,
        )
        return {
            **result.summary(),
            "env_steps": self.env_steps,
            "updates": self.updates,
            "train_seconds": round(self.seconds, 1),
        }


def _write_eval(out: Path, evals: list[dict[str, Any]], final: dict[str, Any] | None) -> None:
    atomic_write_json(out / "eval.json", {"history": evals, "final": final})


def train_dreamer(cfg: DreamerConfig, out_dir: str | Path) -> DreamerResult:
    """Run (or resume) the Dreamer loop in ``out_dir`` until ``cfg.total_env_steps``.

    Raises:
        ValueError: ``out_dir`` holds a run with a different config, or bad settings.
        TrainingDivergedError: a loss or weight became NaN/inf (the last checkpoint is kept).
    """
    from dreamlab.envs import make_env

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        saved = read_json(cfg_path, "dreamer config")
        saved_cfg = dict(saved.get("dreamer", saved)) if isinstance(saved, dict) else {}
        current = json.loads(json.dumps(cfg.to_json()))
        for key in _FREE_KEYS:
            saved_cfg.pop(key, None)
            current.pop(key, None)
        if saved_cfg != current:
            raise ValueError(
                f"{cfg_path}: this directory holds a Dreamer run with another config; use "
                "another output directory"
            )
    else:
        atomic_write_json(cfg_path, {"kind": "dreamer", "dreamer": cfg.to_json()})
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    tr = DreamerTrainer(cfg, out)
    resumed = tr.try_resume()
    metrics_path = out / "metrics.jsonl"
    if resumed:
        kept = [r for r in read_jsonl(metrics_path) if r.get("updates", 0) <= tr.updates]
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
    elif metrics_path.exists():
        metrics_path.unlink()
    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=tr.env_steps or None)

    envs = [make_env(cfg.env, **cfg.env_kwargs) for _ in range(cfg.num_envs)]
    cap = cfg.max_episode_steps
    base_seed = cfg.seed * 1_000_003 + tr.episodes * 7919
    obs = [env.reset(seed=base_seed + i)[0] for i, env in enumerate(envs)]
    for i, env in enumerate(envs):
        env.action_space.seed(base_seed + i)
    buffers: list[dict[str, list[Any]]] = [
        {"obs": [o], "action": [], "reward": [], "terminated": [], "truncated": []} for o in obs
    ]
    agent_state: Any = None
    episode_start = np.ones(cfg.num_envs, dtype=bool)
    agent = tr.agent()
    window: dict[str, float] = {}
    window_n = 0
    last_logged: dict[str, float] = {}
    recent_returns: list[float] = []
    next_ckpt = (tr.env_steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    next_eval = (tr.env_steps // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None
    t0 = time.perf_counter()
    seconds0 = tr.seconds
    bar = tqdm(
        total=cfg.total_env_steps,
        initial=min(tr.env_steps, cfg.total_env_steps),
        desc="dreamer",
        unit="step",
        disable=not cfg.progress,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    discrete = tr.spec.kind == "discrete"
    try:
        while tr.env_steps < cfg.total_env_steps:
            # ---- act in every env
            if tr.env_steps < cfg.prefill_steps:
                actions = np.stack([np.asarray(env.action_space.sample()) for env in envs])
            else:
                actions, agent_state = agent.predict(
                    np.stack(obs), agent_state, episode_start, deterministic=False
                )
            episode_start[:] = False
            for i, env in enumerate(envs):
                act = actions[i]
                o, r, term, trunc, _ = env.step(int(act) if discrete else act)
                buf = buffers[i]
                buf["obs"].append(o)
                buf["action"].append(act)
                buf["reward"].append(float(r))
                trunc = bool(trunc) or (cap is not None and len(buf["reward"]) >= cap)
                buf["terminated"].append(bool(term))
                buf["truncated"].append(bool(trunc) and not term)
                obs[i] = o
                if term or trunc:
                    episode = {
                        "obs": np.stack(buf["obs"]).astype(np.uint8),
                        "action": np.asarray(
                            buf["action"], dtype=np.int64 if discrete else np.float32
                        ),
                        "reward": np.asarray(buf["reward"], np.float32),
                        "terminated": np.asarray(buf["terminated"], bool),
                        "truncated": np.asarray(buf["truncated"], bool),
                    }
                    tr.store.append(
                        episode, info={"policy": "dreamer", "env_steps": str(tr.env_steps)}
                    )
                    tr.replay.add(episode)
                    recent_returns = [*recent_returns[-19:], float(episode["reward"].sum())]
                    tr.episodes += 1
                    obs[i] = env.reset(seed=base_seed + cfg.num_envs + tr.episodes)[0]
                    buffers[i] = {
                        "obs": [obs[i]],
                        "action": [],
                        "reward": [],
                        "terminated": [],
                        "truncated": [],
                    }
                    episode_start[i] = True
            tr.env_steps += cfg.num_envs
            bar.update(cfg.num_envs)

            # ---- learn
            if tr.env_steps >= cfg.prefill_steps and len(tr.replay):
                due = (tr.env_steps - cfg.prefill_steps) // cfg.train_every + 1
                while tr.updates < due:
                    m = tr.update()
                    for k, v in m.items():
                        window[k] = window.get(k, 0.0) + v
                    window_n += 1
                    if tr.updates % cfg.log_every == 0:
                        tr.seconds = seconds0 + time.perf_counter() - t0
                        last_logged = {
                            f"dreamer/train/{k}": v / window_n for k, v in window.items()
                        }
                        if recent_returns:
                            last_logged["dreamer/train/episode_return"] = float(
                                np.mean(recent_returns)
                            )
                        record = {
                            "updates": tr.updates,
                            "env_steps": tr.env_steps,
                            "time": tr.seconds,
                            **last_logged,
                        }
                        append_jsonl(metrics_path, record)
                        if writer is not None:
                            for k, v in last_logged.items():
                                writer.add_scalar(k, v, tr.env_steps)
                        bar.set_postfix(
                            img=f"{last_logged.get('dreamer/train/model/image', 0):.3g}",
                            ret=f"{last_logged.get('dreamer/train/episode_return', 0):.2f}",
                        )
                        window, window_n = {}, 0

            # ---- evaluate and checkpoint
            if next_eval is not None and tr.env_steps >= next_eval:
                next_eval += cfg.eval_every
                tr.seconds = seconds0 + time.perf_counter() - t0
                result = tr.evaluate(cfg.eval_episodes, seed=10_000_000 + len(tr.evals) * 1000)
                tr.evals.append(result)
                _write_eval(out, tr.evals, None)
                if writer is not None:
                    for k in ("mean_return", "catch_rate"):
                        if k in result:
                            writer.add_scalar(f"dreamer/eval/{k}", result[k], tr.env_steps)
                if cfg.progress:
                    bar.write(
                        f"[dreamer] eval at {tr.env_steps} steps: return "
                        f"{result['mean_return']:.2f}"
                        + (
                            f", catch rate {result['catch_rate']:.1%}"
                            if "catch_rate" in result
                            else ""
                        )
                    )
            if tr.env_steps >= next_ckpt:
                next_ckpt += cfg.checkpoint_every
                tr.seconds = seconds0 + time.perf_counter() - t0
                tr.save()
        tr.seconds = seconds0 + time.perf_counter() - t0
        tr.save()
    finally:
        bar.close()
        for env in envs:
            env.close()
        if writer is not None:
            writer.flush()

    # ---- final evaluation (held-out seeds)
    final_path = out / "eval.json"
    final = read_json(final_path, "eval").get("final") if final_path.exists() else None
    if final is None or final.get("updates") != tr.updates:
        final = tr.evaluate(cfg.final_eval_episodes, seed=1_000_000_000)
        _write_eval(out, tr.evals, final)
        if writer is not None:
            for k in ("mean_return", "catch_rate"):
                if k in final:
                    writer.add_scalar(f"dreamer/final/{k}", final[k], tr.env_steps)
    if writer is not None:
        writer.close()
    if cfg.progress:
        rate = f", catch rate {final['catch_rate']:.1%}" if "catch_rate" in final else ""
        print(
            f"dreamer: {tr.env_steps} env steps, {tr.updates} updates, {tr.seconds:.0f} s; final "
            f"eval over {final['episodes']} episodes: return {final['mean_return']:.2f}{rate}",
            file=sys.stderr,
        )
    return DreamerResult(out, tr.env_steps, tr.updates, tr.episodes, tr.seconds, final, last_logged)
