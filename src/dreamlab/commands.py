"""The commands every generation answers, dispatched on the run's recorded kind.

``dreamlab pipeline``, ``evaluate``, ``dream`` and ``report`` take a run directory; its
``config.json`` says which generation made it (:func:`dreamlab.rundir.run_kind`), and the
registry (:mod:`dreamlab.generations`) hands the command to that generation. A new run's
generation follows from its ``--preset``. A generation without a command says so in one line.
Each holds the run's write lock while it works (:func:`dreamlab.lock.run_lock`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamlab.envs.trust import trust_env_code
from dreamlab.generations import for_run, get, preset_names
from dreamlab.generations.args import DreamArgs, EvaluateArgs, PipelineConfig, ReportArgs
from dreamlab.lock import run_lock
from dreamlab.rundir import RunError, run_kind

__all__ = ["dream", "evaluate", "presets_help", "report", "run_pipeline"]

DEFAULT_PRESET = "catch"
"""the preset of a new run when none is given (the demo)"""


def run_pipeline(cfg: PipelineConfig) -> Any:
    """Run or resume every stage of the run at ``cfg.run`` (a new run: of ``cfg.preset``'s
    generation, ``catch`` by default; with ``--env`` or ``--data``, a run of ``--generation``
    (V/M/C by default) sized from that env and its episodes, :mod:`dreamlab.generations.own`).
    Returns what the generation's pipeline returns."""
    path = Path(cfg.run)
    preset = cfg.preset
    if cfg.own and preset is not None:
        raise RunError("give --preset or --env/--data, not both (--env sizes a run from the env)")
    if cfg.env is not None:
        trust_env_code(cfg.env)  # given by the caller: its module may be imported
    with run_lock(path):
        kind = run_kind(path)
        if cfg.generation is not None and kind is not None and cfg.generation != kind:
            raise RunError(
                f"{path} holds a {kind} run, not {cfg.generation}; resume it without "
                "--generation, or use another --run directory"
            )
        if cfg.scale is not None and (kind is not None or not cfg.own):
            raise RunError(
                "--scale sizes the budgets of a new run from --env/--data; an existing run or a "
                "preset keeps its own"
            )
        if cfg.own:
            return get(kind or cfg.generation or "vmc").pipeline(path, None, cfg)
        if kind is None and cfg.generation is not None:
            if preset is None:
                raise RunError(
                    f"--generation {cfg.generation} starts a run sized from --env or --data; "
                    "give one of them, or a preset"
                )
            if preset_names().get(preset, cfg.generation) != cfg.generation:
                raise RunError(f"preset {preset!r} is not a {cfg.generation} preset")
        if preset is None and kind is None:
            preset = DEFAULT_PRESET
        generation = for_run(path, preset)
        return generation.pipeline(path, preset, cfg)


def evaluate(args: EvaluateArgs) -> dict[str, Any]:
    """Score the run's agents in the real env (``RUN/eval.json``)."""
    with run_lock(args.run):
        return for_run(args.run).evaluate(Path(args.run), args)


def dream(args: DreamArgs) -> Path:
    """Write a video of a dream decoded by the run's world model."""
    with run_lock(args.run):
        return for_run(args.run).dream(Path(args.run), args)


def report(args: ReportArgs) -> Path:
    """Write ``RUN/report.md`` from what the run's stages saved, and print its path."""
    with run_lock(args.run):
        out = for_run(args.run).report(Path(args.run))
    print(out)
    return out


def presets_help() -> str:
    """Every preset, grouped by generation (for messages and docs)."""
    groups: dict[str, list[str]] = {}
    for name, kind in preset_names().items():
        groups.setdefault(kind, []).append(name)
    return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in groups.items())
