"""Generation 3 (docs/diffusion.md): a DIAMOND-style diffusion world model of the next frame and
a Q-agent trained only inside its dream.

=================  ===================================================================
 module             what
=================  ===================================================================
 ``worldmodel``     :class:`DiffusionWorldModel` (the ``WorldModel`` protocol), start banks
 ``agent``          Q-learning in the dream, :class:`DiffusionAgent` (SB3-shaped ``predict``)
 ``data``           every step of a store as next-frame training batches
 ``fidelity``       open-loop pixel MSE against copying the last frame
 ``train``          ``train-diffusion``: every stage, resumably; the presets
 ``pipeline``       run directories: ``pipeline``, loading, ``evaluate``
 ``report``         ``report.md`` and the decoded dream
 ``contender``      the ``compare-models`` builder
=================  ===================================================================

The heavy modules are imported by the functions below only when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamlab.generations import Generation
from dreamlab.generations.diffusion.train import KIND, PRESETS, TrainDiffusionConfig

__all__ = ["GENERATION"]


def _pipeline(run: Path, preset: str | None, options: Any) -> Path:
    from dreamlab.generations.diffusion.pipeline import run_diffusion_pipeline

    return run_diffusion_pipeline(run, preset, options)


def _load_world_model(run: Path, device: str) -> Any:
    from dreamlab.generations.diffusion.pipeline import load_diffusion_world_model

    return load_diffusion_world_model(run, device)


def _load_agent(run: Path, device: str) -> Any:
    from dreamlab.generations.diffusion.pipeline import load_diffusion_agent

    return load_diffusion_agent(run, device)


def _evaluate(run: Path, args: Any) -> dict[str, Any]:
    from dreamlab.generations.diffusion.pipeline import evaluate_diffusion

    return evaluate_diffusion(run, args)


def _dream(run: Path, args: Any) -> Path:
    from dreamlab.generations.diffusion.report import dream_diffusion

    return dream_diffusion(run, args)


def _report(run: Path) -> Path:
    from dreamlab.generations.diffusion.report import write_diffusion_report

    path = write_diffusion_report(run)
    print(path)
    return path


def _build_contender(ctx: Any) -> Any:
    from dreamlab.generations.diffusion.contender import build_contender

    return build_contender(ctx)


GENERATION = Generation(
    kind=KIND,
    number=3,
    title="diffusion: next-frame denoiser (EDM, DIAMOND-style) + Q-learning in its dream",
    config_class=TrainDiffusionConfig,
    presets=PRESETS,
    model_kinds=("diffusion", "qnet"),
    stages=("collect", "world_model", "fidelity", "agent", "evaluate", "report"),
    train_command="train-diffusion",
    pipeline=_pipeline,
    load_world_model=_load_world_model,
    load_agent=_load_agent,
    evaluate=_evaluate,
    dream=_dream,
    report=_report,
    build_contender=_build_contender,
    contender_name="diffusion",
)
