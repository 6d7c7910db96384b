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
    generation, ``catch`` by default; with ``--env`` or ``--data``, a V/M/C run sized from that
    env and its episodes). Returns what the generation's pipeline returns."""
    path = Path(cfg.run)
    preset = cfg.preset
    own = cfg.env is not None or cfg.data is not None or cfg.env_kwargs is not None
    if own and preset is not None:
        raise RunError("give --preset or --env/--data, not both (--env sizes a run from the env)")
    if cfg.env is not None:
        trust_env_code(cfg.env)  # given by the caller: its module may be imported
    with run_lock(path):
        kind = run_kind(path)
        if own:
            if kind not in (None, "vmc"):
                raise RunError(f"{path} holds a {kind} run; --env/--data start V/M/C runs")
            return get("vmc").pipeline(path, None, cfg)
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
