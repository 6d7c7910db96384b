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
from pathlib import Path
from typing import Any

import cma
import numpy as np

from dreamlab.checkpoint import save_model, write_safetensors
from dreamlab.io import (
    Commit,
    append_jsonl,
    atomic_write_json,
    commit_files,
    read_jsonl,
    sweep_temp_files,
    truncate_jsonl,
)
from dreamlab.models.controller import Controller
from dreamlab.progress import tqdm
from dreamlab.train.cma_state import is_diagonal, load_cma_state, new_strategy, save_cma_state
from dreamlab.train.dream_evaluator import DreamEvaluator
from dreamlab.train.evaluators import Evaluator, ProcessEvaluator, RayEvaluator, RolloutFn
from dreamlab.train.evolve_config import (
    EVOLVE_RESUME_FREE,
    METRICS_FILE,
    STATE_FILE,
    EvolveConfig,
    EvolveResult,
    check_evolve_resume,
)
from dreamlab.worldmodel import StartLatents, WorldModel

__all__ = [
    "EVOLVE_RESUME_FREE",
    "EvolveConfig",
    "EvolveResult",
    "check_evolve_resume",
    "evolve",
    "make_evaluator",
]


# ---------------------------------------------------------------------------------- evolve
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
