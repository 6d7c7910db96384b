"""What a CMA-ES search of the controller is asked (:class:`EvolveConfig`), what it returns
(:class:`EvolveResult`), and which settings a resumed search may change
(:func:`check_evolve_resume`). The search itself is :func:`dreamlab.train.evolve.evolve`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dreamlab.checkpoint import CheckpointError
from dreamlab.io import read_json, settle

__all__ = [
    "EVOLVE_RESUME_FREE",
    "METRICS_FILE",
    "STATE_FILE",
    "EvolveConfig",
    "EvolveResult",
    "check_evolve_resume",
]

STATE_FILE = "cma_state.safetensors"
METRICS_FILE = "metrics.jsonl"


@dataclass
class EvolveConfig:
    """CMA-ES settings for training the controller."""

    generations: int = 300
    """number of CMA-ES generations (a resumed run continues up to this number)"""
    population_size: int = 64
    """candidates per generation (the paper: 64)"""
    rollouts_per_candidate: int = 16
    """episodes per candidate; fitness = their mean return (the paper: 16)"""
    sigma0: float = 0.1
    """initial CMA-ES step size"""
    cma_diagonal: bool = False
    """separable CMA-ES: learn a diagonal covariance only (linear time and memory in the number
    of weights D, and much faster per-weight step-size learning); for a hidden-layer C with
    thousands of weights, where full covariance learns too slowly to matter"""
    eval_every: int = 25
    """every N generations score the mean on eval_rollouts episodes (0 = never)"""
    eval_rollouts: int = 1024
    """episodes for scoring the mean (the paper: 1024)"""
    temperature: float = 1.0
    """dream temperature tau for the 'dream' backend (the paper's Doom: 1.15)"""
    backend: Literal["dream", "processes", "ray"] = "dream"
    """where candidates run: batched dream, local processes (real env), or Ray (real env)"""
    ray_address: str | None = None
    """Ray cluster address for backend='ray' (None = start a local Ray)"""
    workers: int = 0
    """worker processes / Ray CPUs for real-env backends (0 = all CPUs)"""
    seed: int = 0
    """seed of the CMA-ES sampler and of every evaluation"""
    restarts: int = 1
    """independent CMA-ES runs (seeds seed, seed+1, ...) raced for restart_generations each; the
    one whose mean scores best on eval_rollouts episodes continues to `generations`. Runs differ
    far more than their noise: on Catch one seed's C catches 0.71, another's 0.90, and the many-
    rollout score of the mean ranks them (BENCHMARKS.md). The pipeline races them in parallel
    processes, one per CPU core"""
    restart_generations: int = 50
    """generations each restart runs before the best one is chosen (restarts > 1 only)"""
    max_episode_steps: int = 1000
    """episode length limit (dream length for the 'dream' backend)"""
    compact_dreams: bool = False
    """drop finished dreams from the batch as they end ('dream' backend): for dreams whose
    lengths differ widely (Doom: a few hundred steps to 2,100), steps only the live ones"""
    real_eval_every: int = 0
    """every N generations also score the generation's best candidate in the real env (0 = never)"""
    real_eval_episodes: int = 16
    """real-env episodes for that check"""
    real_eval_backend: Literal["local", "processes"] = "local"
    """where that check plays: 'local' = in this process, its episodes in lockstep (no workers
    to start; for cheap envs such as Catch), 'processes' = a pool of worker processes (for slow
    envs such as CarRacing)"""
    x0: Literal["current", "zeros"] = "current"
    """starting mean: the controller's current weights, or all zeros"""
    tensorboard: bool = True
    """also write TensorBoard events to out_dir/tb"""
    progress: bool = True
    """show a progress bar with ETA"""

    def __post_init__(self) -> None:
        positive = {
            "generations": self.generations,
            "population_size": self.population_size,
            "rollouts_per_candidate": self.rollouts_per_candidate,
            "eval_rollouts": self.eval_rollouts,
            "max_episode_steps": self.max_episode_steps,
            "real_eval_episodes": self.real_eval_episodes,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"EvolveConfig.{name} must be > 0, got {value}")
        if self.population_size < 2:
            raise ValueError(
                f"EvolveConfig.population_size must be >= 2, got {self.population_size}"
            )
        if not self.sigma0 > 0:
            raise ValueError(f"EvolveConfig.sigma0 must be > 0, got {self.sigma0}")
        if self.restarts < 1:
            raise ValueError(f"EvolveConfig.restarts must be >= 1, got {self.restarts}")
        if self.restarts > 1:
            if not 1 <= self.restart_generations <= self.generations:
                raise ValueError(
                    f"EvolveConfig.restart_generations must be in [1, generations="
                    f"{self.generations}] when racing restarts, got {self.restart_generations}"
                )
            if self.eval_every <= 0:
                raise ValueError(
                    "EvolveConfig: racing restarts (restarts > 1) ranks them by the many-rollout "
                    "score of their means, so eval_every must be > 0"
                )
        if self.eval_every < 0 or self.real_eval_every < 0:
            raise ValueError("EvolveConfig.eval_every and real_eval_every must be >= 0")
        if self.temperature < 0:
            raise ValueError(f"EvolveConfig.temperature must be >= 0, got {self.temperature}")
        if self.backend not in ("dream", "processes", "ray"):
            raise ValueError(
                f"EvolveConfig.backend must be 'dream', 'processes' or 'ray', got {self.backend!r}"
            )
        if self.x0 not in ("current", "zeros"):
            raise ValueError(f"EvolveConfig.x0 must be 'current' or 'zeros', got {self.x0!r}")


@dataclass
class EvolveResult:
    """What :func:`evolve` produced (everything is also on disk in ``out_dir``)."""

    params: np.ndarray
    """the selected controller weights (D,): best-evaluated mean, else best candidate"""
    best_params: np.ndarray
    """best single candidate (D,) by training fitness"""
    mean_params: np.ndarray
    """final CMA-ES mean (D,)"""
    best_return: float
    """training fitness (mean return over its rollouts) of best_params"""
    best_eval_return: float | None
    """highest many-rollout score of the mean, if any evaluation ran"""
    generations: int
    """generations completed in total"""
    resumed_from: int
    """generation the run resumed from (0 for a fresh run)"""
    history: list[dict[str, Any]] = field(default_factory=list)
    """metrics.jsonl records of this run directory"""
    out_dir: str = ""
    """where the checkpoints are"""


EVOLVE_RESUME_FREE = (
    "generations",
    "restarts",
    "restart_generations",
    "workers",
    "ray_address",
    "real_eval_every",
    "real_eval_episodes",
    "real_eval_backend",
    "tensorboard",
    "progress",
)
"""EvolveConfig fields a resumed CMA-ES run may change: how long it runs, where real checks run
and what it shows. The others (population, temperature, sigma0, seed, dream length...) shape
the generations already run."""


def check_evolve_resume(out_dir: str | Path, cfg: EvolveConfig) -> None:
    """Raise unless the CMA-ES run in ``out_dir`` (if any) can be resumed with ``cfg``.

    Raises:
        CheckpointError: naming each differing setting with both values; nothing is written.
    """
    out = Path(out_dir)
    settle(out)
    if not (out / STATE_FILE).exists() or not (out / "evolve.json").exists():
        return
    record = read_json(out / "evolve.json", "CMA-ES settings")
    saved = record.get("config") if isinstance(record, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{out / 'evolve.json'}: expected an object with the run's 'config'; it cannot be "
            f"resumed without its settings: delete {out} to start again"
        )
    given = dataclasses.asdict(cfg)
    if saved.get("population_size", cfg.population_size) != cfg.population_size:
        raise CheckpointError(
            f"{out}: checkpoint has population {saved['population_size']}, this run needs "
            f"population {cfg.population_size}; use a new directory or matching settings"
        )
    if saved.get("cma_diagonal", cfg.cma_diagonal) != cfg.cma_diagonal:
        raise CheckpointError(
            f"{out}: checkpoint was made with cma_diagonal={saved['cma_diagonal']}, this run has "
            f"cma_diagonal={cfg.cma_diagonal}; use a new directory or matching settings"
        )
    diff = [
        f"{k}={saved[k]!r} (asked: {given[k]!r})"
        for k in sorted(given)
        if k in saved and k not in EVOLVE_RESUME_FREE and saved[k] != given[k]
    ]
    if diff:
        raise CheckpointError(
            f"{out}: this CMA-ES run was started with {', '.join(diff)}; such settings cannot "
            "change halfway through a run, so nothing was changed: give the same settings to "
            f"resume (more --generations may be asked), or delete {out} to start again"
        )
