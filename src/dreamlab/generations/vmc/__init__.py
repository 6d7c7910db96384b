"""Generation 1, V/M/C (Ha & Schmidhuber 2018): V (a VAE) compresses each frame to z, M (an
MDN-RNN) predicts the next z from z, the action and its memory h, and C (a linear controller on
[z, h]) is trained by CMA-ES inside M's dream.

=================  ==========================================================================
module             what it holds
=================  ==========================================================================
``config``         :class:`RunConfig`, the presets, the pipeline's stages
``run``            :class:`~dreamlab.generations.vmc.run.Run`, a run directory and its loaders
``stages``         collect, vae, encode, mdnrnn
``controller``     C by CMA-ES in the dream (raced restarts, dream start banks)
``precision``      float32 or bfloat16 dreams, measured
``iterate``        the paper's iterative procedure (C plays, M is fine-tuned, C again)
``evaluate``       agents in the real env, dream videos; the evaluate/dream/report commands
``dream_checks``   the ``checks`` stage: how the dream could mislead C, measured
``checks_report``  the report's pages on those checks and on the temperature table
``pipeline``       every stage in order (``dreamlab pipeline``)
``commands``       train-vae, encode, train-mdnrnn, train-controller
``uncertainty``    futures, an ensemble of M, pessimism (``ensemble``, ``train_ensemble``,
                   ``disagreement``)
``worldmodel``     :class:`VMWorldModel`, V + M behind the ``WorldModel`` protocol
``agent``          V+M+C acting in the real env
``report``         ``report.md``
``contender``      the ``compare-models`` contender
=================  ==========================================================================

Importing this package reads only :mod:`~dreamlab.generations.vmc.config`; the functions below
import the heavy modules when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamlab.generations import Generation, lazy
from dreamlab.generations.vmc.config import KIND, PRESETS, STAGES, RunConfig

__all__ = ["GENERATION"]


def _pipeline(run: Path, preset: str | None, cfg: Any) -> Any:
    """:func:`~dreamlab.generations.vmc.pipeline.run_pipeline` on ``run`` from ``preset``."""
    import dataclasses

    from dreamlab.generations.vmc.pipeline import run_pipeline

    return run_pipeline(dataclasses.replace(cfg, run=Path(run), preset=preset))


def _load_world_model(run: Path, device: str) -> Any:
    """The run's V + M (the last round's) on ``device``."""
    from dreamlab.generations.vmc.run import Run

    return Run.open(run).world_model().to(device)


def _load_agent(run: Path, device: str, name: str | None = None) -> Any:
    """V + M + the run's ``controller/`` on ``device``, or the agent ``name`` of ``dreamlab
    evaluate --agent`` (``controller_round0``, ``controller_vonly``, ``planner``, ``random``...)."""
    from dreamlab.generations.vmc.agent import VMCAgent
    from dreamlab.generations.vmc.run import Run

    opened = Run.open(run)
    if name is None or name == "controller":
        return VMCAgent(opened.world_model().to(device), opened.controller())
    from dreamlab.generations.vmc.evaluate import load_agent

    return load_agent(opened, name)


GENERATION = Generation(
    kind=KIND,
    number=1,
    title="V/M/C: VAE + MDN-RNN + controller by CMA-ES (Ha & Schmidhuber 2018)",
    config_class=RunConfig,
    presets=PRESETS,
    model_kinds=("vae", "mdnrnn", "controller"),
    stages=STAGES,
    train_command="train-controller",
    pipeline=_pipeline,
    load_world_model=_load_world_model,
    load_agent=_load_agent,
    evaluate=lazy("dreamlab.generations.vmc.evaluate:evaluate"),
    dream=lazy("dreamlab.generations.vmc.evaluate:dream"),
    report=lazy("dreamlab.generations.vmc.evaluate:report"),
    build_contender=lazy("dreamlab.generations.vmc.contender:build_vmc"),
    contender_name="vmc",
)
