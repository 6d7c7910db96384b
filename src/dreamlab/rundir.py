"""A run directory: the unit every generation trains, resumes and loads from.

``RUN/config.json`` says which generation made the run and with what settings::

    {"kind": "vmc", "config": {...}, "keys": "<digest>"}

``kind`` is a key of the generation registry (:mod:`dreamlab.generations`); ``config`` is the
generation's own config as JSON, every field of it; ``keys`` is a digest of its keys, so a
field deleted by hand is an error while one added by a later version takes its default
(:mod:`dreamlab.typed`). Older run directories are still read: a V/M/C run wrote its
``RunConfig`` fields at the top level, the other generations ``{"kind": K, K: {...}}``
(``"dreamer"`` for the RSSM). ``RUN/timings.json`` sums each stage's wall seconds over resumes;
``RUN/data/`` is the episode store, whose metadata holds the env's action space, so a stage never
opens the env just to read it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dreamlab.data.schema import space_from_description
from dreamlab.data.store import STORE_FILE, EpisodeStore
from dreamlab.envs.trust import check_env_trusted
from dreamlab.io import DreamlabError, atomic_write_json, jsonable, read_json
from dreamlab.typed import FullRecord, key_digest

__all__ = [
    "CONFIG_FILE",
    "LEGACY_KINDS",
    "TIMINGS_FILE",
    "RunError",
    "check_same_settings",
    "read_run_config",
    "read_run_config_of",
    "record_time",
    "run_action_space",
    "run_kind",
    "store_action_space",
    "timed",
    "timings",
    "write_run_config",
]

CONFIG_FILE = "config.json"
TIMINGS_FILE = "timings.json"
LEGACY_KINDS = {"dreamer": "rssm"}
"""kind names written by earlier versions -> the registry's"""

T = TypeVar("T")


class RunError(DreamlabError, ValueError):
    """A run directory that cannot be used as asked (missing stage, other settings, other kind);
    the message says what to do."""


def read_run_config(path: str | Path) -> tuple[str, dict[str, Any]] | None:
    """``(kind, config)`` of the run at ``path``, or ``None`` when it has no ``config.json``.

    Raises:
        RunError: the file is not a run config (unreadable, or not a JSON object).
        EnvTrustError: its env would import a module the user has not consented to
            (:mod:`dreamlab.envs.trust`).
    """
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return None
    data = read_json(file, "run config")
    if not isinstance(data, dict):
        raise RunError(f"{file}: not a run config (expected a JSON object)")
    kind = data.get("kind")
    if kind is None:  # V/M/C runs wrote RunConfig's fields at the top level
        _check_env(data, file)
        return "vmc", data
    if not isinstance(kind, str):
        raise RunError(f"{file}: 'kind' must be a string, got {kind!r}")
    if isinstance(data.get("config"), dict):
        config = data["config"]
        recorded = data.get("keys")
        if recorded is not None and recorded != key_digest(config):
            config = FullRecord(config)  # keys were removed by hand: each field must be there
    elif isinstance(data.get(kind), dict):  # {"kind": K, K: {...}}
        config = data[kind]
    else:
        raise RunError(f"{file}: kind {kind!r} but no 'config' object")
    _check_env(config, file)
    return LEGACY_KINDS.get(kind, kind), config


def read_run_config_of(path: str | Path, kind: str, name: str) -> dict[str, Any] | None:
    """``config`` of the run at ``path`` when it is a ``kind`` run (``name``: how an error calls
    that generation), ``None`` when there is no run there.

    Raises:
        RunError: ``path`` holds a run of another generation (or what :func:`read_run_config`
            refuses).
    """
    found = read_run_config(path)
    if found is None:
        return None
    recorded, config = found
    if recorded != kind:
        raise RunError(
            f"{path}: holds a {recorded} run, not a {name} run; use its own commands or another "
            "--run directory"
        )
    return config


def _check_env(config: Mapping[str, Any], file: Path) -> None:
    """A run's env that would import a module needs the user's consent (envs.trust)."""
    env = config.get("env")
    if isinstance(env, str):
        check_env_trusted(env, str(file))


def run_kind(path: str | Path) -> str | None:
    """The generation that made the run at ``path`` (``None``: no run there yet)."""
    found = read_run_config(path)
    return None if found is None else found[0]


def write_run_config(path: str | Path, kind: str, config: Mapping[str, Any]) -> None:
    """Write ``RUN/config.json`` atomically as ``{"kind": kind, "config": config, "keys":
    digest}`` (not at all when it already says that)."""
    record = jsonable(dict(config))
    data = {"kind": kind, "config": record, "keys": key_digest(record)}
    file = Path(path) / CONFIG_FILE
    try:
        if json.loads(file.read_text()) == data:
            return  # unchanged: a refused command must leave the run's files as they were
    except (OSError, ValueError):
        pass
    atomic_write_json(file, data)


def check_same_settings(
    path: str | Path,
    saved: Mapping[str, Any],
    given: Mapping[str, Any],
    free: tuple[str, ...] = (),
    flag: str = "--run",
    source: str | Path | None = None,
) -> None:
    """Raise :class:`RunError` naming the differing settings when a resumed run (or stage) is
    given other ones than it was started with (``free`` keys may differ: progress bars, threads,
    device); ``source`` names the file the saved ones came from (``RUN/config.json``)."""
    old = {k: v for k, v in jsonable(dict(saved)).items() if k not in free}
    new = {k: v for k, v in jsonable(dict(given)).items() if k not in free}
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        where = source if source is not None else Path(path) / CONFIG_FILE
        raise RunError(
            f"{where}: this run was started with other settings (differing: "
            f"{', '.join(diff)}); run the same command to resume, or use another {flag}"
        )


def timings(path: str | Path) -> dict[str, float]:
    """Wall seconds per stage of the run (summed over resumes)."""
    file = Path(path) / TIMINGS_FILE
    return read_json(file, "timings") if file.exists() else {}


def record_time(path: str | Path, stage: str, seconds: float) -> None:
    """Add ``seconds`` to ``stage`` in ``RUN/timings.json`` (atomically)."""
    times = timings(path)
    times[stage] = round(times.get(stage, 0.0) + seconds, 2)
    atomic_write_json(Path(path) / TIMINGS_FILE, times)


def timed(path: str | Path, stage: str, fn: Callable[[], T]) -> T:
    """Run ``fn()`` and add its wall time to ``stage`` (also when it is interrupted or crashes,
    so a resumed stage's total counts every session; not when it refused its input with a
    :class:`~dreamlab.io.DreamlabError`, which leaves the run as it was)."""
    t0 = time.perf_counter()
    refused = False
    try:
        return fn()
    except DreamlabError:
        refused = True
        raise
    finally:
        if not refused:
            record_time(path, stage, time.perf_counter() - t0)


def store_action_space(store: Any) -> Any:
    """The env's action space as the episode store recorded it (a Gymnasium space)."""
    desc = getattr(getattr(store, "meta", None), "action_space", None)
    if not desc:
        raise RunError(f"{getattr(store, 'path', 'store')}: its metadata has no action space")
    return space_from_description(desc)


def run_action_space(path: str | Path, env: str | None, env_kwargs: Mapping[str, Any]) -> Any:
    """The action space of the run at ``path``: from its episode store's metadata
    (``RUN/data``); only a run with no episodes yet makes its env (a VizDoom or Box2D process for
    some presets) to ask it."""
    data = Path(path) / "data"
    if (data / STORE_FILE).is_file():
        return store_action_space(EpisodeStore.open(data))
    if env is None:
        raise RunError(f"{path}: no episodes in data/ and no env to read the action space from")
    from dreamlab.envs import make_env

    made = make_env(env, **env_kwargs)
    try:
        return made.action_space
    finally:
        made.close()
