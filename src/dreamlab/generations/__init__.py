"""The four generations of world models, one package each, behind one registry.

=====  ==========  ==========================================================================
 no.   kind        package
=====  ==========  ==========================================================================
 1     vmc         :mod:`dreamlab.generations.vmc` — V (VAE) + M (MDN-RNN) + C by CMA-ES
 2     rssm        :mod:`dreamlab.generations.rssm` — Dreamer's RSSM + actor-critic
 3     diffusion   :mod:`dreamlab.generations.diffusion` — frame diffusion + Q-learning in it
 4     tokens      :mod:`dreamlab.generations.tokens` — VQ tokens + causal transformer
=====  ==========  ==========================================================================

Each package defines ``GENERATION``, a :class:`Generation`: its kind (what ``RUN/config.json``
records), config class, presets, the checkpoint kinds it trains, its stages, and how to run,
evaluate, dream, report, load and compare it. The CLI finds a run's generation by its recorded
kind (:func:`for_run`) or a preset's (:func:`for_preset`) and calls it; nothing outside a
generation's package knows its files. Packages are imported only when asked for, so importing
this registry is cheap and no generation imports another.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamlab.rundir import RunError, run_kind

__all__ = [
    "KINDS",
    "Generation",
    "all_generations",
    "for_preset",
    "for_run",
    "get",
    "lazy",
    "one_trained_agent",
    "preset_names",
    "run_data",
]

KINDS: dict[str, str] = {
    "vmc": "dreamlab.generations.vmc",
    "rssm": "dreamlab.generations.rssm",
    "diffusion": "dreamlab.generations.diffusion",
    "tokens": "dreamlab.generations.tokens",
}
"""kind -> package, in the order of the generations"""


def lazy(target: str) -> Callable[..., Any]:
    """``"module:function"`` as a callable that imports the module on its first call, so a
    generation's ``__init__`` names its heavy functions without importing them."""
    module, _, name = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = target
    return call


def run_data(run: Path) -> Path:
    """``RUN/data``: where a run keeps its episodes unless it records another store."""
    return Path(run) / "data"


def one_trained_agent(kind: str, load: Callable[[Path, str], Any]) -> Callable[..., Any]:
    """``load_agent`` of a generation whose run trains one agent: ``load(run, device)`` for
    ``name`` None or ``"controller"`` (what ``evaluate`` calls it), a :class:`RunError` for any
    other name."""

    def load_agent(run: Path, device: str, name: str | None = None) -> Any:
        if name not in (None, "controller"):
            raise RunError(f"{run}: a {kind} run has one trained agent, 'controller'; not {name!r}")
        return load(run, device)

    return load_agent


@dataclass(frozen=True)
class Generation:
    """What the rest of dreamlab knows of one generation.

    Every callable takes the run directory first; ``args`` is the CLI command's dataclass
    (``dreamlab.commands``), read duck-typed. A generation without a command gets a callable that
    raises :class:`~dreamlab.rundir.RunError` saying what to use instead.
    """

    kind: str
    """registry key, recorded in ``RUN/config.json``"""
    number: int
    """1 (V/M/C) .. 4 (tokens)"""
    title: str
    """one line for tables and ``--help``"""
    config_class: type
    """the run's config dataclass (``config`` in ``RUN/config.json``)"""
    presets: Mapping[str, Callable[[], Any]]
    """preset name -> fresh config"""
    model_kinds: tuple[str, ...]
    """checkpoint kinds (``dreamlab.checkpoint``) the generation trains"""
    stages: tuple[str, ...]
    """the pipeline's stages, in order"""
    train_command: str
    """the CLI command that trains it alone (``dreamlab <train_command> --help``)"""
    pipeline: Callable[[Path, str | None, Any], Any]
    """``pipeline(run, preset or None, PipelineConfig)``: run or resume every stage"""
    load_world_model: Callable[[Path, str], Any]
    """``load_world_model(run, device) -> WorldModel``"""
    load_agent: Callable[[Path, str, str | None], Any]
    """``load_agent(run, device, name) -> agent`` with SB3-shaped ``predict``: the trained one
    (``name`` None or ``"controller"``) or another the generation names (V/M/C's rounds, the
    planner, random play, ...)"""
    evaluate: Callable[[Path, Any], dict[str, Any]]
    """``evaluate(run, EvaluateArgs)``: agents in the real env -> ``RUN/eval.json``"""
    dream: Callable[[Path, Any], Path]
    """``dream(run, DreamArgs)``: a decoded dream video -> its path"""
    report: Callable[[Path], Path]
    """``report(run)``: write ``RUN/report.md`` -> its path"""
    episodes: Callable[[Path], Path] = run_data
    """``episodes(run)``: the episode store its world model learned from (default ``RUN/data``)"""
    build_contender: Callable[[Any], Any] | None = None
    """``compare-models`` builder ``build(CompareContext) -> Contender``"""
    contender_name: str | None = None
    """its name in ``compare-models --models``"""

    def preset(self, name: str) -> Any:
        """A fresh copy of preset ``name``."""
        if name not in self.presets:
            raise RunError(f"unknown {self.kind} preset {name!r}; known: {', '.join(self.presets)}")
        return self.presets[name]()


def get(kind: str) -> Generation:
    """The generation registered as ``kind`` (its package is imported now)."""
    if kind not in KINDS:
        raise RunError(f"unknown run kind {kind!r}; known: {', '.join(KINDS)}")
    generation = importlib.import_module(KINDS[kind]).GENERATION
    assert isinstance(generation, Generation) and generation.kind == kind
    return generation


def all_generations() -> list[Generation]:
    """Every generation, in order (imports every package)."""
    return [get(kind) for kind in KINDS]


def preset_names() -> dict[str, str]:
    """Every preset name -> the kind of the generation it belongs to."""
    return {name: g.kind for g in all_generations() for name in g.presets}


def for_preset(name: str) -> Generation:
    """The generation whose presets include ``name``."""
    for generation in all_generations():
        if name in generation.presets:
            return generation
    known = ", ".join(preset_names())
    raise RunError(f"unknown preset {name!r}; known: {known}")


def for_run(path: str | Path, preset: str | None = None) -> Generation:
    """The generation of the run at ``path``: its recorded kind, or ``preset``'s for a new run.

    Raises:
        RunError: no run at ``path`` and no preset, or a preset of another generation than the
            run's.
    """
    kind = run_kind(path)
    if kind is None:
        if preset is None:
            raise RunError(f"{path}: no run here (no config.json); start one with --preset NAME")
        return for_preset(preset)
    generation = get(kind)
    if preset is not None and preset not in generation.presets:
        other = for_preset(preset)
        raise RunError(
            f"{path} holds a {generation.kind} run; preset {preset!r} is a {other.kind} preset, "
            "so use another --run directory"
        )
    return generation
