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

from dreamlab.generations import Generation, lazy, one_trained_agent
from dreamlab.generations.diffusion.train import KIND, PRESETS, TrainDiffusionConfig

__all__ = ["GENERATION"]


GENERATION = Generation(
    kind=KIND,
    number=3,
    title="diffusion: next-frame denoiser (EDM, DIAMOND-style) + Q-learning in its dream",
    config_class=TrainDiffusionConfig,
    presets=PRESETS,
    model_kinds=("diffusion", "qnet"),
    stages=("collect", "world_model", "fidelity", "agent", "evaluate", "report"),
    train_command="train-diffusion",
    pipeline=lazy("dreamlab.generations.diffusion.pipeline:run_diffusion_pipeline"),
    load_world_model=lazy("dreamlab.generations.diffusion.run:load_diffusion_world_model"),
    load_agent=one_trained_agent(
        KIND, lazy("dreamlab.generations.diffusion.run:load_diffusion_agent")
    ),
    episodes=lazy("dreamlab.generations.diffusion.run:episodes_path"),
    evaluate=lazy("dreamlab.generations.diffusion.pipeline:evaluate_diffusion"),
    dream=lazy("dreamlab.generations.diffusion.report:dream_diffusion"),
    report=lazy("dreamlab.generations.diffusion.report:write_diffusion_report"),
    build_contender=lazy("dreamlab.generations.diffusion.contender:build_contender"),
    contender_name="diffusion",
)
