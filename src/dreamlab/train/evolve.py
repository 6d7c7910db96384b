"""CMA-ES for the controller (the ``cma`` library), crash-safe and exactly resumable without pickle.

Each generation: ask P candidates, score each on R rollouts with a fitness *backend* (an
:class:`~dreamlab.train.evaluators.Evaluator`: the batched dream, local processes or Ray),
tell ``-mean return`` (``cma`` minimizes), log, and checkpoint. Every ``eval_every`` generations
the distribution mean is scored on many rollouts; the best-scoring mean becomes the controller
(the paper's procedure, since the mean generalises better than the luckiest candidate).

Resume: the strategy is checkpointed every generation without pickle
(:mod:`dreamlab.train.cma_state`); a killed run asks bit-identical candidates to a run that was
never interrupted.

Files in ``out_dir`` (the run's ``controller/`` directory)::

    config.json, model.safetensors   the selected controller (loadable with dreamlab.checkpoint)
    best.safetensors                 best single candidate so far (controller state_dict)
    mean.safetensors                 current CMA-ES mean (controller state_dict)
    cma_state.safetensors            everything needed to resume (the source of truth)
    evolve.json                      resolved EvolveConfig + progress, human-readable
    metrics.jsonl                    one line per generation (controller/train/best, ...)
    summary.json                     written when the run finishes
    tb/                              TensorBoard events (if enabled)
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cma
import numpy as np

from dreamlab.checkpoint import CheckpointError, save_model, write_safetensors
from dreamlab.io import (
    Commit,
    append_jsonl,
    atomic_write_json,
    commit_files,
    read_json,
    read_jsonl,
    settle,
    sweep_temp_files,
    truncate_jsonl,
)
from dreamlab.models.controller import Controller
from dreamlab.progress import tqdm
from dreamlab.train.cma_state import is_diagonal, load_cma_state, new_strategy, save_cma_state
from dreamlab.train.dream_evaluator import DreamEvaluator
from dreamlab.train.evaluators import Evaluator, ProcessEvaluator, RayEvaluator, RolloutFn
from dreamlab.worldmodel import StartLatents, WorldModel

__all__ = [
    "EVOLVE_RESUME_FREE",
    "EvolveConfig",
    "EvolveResult",
    "check_evolve_resume",
    "evolve",
    "make_evaluator",
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


# ---------------------------------------------------------------------------------- evolve
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
    saved = read_json(out / "evolve.json", "CMA-ES settings").get("config")
    if not isinstance(saved, dict):
        return
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


def _generation_seed(seed: int, generation: int, purpose: int = 0) -> int:
    return int(np.random.SeedSequence([seed, generation, purpose]).generate_state(1)[0])


def _save_params(path: Path, controller: Controller, params: np.ndarray, commit: Commit) -> None:
    controller.set_flat_params(params)
    write_safetensors(path, controller.state_dict(), commit=commit)


def evolve(
    controller: Controller,
    fitness_backend: Evaluator,
    cfg: EvolveConfig,
    out_dir: str | Path,
    *,
    real_backend: Evaluator | None = None,
    incumbent: np.ndarray | None = None,
) -> EvolveResult:
    """Train ``controller``'s weights with CMA-ES; resumes if ``out_dir`` holds a checkpoint.

    Args:
        controller: the controller to train; on return it holds the selected weights.
        fitness_backend: scores candidates (``evaluate(params (P, D), R, seed) -> (P, R)``).
        cfg: CMA-ES settings.
        out_dir: checkpoint directory (the run's ``controller/``).
        real_backend: real-env evaluator used every ``cfg.real_eval_every`` generations.
        incumbent: weights ``(D,)`` of a controller found before (the previous round's C),
            scored on ``eval_rollouts`` episodes before the first generation: the selected
            controller is whichever of it and the evaluated means scores best (needs
            ``eval_every > 0``).

    Returns:
        :class:`EvolveResult`.

    Raises:
        ValueError: a checkpoint in ``out_dir`` does not fit this controller / population, or
            the backend returned NaN / inf or a wrongly shaped result.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dim = controller.num_params
    state_path = out / STATE_FILE
    metrics_path = out / METRICS_FILE
    work = Controller(controller.config)  # scratch copy for writing weight files

    sweep_temp_files(out)  # what a killed save left; finishes a half-moved checkpoint
    check_evolve_resume(out, cfg)
    start_eval: float | None = None
    if state_path.exists():
        es, extra, meta = load_cma_state(state_path)
        if int(es.N) != dim or int(es.popsize) != cfg.population_size:
            raise ValueError(
                f"{state_path}: checkpoint has dimension {es.N} and population {es.popsize}, this "
                f"run needs dimension {dim} and population {cfg.population_size}; use a new "
                "directory or matching settings"
            )
        if is_diagonal(es) != cfg.cma_diagonal:
            raise ValueError(
                f"{state_path}: checkpoint was made with cma_diagonal={is_diagonal(es)}, this run "
                f"has cma_diagonal={cfg.cma_diagonal}; use a new directory or matching settings"
            )
        start_gen = int(meta["generation"])
        best_params = extra["best_params"]
        selected = extra["selected_params"]
        best_return = float(meta["best_return"])
        best_eval = meta.get("best_eval_return")
        truncate_jsonl(metrics_path, "generation", start_gen)
    else:
        if cfg.x0 == "current":
            x0 = controller.get_flat_params().double().numpy()
        else:
            x0 = np.zeros(dim)
        es = new_strategy(x0, cfg.sigma0, cfg.population_size, cfg.seed, diagonal=cfg.cma_diagonal)
        start_gen = 0
        best_params = x0.copy()
        selected = x0.copy()
        best_return = -math.inf
        best_eval = None
        if metrics_path.exists():
            metrics_path.unlink()  # a fresh run: stale metrics would mislead
        if incumbent is not None:
            if not cfg.eval_every:
                raise ValueError(
                    "evolve: an incumbent is compared by eval_every's scores; set it > 0"
                )
            held = np.asarray(incumbent, dtype=np.float64).reshape(dim)
            scores = fitness_backend.evaluate(
                held[None], cfg.eval_rollouts, _generation_seed(cfg.seed, 0, 3)
            )[0]
            best_eval = start_eval = float(np.mean(scores))
            selected = held.copy()
    if start_gen >= cfg.generations:
        print(
            f"controller is trained (generation {start_gen} of {cfg.generations}) at {out}; "
            "remove it, or train into another directory, to train again",
            file=sys.stderr,
            flush=True,
        )
    elif start_gen:
        print(
            f"resuming controller at generation {start_gen} of {cfg.generations} ({out})",
            file=sys.stderr,
            flush=True,
        )
    atomic_write_json(
        out / "evolve.json",
        {"config": dataclasses.asdict(cfg), "num_params": dim, "resumed_from": start_gen},
    )

    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=start_gen + 1)
    bar = tqdm(
        total=cfg.generations,
        initial=start_gen,
        desc="evolve",
        unit="gen",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    t_run = time.perf_counter()
    try:
        for gen in range(start_gen, cfg.generations):
            t0 = time.perf_counter()
            candidates = np.asarray(es.ask(), dtype=np.float64)  # (P, D)
            returns = np.asarray(
                fitness_backend.evaluate(
                    candidates, cfg.rollouts_per_candidate, _generation_seed(cfg.seed, gen)
                ),
                dtype=np.float64,
            )  # (P, R)
            if returns.shape != (cfg.population_size, cfg.rollouts_per_candidate):
                raise ValueError(
                    f"fitness backend returned shape {returns.shape}, expected "
                    f"({cfg.population_size}, {cfg.rollouts_per_candidate})"
                )
            if not np.isfinite(returns).all():
                raise ValueError(f"generation {gen + 1}: the fitness backend returned NaN or inf")
            fitness = returns.mean(axis=1)  # (P,)
            es.tell(list(candidates), (-fitness).tolist())
            top = int(fitness.argmax())
            if fitness[top] > best_return:
                best_return = float(fitness[top])
                best_params = candidates[top].copy()
            record: dict[str, Any] = {
                "generation": gen + 1,
                "controller/train/best": float(fitness.max()),
                "controller/train/mean": float(fitness.mean()),
                "controller/train/worst": float(fitness.min()),
                "controller/train/std": float(fitness.std()),
                "controller/train/best_ever": best_return,
                "controller/train/sigma": float(es.sigma),
            }
            done = gen + 1
            if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.generations):
                mean = np.asarray(es.mean, dtype=np.float64)
                scores = fitness_backend.evaluate(
                    mean[None], cfg.eval_rollouts, _generation_seed(cfg.seed, gen, 1)
                )[0]
                score = float(np.mean(scores))
                record["controller/eval/return"] = score
                record["controller/eval/return_std"] = float(np.std(scores))
                if best_eval is None or score > best_eval:
                    best_eval = score
                    selected = mean.copy()
            if best_eval is None:
                selected = best_params
            if real_backend is not None and cfg.real_eval_every and done % cfg.real_eval_every == 0:
                real = real_backend.evaluate(
                    candidates[top][None],
                    cfg.real_eval_episodes,
                    _generation_seed(cfg.seed, gen, 2),
                )[0]
                record["controller/real/return"] = float(np.mean(real))
                record["controller/real/return_std"] = float(np.std(real))
            if gen == 0 and start_eval is not None:
                record["controller/eval/incumbent_return"] = start_eval
            record["time/generation_s"] = time.perf_counter() - t0
            # Metrics first, checkpoint second: a crash in between leaves a line that resume
            # drops (generation > checkpoint), never a generation without its line.
            append_jsonl(metrics_path, record)
            _checkpoint(out, es, work, selected, best_params, done, best_return, best_eval)
            if writer is not None:
                for key, value in record.items():
                    if key != "generation":
                        writer.add_scalar(key, value, done)
            bar.update(1)
            bar.set_postfix(
                best=f"{record['controller/train/best']:.3g}",
                mean=f"{record['controller/train/mean']:.3g}",
            )
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    history = read_jsonl(metrics_path)
    controller.set_flat_params(selected)
    result = EvolveResult(
        params=np.asarray(selected, dtype=np.float64),
        best_params=np.asarray(best_params, dtype=np.float64),
        mean_params=np.asarray(es.mean, dtype=np.float64),
        best_return=best_return,
        best_eval_return=best_eval,
        generations=max(start_gen, cfg.generations),
        resumed_from=start_gen,
        history=history,
        out_dir=str(out),
    )
    summary = {
        "generations": result.generations,
        "resumed_from": start_gen,
        "num_params": dim,
        "best_return": best_return,
        "best_eval_return": best_eval,
        "final_sigma": float(es.sigma),
        "seconds_this_session": round(time.perf_counter() - t_run, 3),
        "last": history[-1] if history else None,
    }
    atomic_write_json(out / "summary.json", summary)
    if start_gen < cfg.generations:  # what this call did, whether or not bars were shown
        tqdm.write(
            f"evolve: {result.generations} generations, best candidate {best_return:.4g}, "
            f"best mean eval {best_eval if best_eval is None else round(best_eval, 4)}, "
            f"weights in {out}"
        )
    return result


def _checkpoint(
    out: Path,
    es: cma.CMAEvolutionStrategy,
    work: Controller,
    selected: np.ndarray,
    best_params: np.ndarray,
    generation: int,
    best_return: float,
    best_eval: float | None,
) -> None:
    # one unit: the strategy and the weights it selected change together
    with commit_files(out) as commit:
        save_cma_state(
            out / STATE_FILE,
            es,
            extra_arrays={"best_params": best_params, "selected_params": selected},
            extra_meta={
                "generation": generation,
                "best_return": best_return,
                "best_eval_return": best_eval,
            },
            commit=commit,
        )
        _save_params(out / "best.safetensors", work, best_params, commit)
        _save_params(out / "mean.safetensors", work, np.asarray(es.mean), commit)
        work.set_flat_params(selected)
        save_model(out, work, kind="controller", step=generation, commit=commit)


# ---------------------------------------------------------------------------------- backends
def make_evaluator(
    cfg: EvolveConfig,
    controller: Controller,
    *,
    world_model: WorldModel | None = None,
    start_latents: StartLatents | None = None,
    rollout: RolloutFn | None = None,
    ray_num_cpus: int | None = None,
) -> Evaluator:
    """Build the backend ``cfg.backend`` names.

    Args:
        cfg: supplies backend, temperature, max_episode_steps, workers, ray_address.
        controller: template for the dream backend's batched controller.
        world_model: needed for 'dream'.
        start_latents: needed for 'dream'.
        rollout: real-env rollout function (e.g. ``EnvRollout``), needed for 'processes'/'ray'.
        ray_num_cpus: CPUs of a local Ray (default: ``cfg.workers`` or all).
    """
    if cfg.backend == "dream":
        if world_model is None or start_latents is None:
            raise ValueError("backend 'dream' needs a world_model and start_latents")
        return DreamEvaluator(
            world_model,
            start_latents,
            controller,
            temperature=cfg.temperature,
            max_episode_steps=cfg.max_episode_steps,
            compact=cfg.compact_dreams,
        )
    if rollout is None:
        raise ValueError(f"backend {cfg.backend!r} needs a rollout function (e.g. EnvRollout)")
    if cfg.backend == "processes":
        return ProcessEvaluator(rollout, cfg.workers)
    return RayEvaluator(
        rollout,
        address=cfg.ray_address,
        num_cpus=ray_num_cpus if ray_num_cpus is not None else (cfg.workers or None),
    )
