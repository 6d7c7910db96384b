"""Crash-safe file writing: every file dreamlab writes goes to a temporary name first and is then
renamed over the target, so a process killed at any moment leaves either the old file or the new
one, never half of one.

A checkpoint is several files that must change together (weights, optimizer state, the trainer's
step): :func:`commit_files` writes them into a staging directory and moves them into place as one
unit, so a kill or a full disk at any byte of a save leaves the last complete checkpoint (see the
function for how). A full disk is one :class:`DiskFullError` line naming the file, never a
traceback, and nothing already saved is damaged.

:class:`DreamlabError` is the base of every error dreamlab raises on purpose (a corrupt store or
checkpoint, an unusable env, a run that cannot be used as asked, a diverged loss); its message is
one sentence naming the file and what to do, which the ``dreamlab`` command prints as is.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "COMMITTED_DIR",
    "STAGING_DIR",
    "Commit",
    "DiskFullError",
    "DreamlabError",
    "SettingError",
    "append_jsonl",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "commit_files",
    "finish_commit",
    "jsonable",
    "read_json",
    "read_jsonl",
    "settle",
    "sweep_temp_files",
    "truncate_jsonl",
]

STAGING_DIR = ".commit-staging"
"""files of a checkpoint being written (deleted by the next writer if a kill left it)"""
COMMITTED_DIR = ".commit"
"""files of a checkpoint that is complete but not yet moved into place (moved by the next
reader or writer)"""

# Names of interrupted writes: ours (".{target}.<random>.tmp{suffix}", see atomic_path) and the
# ".tmp" + six random characters that safetensors' save_file made beside its target in runs
# written before dreamlab wrote safetensors bytes itself.
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp(\.\w+)?$|^\.tmp[A-Za-z0-9]{6}$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DreamlabError(Exception):
    """An error whose message is meant for the user: one sentence naming the file or setting at
    fault and, where there is one, the fix. The command line prints it without a traceback."""


class SettingError(DreamlabError):
    """A setting (a command-line option, a config field) outside what it accepts. Not a
    ``ValueError``: the command-line parser would turn that into a page of help; this is one
    ``dreamlab: error:`` line."""


class DiskFullError(DreamlabError, OSError):
    """The device ran out of space while writing; what was saved before is intact."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 28]"
        return str(self.strerror)


def _write_error(e: OSError, target: Path) -> OSError:
    """``e`` as :class:`DiskFullError` naming ``target`` when the disk is full, else ``e``."""
    if isinstance(e, DiskFullError) or e.errno not in _NO_SPACE:
        return e
    return DiskFullError(
        e.errno,
        f"no space left on the device writing {target}; nothing saved before was overwritten "
        "(the last complete file or checkpoint is intact): free some space and run the same "
        "command again to resume",
    )


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    Use this for libraries that insist on writing to a path themselves (imageio, matplotlib).
    ``suffix`` keeps an extension that such a library reads to pick a format. On an exception
    the temporary file is removed and ``path`` is untouched; a full disk raises
    :class:`DiskFullError`. The file gets the mode the umask gives a new file.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent
        )
    except OSError as e:
        raise _write_error(e, target) from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; a run directory is meant to be read by others, so honour the umask.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as e:
        raise _write_error(e, target) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_file(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to the new file ``path`` and (``sync``) flush it to disk. Every byte
    dreamlab saves passes here, which is where the tests make a disk run full."""
    with open(path, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        _write_file(tmp, data, sync=False)  # atomic_path syncs it before the rename


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


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, _json_text(obj))


# ------------------------------------------------------------------------ files as one unit
class Commit:
    """The files of one :func:`commit_files` unit; each ``write_*`` names its final path (inside
    the unit's root directory) and writes it into the staging directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / STAGING_DIR

    def _staged(self, path: str | os.PathLike[str]) -> Path:
        rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.root)))
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"commit_files: {path} is outside {self.root}")
        staged = self.staging / rel
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    def write_bytes(self, path: str | os.PathLike[str], data: bytes) -> None:
        """Stage ``data`` for ``path`` (a path inside the root)."""
        _write_file(self._staged(path), data)

    def write_text(self, path: str | os.PathLike[str], text: str) -> None:
        """Stage ``text`` (UTF-8) for ``path``."""
        self.write_bytes(path, text.encode("utf-8"))

    def write_json(self, path: str | os.PathLike[str], obj: Any) -> None:
        """Stage ``obj`` as indented JSON for ``path``."""
        self.write_text(path, _json_text(obj))


@contextmanager
def commit_files(root: str | os.PathLike[str]) -> Iterator[Commit]:
    """Write several files under ``root`` as one unit: after a kill or a full disk at any byte,
    either every file is the new one or every file is the old one.

    The files go to ``ROOT/.commit-staging/``; when all are written and fsynced that directory
    is renamed to ``ROOT/.commit/`` (the commit point: one atomic rename), then each file is
    renamed into place and ``.commit/`` removed. A kill before the commit point leaves a staging
    directory that the next writer deletes; a kill after it leaves ``.commit/``, which the next
    reader or writer finishes moving (:func:`settle`). Files may sit in subdirectories of
    ``root`` (a run's several model directories).

    Raises:
        DiskFullError: the disk filled up; the previous files are untouched.
    """
    base = Path(root)
    try:
        base.mkdir(parents=True, exist_ok=True)
        finish_commit(base)
        staging = base / STAGING_DIR
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as e:
        raise _write_error(e, base) from None
    try:
        yield Commit(base)
        for dirpath, _, _ in os.walk(staging):
            _fsync_dir(Path(dirpath))
        os.rename(staging, base / COMMITTED_DIR)
        _fsync_dir(base)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):
            raise _write_error(e, base) from None
        raise
    finish_commit(base)


def finish_commit(root: str | os.PathLike[str]) -> bool:
    """Move the files of a committed unit (``ROOT/.commit/``) into place; whether there was one.

    Safe to run from several processes at once: each rename happens once, the others find the
    file gone, and only emptied directories are removed.
    """
    committed = Path(root) / COMMITTED_DIR
    if not committed.is_dir():
        return False
    touched = {Path(root)}
    for dirpath, _, filenames in os.walk(committed):
        rel = Path(dirpath).relative_to(committed)
        dest_dir = Path(root) / rel
        for name in filenames:
            dest_dir.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(Path(dirpath) / name, dest_dir / name)
            except FileNotFoundError:
                pass  # another process moved it
            touched.add(dest_dir)
    for path in touched:
        _fsync_dir(path)
    # only what is empty: a writer may already have committed its next unit here, which a
    # reader (play, export-video take no lock) must not delete
    for dirpath, _, _ in os.walk(committed, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
    return True


def settle(path: str | os.PathLike[str]) -> None:
    """Before reading files in ``path``: finish a unit of :func:`commit_files` that a kill cut
    short, in ``path`` or its parent (a run's model directories are committed together). A
    reader without write permission leaves it (the files' writer finishes it)."""
    for directory in (Path(path), Path(path).parent):
        if (directory / COMMITTED_DIR).is_dir():
            try:
                finish_commit(directory)
            except OSError:
                pass


def sweep_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove what interrupted writes left in ``directory`` (not below it): temporary files and
    an unfinished staging directory. Only for a directory this process alone writes (a stage
    directory of a run it holds the lock of); returns what was removed."""
    root = Path(directory)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    settle(root)
    for entry in os.scandir(root):
        path = Path(entry.path)
        try:
            if entry.name == STAGING_DIR and entry.is_dir():
                shutil.rmtree(path)
                removed.append(path)
            elif _TEMP_RE.match(entry.name) and entry.is_file():
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass
    return removed


# ----------------------------------------------------------------------------- JSON lines
def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` and flush it to disk.

    Appending is the one write that is not a rename: a crash can at worst leave a torn last
    line, which :func:`read_jsonl` skips.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _write_error(e, target) from None


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


def truncate_jsonl(path: str | os.PathLike[str], key: str, upto: int | float) -> None:
    """Keep the records of ``path`` whose ``key`` is at most ``upto``: what a resumed loop logged
    up to its checkpoint (``upto=0`` for a fresh start), dropping what it will log again."""
    records = read_jsonl(path)
    kept = [r for r in records if r.get(key, 0) <= upto]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Read a JSON file with one clear error naming the file when it is missing or corrupt."""
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"{what} not found: {target}")
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{target}: corrupt {what} (not valid JSON: {e})") from None
