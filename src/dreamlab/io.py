"""Crash-safe file writing: every file dreamlab writes goes to a temporary name first and is then
renamed over the target, so a process killed at any moment leaves either the old file or the new
one, never half of one.

:class:`DreamlabError` is the base of every error dreamlab raises on purpose (a corrupt store or
checkpoint, an unusable env, a run that cannot be used as asked, a diverged loss); its message is
one sentence naming the file and what to do, which the ``dreamlab`` command prints as is.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DreamlabError(Exception):
    """An error whose message is meant for the user: one sentence naming the file or setting at
    fault and, where there is one, the fix. The command line prints it without a traceback."""


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    Use this for libraries that insist on writing to a path themselves (safetensors, imageio,
    matplotlib). ``suffix`` keeps an extension that such a library reads to pick a format.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; a run directory is meant to be read by others, so honour the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """``obj`` with paths as strings, tuples as lists, numpy scalars and arrays as Python values
    and mapping keys as strings: what ``json.dumps`` accepts (dataclass fields, metrics)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalar / array, torch tensor
        return obj.tolist()
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` and flush it to disk.

    Appending is the one write that is not a rename: a crash can at worst leave a torn last
    line, which :func:`read_jsonl` skips.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines file, skipping a torn last line left by a crash."""
    target = Path(path)
    if not target.exists():
        return []
    records = []
    lines = target.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{target}: line {i + 1} is not valid JSON") from None
    return records


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Read a JSON file with one clear error naming the file when it is missing or corrupt."""
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"{what} not found: {target}")
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{target}: corrupt {what} (not valid JSON: {e})") from None
