"""Dreamer run directories: open or create one, run its pipeline, score its agent.

``dreamlab pipeline --preset catch-dreamer --run runs/dreamer`` and ``dreamlab train-dreamer``
land here: the online loop of :mod:`dreamlab.generations.rssm.online` runs (resumably) in the run
directory, then ``report.md`` summarises it (:mod:`dreamlab.generations.rssm.report`). The run's
``config.json`` is ``{"kind": "rssm", "config": DreamerConfig}``; ``timings.json`` sums the
stages' wall seconds over resumes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamlab.checkpoint import has_model
from dreamlab.eval.kindness import KINDNESS_FILE
from dreamlab.generations.args import EvaluateArgs, PipelineConfig
from dreamlab.generations.own import open_own
from dreamlab.generations.rssm.agent import DreamerAgent
from dreamlab.generations.rssm.config import DreamerConfig, get_dreamer_preset, own_config
from dreamlab.generations.rssm.online import record_config, train_dreamer
from dreamlab.generations.rssm.report import rssm_kindness, run_config, write_dreamer_report
from dreamlab.rundir import RunError, run_kind, timed

__all__ = [
    "TrainDreamerArgs",
    "evaluate_rssm",
    "open_run",
    "run_dreamer_pipeline",
    "train_dreamer_cmd",
]


def open_run(path: Path, preset: str | None) -> DreamerConfig:
    """The run's recorded config, or preset ``preset``'s for a new run.

    Raises:
        RunError: no run and no preset, a run of another generation, or a run made with another
            preset.
    """
    if run_kind(path) is None:
        if preset is None:
            raise RunError(f"{path}: no config.json; start it with --preset NAME")
        return get_dreamer_preset(preset)
    cfg = run_config(path)
    if preset is not None and preset != cfg.preset:
        raise RunError(
            f"{path} was made with preset {cfg.preset!r}, not {preset!r}; use another --run "
            "directory"
        )
    return cfg


def _open_own(path: Path, options: PipelineConfig, fresh: bool) -> DreamerConfig:
    """A run sized from ``--env``/``--data`` (:func:`~dreamlab.generations.rssm.config.own_config`),
    its config recorded now; an existing one must have been made from the same env."""
    cfg = open_own(
        path,
        options,
        None if fresh else run_config(path),
        own_config,
        title="Dreamer run",
        describe=lambda c: f"windows of {c.seq_len} steps, {c.offline_updates} offline updates",
    )
    if fresh:
        record_config(path, cfg)
    return cfg


def _train_and_report(path: Path, cfg: DreamerConfig) -> Path:
    """Both stages, each timed into ``timings.json``; returns the report's path."""
    timed(path, "online", lambda: train_dreamer(cfg, path))
    if not (path / KINDNESS_FILE).exists():
        timed(path, "kindness", lambda: rssm_kindness(path))
    return timed(path, "report", lambda: write_dreamer_report(path))


def run_dreamer_pipeline(run: str | Path, preset: str | None, options: PipelineConfig) -> Path:
    """``dreamlab pipeline`` for the RSSM generation: train (or resume) the run at ``run`` and
    write its report; returns the run path. ``options.seed`` may set a new run's seed;
    ``--until`` and ``--iterations`` (V/M/C stages) do not apply.

    Raises:
        RunError: an option that does not apply, another seed for an existing run, or a run
            that is not this preset's (see :func:`open_run`).
    """
    path = Path(run)
    for name in ("until", "iterations"):
        if getattr(options, name) is not None:
            raise RunError(
                f"--{name} does not apply to a Dreamer run (one online loop, then the report)"
            )
    fresh = run_kind(path) is None
    cfg = _open_own(path, options, fresh) if options.own else open_run(path, preset)
    if options.seed is not None and options.seed != cfg.seed:
        if not fresh:
            raise RunError(
                f"{path} was made with seed={cfg.seed}; use another --run directory for another "
                "seed"
            )
        cfg = dataclasses.replace(cfg, seed=options.seed)
    if not options.progress:
        cfg = dataclasses.replace(cfg, progress=False)
    report = _train_and_report(path, cfg)
    print(f"[dreamlab] dreamer done: {report}", flush=True)
    return path


def evaluate_rssm(path: Path, args: EvaluateArgs) -> dict[str, Any]:
    """``dreamlab evaluate`` for a Dreamer run: the trained actor (``controller``), ``random``,
    ``expert`` and ``planner`` (CEM/MPPI in the RSSM's dream) in the run's env (:func:`~dreamlab.eval.evaluate.score_agents`)."""
    from dreamlab.eval.evaluate import score_agents

    args.check_vmc_only("rssm")
    cfg = run_config(path)
    trained = None
    if has_model(path / "actor_critic"):
        trained = DreamerAgent.load(path, device=cfg.device, seed=cfg.seed)
    return score_agents(
        path,
        trained,
        cfg.env,
        dict(cfg.env_kwargs),
        args.agent,
        args.episodes,
        seed=cfg.seed,
        progress=cfg.progress,
        world_model=lambda: (trained or DreamerAgent.load(path, device=cfg.device)).world_model,
        planner=args.planner,
    )


@dataclass
class TrainDreamerArgs:
    """Train a Dreamer agent (RSSM + actor-critic in imagination) online, resumably."""

    run: Path = Path("runs/dreamer")
    """run directory (created from --preset, or resumed)"""
    preset: str = "catch-dreamer"
    """Dreamer preset: catch-dreamer, catch-dreamer-continuous, catch-dreamer-debug, carracing-dreamer"""
    total_env_steps: int | None = None
    """override the preset's env-step budget (written into the run's config.json)"""


def train_dreamer_cmd(args: TrainDreamerArgs) -> Path:
    """CLI wrapper: open or create the run, apply overrides, train, report."""
    path = Path(args.run)
    cfg = open_run(path, args.preset)
    if args.total_env_steps is not None and args.total_env_steps != cfg.total_env_steps:
        if run_kind(path) is not None:
            raise RunError(
                f"{path}: an existing run keeps its budget ({cfg.total_env_steps} env steps); "
                "use another --run to change it"
            )
        cfg = dataclasses.replace(cfg, total_env_steps=args.total_env_steps)
    _train_and_report(path, cfg)
    return path
