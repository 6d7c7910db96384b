"""The arguments of the commands every generation answers: ``pipeline``, ``evaluate``, ``dream``,
``report``. Each dataclass is both a CLI command's arguments (``--help`` shows the field
docstrings) and what :mod:`dreamlab.commands` hands to the run's :class:`~dreamlab.generations.Generation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from dreamlab.generations import preset_names
from dreamlab.io import SettingError
from dreamlab.plan.mpc import PlannerConfig
from dreamlab.rundir import RunError

__all__ = ["DreamArgs", "EvaluateArgs", "PipelineConfig", "ReportArgs"]


def preset_help() -> str:
    """``--preset``'s help: every preset of the registry, by generation."""
    by_kind: dict[str, list[str]] = {}
    for name, kind in preset_names().items():
        by_kind.setdefault(kind, []).append(name)
    listed = "; ".join(f"{KIND_TITLES.get(k, k)}: {', '.join(v)}" for k, v in by_kind.items())
    return (
        f"preset of a new run (its generation follows from it). {listed}. Default for a new "
        "run: catch; an existing run resumes with its own"
    )


KIND_TITLES = {"vmc": "V/M/C", "rssm": "RSSM", "diffusion": "diffusion", "tokens": "tokens"}
"""how ``--help`` names each generation"""


@dataclass
class PipelineConfig:
    """Run every stage of a world-model experiment in one run directory, resumably (any
    generation: the preset of a new run, or the kind an existing run recorded, picks it)."""

    run: Path = Path("runs/demo")
    """run directory (created from --preset, or resumed)"""
    preset: Annotated[str | None, tyro.conf.arg(help=preset_help())] = None
    """preset of a new run (its generation follows from it; `--help` lists every preset of the
    registry); default for a new run: catch. An existing run resumes with its own"""
    env: str | None = None
    """your own environment for a new run sized from it (the `generic` preset, docs/envs.md):
    `pkg.module:Class`, a registered Gymnasium id, or an env preset name"""
    env_kwargs: str | None = None
    """keyword arguments of --env's constructor as JSON, e.g. '{"size": 32}'"""
    data: Path | None = None
    """an episode store of frames (`collect`, `import`, `import-minari`) to start a new generic
    run from, instead of collecting"""
    generation: Literal["vmc", "rssm", "diffusion", "tokens"] | None = None
    """the generation of a new run sized from --env/--data (default: vmc); an existing run
    keeps its own, and a preset names its own"""
    scale: float | None = None
    """multiply every training budget of a new run sized from --env/--data (default 1; e.g.
    0.1 for a quick look)"""
    until: str | None = None
    """stop after this stage (default: run them all; the stages are the generation's, e.g.
    V/M/C: collect, vae, encode, mdnrnn, controller, iterate, controller_vonly, evaluate, dream,
    report)"""
    progress: bool = True
    """show progress bars"""
    iterations: int | None = None
    """rounds of the paper's iterative procedure (C plays, M is fine-tuned, C trains again);
    default: the preset's (catch: 1). Set when the run directory is created"""
    seed: int | None = None
    """seed of every stage, CMA-ES's included (default: the preset's, 0). Set when the run
    directory is created"""

    def __post_init__(self) -> None:
        if self.seed is not None and self.seed < 0:
            raise SettingError(f"--seed: expected an integer >= 0, got {self.seed}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise SettingError(f"--scale: expected a number > 0, got {self.scale}")

    @property
    def own(self) -> bool:
        """Whether the run is sized from the user's ``--env``/``--data`` (not a preset)."""
        return self.env is not None or self.data is not None or self.env_kwargs is not None

    @property
    def budget_scale(self) -> float:
        """``--scale``, 1 when not given."""
        return 1.0 if self.scale is None else self.scale


@dataclass
class EvaluateArgs:
    """Run agents in the real env; write eval.json and videos of the best and worst episodes (a
    run of any generation; the planner plans in any generation's world model, --pessimism and
    --precision are V/M/C's)."""

    run: Path
    """run directory"""
    episodes: int = 100
    """episodes per agent"""
    agent: list[str] = field(default_factory=lambda: ["controller"])
    """agents to score: controller (the run's trained agent, any generation), random, expert,
    planner (CEM/MPPI in the run's world model, any generation); V/M/C runs also brownian
    (sticky random actions), controller_vonly, controller_roundR, any C trained with
    train-controller --name NAME, bc, bc_latent"""
    planner: Annotated[PlannerConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=PlannerConfig
    )
    """settings of the planner agent (CEM/MPPI over imagined action sequences)"""
    pessimism: float | None = None
    """planner only: plan in the run's ensemble dream (`dreamlab train-ensemble`) with reward
    r - PESSIMISM * disagreement"""
    precision: Literal["float32", "bfloat16"] = "float32"
    """planner only: run M's matmuls under bfloat16 autocast (~1.5x faster decisions on CPUs with
    bf16 support, same catch rate on Catch; BENCHMARKS.md)"""

    def check_vmc_only(self, kind: str) -> None:
        """Refuse, in one line, the options only a V/M/C run has (its ensemble of M, its bfloat16
        M) on a run of generation ``kind``."""
        if self.pessimism is not None:
            raise RunError(
                f"--pessimism plans in an ensemble of M (train-ensemble), which a {kind} run "
                "does not have; leave it out"
            )
        if self.precision != "float32":
            raise RunError(f"--precision applies to V/M/C's M; a {kind} run plans in float32")

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise SettingError(f"--episodes: expected >= 1 episode per agent, got {self.episodes}")
        if self.pessimism is not None and not (
            math.isfinite(self.pessimism) and self.pessimism >= 0
        ):
            raise SettingError(f"--pessimism: expected a finite number >= 0, got {self.pessimism}")


@dataclass
class DreamArgs:
    """Render a dream decoded by the run's world model (any generation), and dream vs reality side
    by side where the generation draws one."""

    run: Path
    """run directory with a trained world model"""
    video: Path | None = None
    """where to write the decoded dream (.mp4 or .gif); default RUN/dream.mp4"""
    steps: int = 150
    """dream length in steps"""
    temperature: float = 1.0
    """sampling temperature tau"""
    agent: Literal["controller", "random"] = "controller"
    """who acts in the dream (the run's trained agent if there is one, else random)"""
    seed: int = 0
    """seed of the dream"""
    prompt: str | None = None
    """scenario words for a token run (train-tokens), e.g. "fast from-left" (docs/tokens.md)"""
    guidance: float = 3.0
    """classifier-free guidance scale of the prompt (token runs)"""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SettingError(f"--steps: expected >= 1 dream step, got {self.steps}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise SettingError(
                f"--temperature: expected a finite number >= 0, got {self.temperature}"
            )
        if not math.isfinite(self.guidance):
            raise SettingError(f"--guidance: expected a finite number, got {self.guidance}")
        if self.seed < 0:
            raise SettingError(f"--seed: expected an integer >= 0, got {self.seed}")


@dataclass
class ReportArgs:
    """Write report.md for a run directory from what its stages saved."""

    run: Path
    """run directory"""
