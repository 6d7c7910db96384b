"""One writer per run directory: a command that writes a run holds ``RUN/.lock`` while it works.

The lock is an ``flock`` on that file, so it goes with its process: a run whose writer was
killed is free again at once, with no stale lock to delete. A second writer does not wait: it
stops with one line naming the holder's pid and command. Locks nest within one process (the
pipeline holds its run's lock while a stage function takes it again), and child processes the
holder starts (collection workers, raced CMA-ES runs) write under the holder's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dreamlab.io import DreamlabError

__all__ = ["LOCK_FILE", "RunLockedError", "lock_target", "run_lock"]

LOCK_FILE = ".lock"

_held: dict[Path, list[int]] = {}
"""run directory -> [file descriptor, nesting depth] of the locks this process holds"""


class RunLockedError(DreamlabError):
    """Another process is writing the run directory."""


def lock_target(path: str | os.PathLike[str]) -> Path:
    """The directory whose lock guards writes to ``path``: the nearest enclosing run directory
    (one holding a ``config.json`` with a ``kind``, e.g. ``RUN`` for ``RUN/data``), else ``path``
    itself."""
    target = Path(path).resolve()
    for parent in target.parents:
        config = parent / "config.json"
        if config.is_file():
            try:
                if "kind" in json.loads(config.read_text(encoding="utf-8")):
                    return parent
            except (OSError, ValueError):
                pass
    return target


def _holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(data["since"])))
        return f"pid {data['pid']} ({data['command']}, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def run_lock(path: str | os.PathLike[str], command: str | None = None) -> Iterator[Path]:
    """Hold the write lock of the run at ``path`` (see :func:`lock_target`) while the block runs.

    A directory this call had to create for its lock, and that holds nothing else when the block
    ends, is removed again, so a command refused before it wrote anything leaves no trace.

    Raises:
        RunLockedError: another process holds the lock (the message names its pid and command).
    """
    root = lock_target(path)
    if root in _held:
        _held[root][1] += 1
        try:
            yield root
        finally:
            _held[root][1] -= 1
        return
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunLockedError(
            f"{root} is being written by {holder}; one process writes a run at a time: wait for "
            "it to finish (or stop it), then run this command again"
        ) from None
    record = {
        "pid": os.getpid(),
        "command": command or " ".join(["dreamlab", *sys.argv[1:]])[:300],
        "since": time.time(),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    _held[root] = [fd, 1]
    try:
        yield root
    finally:
        del _held[root]
        if created and {p.name for p in root.iterdir()} == {LOCK_FILE}:
            (root / LOCK_FILE).unlink(missing_ok=True)
            root.rmdir()
        os.close(fd)  # releases the flock
