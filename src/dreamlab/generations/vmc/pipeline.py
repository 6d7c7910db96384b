"""``dreamlab pipeline`` on a V/M/C run: every stage in order, in one run directory.

collect -> V -> encode -> M -> C in the dream -> the iterative procedure's rounds -> the V-only
ablation -> evaluate -> dream vs reality (and whether the dream is kinder than reality) -> the
dream's checks -> report. Every stage is resumable and idempotent: run
it again and it continues where it stopped (or returns at once when it is done), so the pipeline
simply runs each stage in order. The run directory's layout is :mod:`dreamlab.generations.vmc.run`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dreamlab.generations.args import PipelineConfig
from dreamlab.generations.own import check_same_env, open_own, parse_env_kwargs
from dreamlab.generations.vmc.config import STAGES
from dreamlab.generations.vmc.controller import stage_controller, vonly_evolve
from dreamlab.generations.vmc.dream_checks import stage_checks
from dreamlab.generations.vmc.evaluate import (
    KINDNESS_FILE,
    dream_kindness,
    stage_dream,
    stage_evaluate,
)
from dreamlab.generations.vmc.generic import own_config
from dreamlab.generations.vmc.iterate import stage_first_controller, stage_iterate
from dreamlab.generations.vmc.report import write_report
from dreamlab.generations.vmc.run import Run
from dreamlab.generations.vmc.stages import stage_collect, stage_encode, stage_mdnrnn, stage_vae
from dreamlab.io import read_json
from dreamlab.rundir import RunError, read_run_config, timed

__all__ = ["run_pipeline"]


def _open(cfg: PipelineConfig) -> Run:
    """The run at ``cfg.run`` (a new one from ``cfg.preset``, default ``catch``) with ``--iterations``
    and ``--seed`` applied; a run that exists must already have them."""
    if cfg.iterations is not None and cfg.iterations < 0:
        raise RunError(f"--iterations must be >= 0, got {cfg.iterations}")
    fresh = read_run_config(cfg.run) is None
    if cfg.own:
        run = _open_own_env(cfg, fresh)
    else:
        run = Run.open_or_create(cfg.run, cfg.preset)
    if cfg.iterations is not None and cfg.iterations != run.config.iterations:
        if not fresh:
            raise RunError(
                f"{run.path} was made with iterations={run.config.iterations}; its M and C "
                "live where that number puts them, so use another --run directory"
            )
        run.config.iterations = cfg.iterations
        run.save_config()
    if cfg.seed is not None and cfg.seed != run.config.seed:
        if not fresh:
            raise RunError(
                f"{run.path} was made with seed={run.config.seed}; a run directory holds one "
                "seed's models, so use another --run directory"
            )
        run.config.seed = cfg.seed
        run.config.evolve.seed = cfg.seed  # CMA-ES too: one --seed changes every stage
        run.save_config()
    return run


def _open_own_env(cfg: PipelineConfig, fresh: bool) -> Run:
    """A run sized from ``--env`` / ``--data`` (:func:`~dreamlab.generations.vmc.generic.own_config`);
    an existing one must have been made from the same env."""
    if not fresh:
        run = Run.open(cfg.run)
        made = (run.config.env, run.config.env_kwargs)
        check_same_env(run.path, made, cfg.env, parse_env_kwargs(cfg.env_kwargs))
        return run
    config = open_own(
        cfg.run,
        cfg,
        None,
        own_config,
        title="generic V/M/C run",
        describe=lambda c: (
            f"{c.vae.frame_size}px frames, dreams of {c.evolve.max_episode_steps} steps, "
            f"{c.evolve.generations} CMA-ES generations"
        ),
    )
    run = Run(cfg.run, config)
    run.save_config()
    return run


def run_pipeline(cfg: PipelineConfig) -> Run:
    """Run (or resume) every stage of the V/M/C run at ``cfg.run``, up to ``cfg.until``.

    Raises:
        RunError: ``until`` is not a V/M/C stage, a preset or ``--iterations``/``--seed`` that
            the existing run was not made with, or a stage's missing input.
    """
    if cfg.until is not None and cfg.until not in STAGES:
        raise RunError(f"--until {cfg.until!r} is not a V/M/C stage; stages: {', '.join(STAGES)}")
    run = _open(cfg)
    steps: dict[str, Callable[[], Any]] = {
        "collect": lambda: stage_collect(run, cfg.progress),
        "vae": lambda: stage_vae(run),
        "encode": lambda: stage_encode(run, cfg.progress),
        "mdnrnn": lambda: stage_mdnrnn(run),
        "controller": lambda: stage_first_controller(run),
        "iterate": lambda: stage_iterate(run, cfg.progress),
        "controller_vonly": lambda: (
            stage_controller(run, "z", vonly_evolve(run.config))
            if run.config.vonly_ablation
            else None
        ),
        "evaluate": lambda: stage_evaluate(run, progress=cfg.progress),
        # the open-loop video and error, then whether the dream is kinder than reality (C's
        # and random play's returns in whole dreams beside eval.json's, measured again on every
        # pass so they follow a retrained C)
        "dream": lambda: (
            stage_dream(run),
            timed(run.path, "kindness", lambda: dream_kindness(run)),
        ),
        "checks": lambda: stage_checks(run, cfg.progress),
        "report": lambda: write_report(run),
    }
    assert tuple(steps) == STAGES
    t0 = time.perf_counter()
    for name, fn in steps.items():
        print(f"[dreamlab] stage {name} ({run.path})", flush=True)
        fn()
        if name == cfg.until:
            break
    seconds = time.perf_counter() - t0
    if cfg.until is not None and cfg.until != STAGES[-1]:
        print(
            f"[dreamlab] stopped after stage {cfg.until} in {seconds:.0f} s: {run.path}", flush=True
        )
    else:
        print(f"[dreamlab] pipeline done in {seconds:.0f} s: {run.path}/report.md", flush=True)
        if (run / KINDNESS_FILE).exists():
            print(f"[dreamlab] {read_json(run / KINDNESS_FILE, 'kindness')['verdict']}", flush=True)
    return run
