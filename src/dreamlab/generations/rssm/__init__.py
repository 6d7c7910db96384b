"""Generation 2: Dreamer (docs/dreamer.md). An RSSM world model and an actor-critic trained in
its imagination, learned online while collecting in the real env.

=================  ===================================================================
 module             what
=================  ===================================================================
 ``config``         :class:`DreamerConfig` and the presets
 ``worldmodel``     :class:`RSSMWorldModel` (the ``WorldModel`` protocol), start banks
 ``agent``          :class:`DreamerAgent` (RSSM + actor, SB3-shaped ``predict``)
 ``trainer``        the run's state and its update (replay, checkpoints, resume)
 ``online``         the online loop (:func:`train_dreamer`)
 ``pipeline``       run directories, ``pipeline`` / ``train-dreamer`` / ``evaluate``
 ``report``         ``report.md``, the decoded dream, dream vs reality
 ``contender``      the ``compare-models`` builder (offline on a fixed store)
=================  ===================================================================

The heavy modules are imported by the functions below only when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamlab.generations import Generation, lazy, one_trained_agent
from dreamlab.generations.rssm.config import DREAMER_PRESETS, KIND, DreamerConfig

__all__ = ["GENERATION"]


def _load_agent(run: Path, device: str) -> Any:
    from dreamlab.generations.rssm.agent import DreamerAgent

    return DreamerAgent.load(run, device=device)


def _load_world_model(run: Path, device: str) -> Any:
    return _load_agent(run, device).world_model


GENERATION = Generation(
    kind=KIND,
    number=2,
    title="Dreamer: RSSM + actor-critic in imagination, learned online",
    config_class=DreamerConfig,
    presets=DREAMER_PRESETS,
    model_kinds=("rssm", "actor_critic"),
    stages=("online", "report"),
    train_command="train-dreamer",
    pipeline=lazy("dreamlab.generations.rssm.pipeline:run_dreamer_pipeline"),
    load_world_model=_load_world_model,
    load_agent=one_trained_agent(KIND, _load_agent),
    evaluate=lazy("dreamlab.generations.rssm.pipeline:evaluate_rssm"),
    dream=lazy("dreamlab.generations.rssm.report:dream_rssm"),
    report=lazy("dreamlab.generations.rssm.report:write_dreamer_report"),
    build_contender=lazy("dreamlab.generations.rssm.contender:build_rssm"),
    contender_name="rssm",
)
