"""The settings of one Dreamer run (:class:`DreamerConfig`) and its named presets.

``RUN/config.json`` records a :class:`DreamerConfig` as ``{"kind": "rssm", "config": {...}}``
(:mod:`dreamlab.rundir`); runs of earlier versions wrote ``{"kind": "dreamer", "dreamer": {...}}``
and still open.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dreamlab.checkpoint import CheckpointError, config_from_dict
from dreamlab.generations.own import GENERIC, StoreFacts, foreground_weight, scaled
from dreamlab.models.rssm import RSSMConfig, rssm_preset
from dreamlab.rundir import RunError
from dreamlab.train.imagination import ImaginationConfig
from dreamlab.worldmodel import ActionSpec

__all__ = [
    "DREAMER_PRESETS",
    "KIND",
    "OFFLINE_UPDATES",
    "DreamerConfig",
    "DreamerResult",
    "get_dreamer_preset",
    "own_config",
]

KIND = "rssm"
"""the generation's kind in ``RUN/config.json``"""
OFFLINE_UPDATES = 3000
"""updates of a run sized from ``--env``/``--data`` (the online ``catch-dreamer`` reaches 98 %
with ~2,900; ~30 minutes on one core at 32x32)"""


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
    """real env steps in total (summed over the parallel envs); an offline run takes none"""
    offline_updates: int = 0
    """> 0: learn offline, this many updates on the episodes of ``RUN/data`` (a run sized from
    ``--env``/``--data``): no env step but the final evaluation's; the checkpoints then come
    every ``checkpoint_every`` updates"""
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
        for name in ("prefill_steps", "eval_every", "offline_updates"):
            if getattr(self, name) < 0:
                raise ValueError(f"DreamerConfig.{name}: expected >= 0, got {getattr(self, name)}")
        if self.model_lr <= 0:
            raise ValueError(f"DreamerConfig.model_lr: expected > 0, got {self.model_lr}")

    @property
    def replay_ratio(self) -> float:
        """Replayed steps per env step."""
        return self.batch_size * self.seq_len / self.train_every

    def to_json(self) -> dict[str, Any]:
        """JSON form (nested configs as dicts), what ``RUN/config.json`` records."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config.json") -> DreamerConfig:
        """Rebuild from :meth:`to_json` output (nested configs included)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object")
        try:  # nested configs too; a FullRecord (keys removed by hand) needs every field
            return config_from_dict(cls, data, source)
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
    """What :func:`~dreamlab.generations.rssm.online.train_dreamer` did."""

    out_dir: Path
    """the run directory"""
    env_steps: int
    """real env steps in total"""
    updates: int
    """world-model + actor-critic updates in total"""
    episodes: int
    """finished real episodes in total (the store's)"""
    seconds: float
    """wall seconds of training in total (summed over resumes)"""
    final_eval: dict[str, Any] | None
    """the final real-env evaluation (``eval.json``'s ``final``)"""
    metrics: dict[str, float]
    """the last logged training metrics (empty when this call logged none)"""


def _catch_dreamer() -> DreamerConfig:
    # 32x32 Catch with the three discrete actions (left/stay/right move the paddle as fast as the
    # continuous extremes): one CPU core trains it in ~30 minutes (BENCHMARKS.md).
    return DreamerConfig(
        preset="catch-dreamer",
        env="catch-32",
        env_kwargs={"discrete": True},
        model_size="tiny",
        foreground_weight=10.0,
        actor_hidden=128,
        imagination=ImaginationConfig(actor_lr=1e-4, critic_lr=2e-4, entropy=3e-3, max_starts=512),
        total_env_steps=24_000,
        num_envs=8,
        prefill_steps=1000,
        train_every=8,
        batch_size=16,
        seq_len=32,
        model_lr=3e-4,
        eval_every=4000,
        eval_episodes=20,
        final_eval_episodes=100,
        checkpoint_every=2000,
        num_threads=1,
    )


def _catch_dreamer_continuous() -> DreamerConfig:
    cfg = _catch_dreamer()
    cfg.preset = "catch-dreamer-continuous"
    cfg.env_kwargs = {}
    return cfg


def _catch_dreamer_debug() -> DreamerConfig:
    cfg = _catch_dreamer()
    cfg.preset = "catch-dreamer-debug"
    cfg.total_env_steps = 400
    cfg.prefill_steps = 200
    cfg.num_envs = 4
    cfg.train_every = 16
    cfg.batch_size = 4
    cfg.seq_len = 16
    cfg.eval_every = 200
    cfg.eval_episodes = 2
    cfg.final_eval_episodes = 4
    cfg.checkpoint_every = 200
    cfg.log_every = 5
    cfg.progress = False
    cfg.tensorboard = False
    return cfg


def _carracing_dreamer() -> DreamerConfig:
    # DreamerV3-S-sized model on 64x64 CarRacing; a GPU run (not measured here).
    return DreamerConfig(
        preset="carracing-dreamer",
        env="carracing",
        model_size="dreamerv3-s",
        rssm=None,
        foreground_weight=0.0,
        actor_hidden=512,
        value_bins=255,
        imagination=ImaginationConfig(),
        total_env_steps=500_000,
        num_envs=8,
        prefill_steps=5000,
        train_every=32,
        batch_size=16,
        seq_len=64,
        model_lr=1e-4,
        eval_every=25_000,
        eval_episodes=10,
        final_eval_episodes=100,
        checkpoint_every=10_000,
        device="cuda",
    )


DREAMER_PRESETS: dict[str, Callable[[], DreamerConfig]] = {
    "catch-dreamer": _catch_dreamer,
    "catch-dreamer-continuous": _catch_dreamer_continuous,
    "catch-dreamer-debug": _catch_dreamer_debug,
    "carracing-dreamer": _carracing_dreamer,
}


def get_dreamer_preset(name: str) -> DreamerConfig:
    """A fresh copy of the named Dreamer preset."""
    if name not in DREAMER_PRESETS:
        raise RunError(f"unknown Dreamer preset {name!r}; known: {', '.join(DREAMER_PRESETS)}")
    return DREAMER_PRESETS[name]()


def own_config(
    facts: StoreFacts, env: str, env_kwargs: dict[str, Any], seed: int, scale: float = 1.0
) -> DreamerConfig:
    """A Dreamer run sized from a store's :class:`~dreamlab.generations.own.StoreFacts`, learning
    offline from it (:data:`OFFLINE_UPDATES` times ``scale``): the frame size and action space
    come from the store when the trainer opens it, the training window from the episode lengths,
    the foreground weight from the share of foreground pixels; the env only scores the actor."""
    return DreamerConfig(
        preset=GENERIC,
        env=env,
        env_kwargs=dict(env_kwargs),
        seed=seed,
        model_size="tiny",
        foreground_weight=foreground_weight(facts.foreground_share),
        imagination=ImaginationConfig(actor_lr=1e-4, critic_lr=2e-4, entropy=3e-3, max_starts=512),
        offline_updates=scaled(OFFLINE_UPDATES, scale),
        batch_size=16,
        seq_len=facts.seq_len,
        eval_every=0,
        final_eval_episodes=scaled(50, scale, least=4),
        checkpoint_every=250,
        log_every=50,
    )
