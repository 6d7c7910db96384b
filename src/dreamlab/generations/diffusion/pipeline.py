"""Diffusion run directories: run the pipeline, score the agent (opening a run and loading its
models is :mod:`~dreamlab.generations.diffusion.run`'s, re-exported here).

``dreamlab pipeline --preset catch-diffusion --run R`` runs (or resumes) every stage of
:func:`~dreamlab.generations.diffusion.train.train_diffusion` in ``R``, then writes ``report.md``
(:mod:`dreamlab.generations.diffusion.report`); ``dreamlab train-diffusion --run R`` is the same
run without the report. The run's ``config.json`` is ``{"kind": "diffusion", "config":
TrainDiffusionConfig}``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dreamlab.checkpoint import has_model
from dreamlab.eval.kindness import KINDNESS_FILE
from dreamlab.generations.args import EvaluateArgs, PipelineConfig
from dreamlab.generations.diffusion.report import diffusion_kindness, write_diffusion_report
from dreamlab.generations.diffusion.run import (
    load_diffusion_agent,
    load_diffusion_world_model,
    run_config,
)
from dreamlab.generations.diffusion.train import (
    EVAL_SEED,
    PRESETS,
    TrainDiffusionConfig,
    check_actions,
    own_config,
    run_env,
    run_store,
    train_diffusion,
)
from dreamlab.generations.own import open_own
from dreamlab.rundir import RunError, read_run_config, timed

__all__ = [
    "evaluate_diffusion",
    "load_diffusion_agent",
    "load_diffusion_world_model",
    "run_config",
    "run_diffusion_pipeline",
    "train_diffusion_cmd",
]


def _open_own(path: Path, options: PipelineConfig, fresh: bool) -> TrainDiffusionConfig:
    """A run sized from ``--env``/``--data`` (:func:`~dreamlab.generations.diffusion.train.own_config`);
    an existing one must have been made from the same env."""
    return open_own(
        path,
        options,
        None if fresh else run_config(path),
        own_config,
        title="diffusion run",
        describe=lambda c: (
            f"{c.steps} world-model steps, dreams of up to {c.agent.max_episode_steps} steps"
        ),
        check_actions=check_actions,
    )


def run_diffusion_pipeline(run: str | Path, preset: str | None, options: PipelineConfig) -> Path:
    """``dreamlab pipeline`` for the diffusion generation: every stage of ``train-diffusion`` in
    ``run`` (a new run from ``preset``, an existing one with its own settings), then the report.
    ``options.seed`` may set a new run's seed; ``--until`` and ``--iterations`` do not apply.

    Raises:
        RunError: an option that does not apply, no run and no preset, or another seed for an
            existing run.
    """
    path = Path(run)
    for name in ("until", "iterations"):
        if getattr(options, name) is not None:
            raise RunError(f"--{name} does not apply to a diffusion run; its stages run in turn")
    fresh = read_run_config(path) is None
    if options.own:
        cfg = _open_own(path, options, fresh)
    elif fresh:
        if preset is None or preset not in PRESETS:
            raise RunError(f"{path}: no config.json; start it with --preset {' or '.join(PRESETS)}")
        cfg = PRESETS[preset]()
    else:
        cfg = run_config(path)
    if options.seed is not None and options.seed != cfg.seed:
        if not fresh:
            raise RunError(
                f"{path} was made with seed={cfg.seed}; use another --run directory for another "
                "seed"
            )
        cfg.seed = options.seed
    train_diffusion(dataclasses.replace(cfg, out=path, progress=options.progress))
    if not (path / KINDNESS_FILE).exists():
        timed(path, "kindness", lambda: diffusion_kindness(path))
    report = timed(path, "report", lambda: write_diffusion_report(path))
    print(f"[dreamlab] diffusion done: {report}", flush=True)
    return path


def evaluate_diffusion(path: Path, args: EvaluateArgs) -> dict[str, Any]:
    """``dreamlab evaluate`` for a diffusion run: the dream-trained agent (``controller``),
    ``random``, ``expert`` and ``planner`` (CEM/MPPI in the diffusion model's dream) in the run's
    env (:func:`~dreamlab.eval.evaluate.score_agents`)."""
    from dreamlab.eval.evaluate import score_agents

    args.check_vmc_only("diffusion")
    cfg = run_config(path)
    env_id, env_kwargs = run_env(cfg, run_store(cfg, path))
    trained = None
    if "controller" in args.agent and has_model(path / "agent"):
        trained = load_diffusion_agent(path, cfg.device)
    return score_agents(
        path,
        trained,
        env_id,
        env_kwargs,
        args.agent,
        args.episodes,
        seed=EVAL_SEED + cfg.seed,
        progress=cfg.progress,
        world_model=lambda: load_diffusion_world_model(path, cfg.device),
        planner=args.planner,
    )


def train_diffusion_cmd(cfg: TrainDiffusionConfig) -> dict[str, Any]:
    """``dreamlab train-diffusion``: every stage of :func:`train_diffusion` in ``cfg.out`` (no
    report; ``dreamlab report --run OUT`` writes it)."""
    return train_diffusion(cfg)
