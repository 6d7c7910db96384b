"""One episode file: a safetensors file parsed by hand, validated against the store's schema.

An episode file ``ep_000042.safetensors`` holds the episode's named arrays and string metadata
(``info``: seed, policy, ... plus the format version, env id, index and length). Headers are
parsed by hand (8-byte header length, JSON header, raw data) so that every read can be validated
against the schema and frames can be read with ``pread`` (:class:`EpisodeReader`) or memory-mapped
(:func:`map_episode`) without going through a copy. Files are written atomically in the
safetensors format (:func:`write_episode_file`) so any safetensors reader can open them. The
header records a CRC-32 of every array (``crc32``), which :func:`verify_episode_file` checks, so
bytes flipped on disk after the write are an error naming the file, not silent bad data.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as safetensors_bytes

from dreamlab.data.schema import FORMAT_VERSION, SAFETENSORS_DTYPES, ArraySpec, StoreError
from dreamlab.io import atomic_write_bytes

__all__ = [
    "EPISODE_SUFFIX",
    "STALE_TEMP_SECONDS",
    "EpisodeHeader",
    "EpisodeReader",
    "check_rows",
    "clean_stale_temps",
    "episode_filename",
    "episode_index",
    "map_episode",
    "read_episode_header",
    "verify_episode_file",
    "write_episode_file",
]

EPISODE_SUFFIX = ".safetensors"
STALE_TEMP_SECONDS = 60.0
"""Temp files older than this are leftovers of a crash; younger ones may be a live writer's."""

_EPISODE_RE = re.compile(r"^ep_(\d{6,})\.safetensors$")
# dreamlab.io.atomic_path names temp files ".{target}.<random>.tmp{suffix}".
_TEMP_RE = re.compile(r"^\.ep_\d{6,}\.safetensors\..*\.tmp.*$")
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_RESERVED_INFO = ("dreamlab_format", "env_id", "index", "num_steps", "crc32")


@dataclass(frozen=True)
class _Entry:
    """Where one array lives inside an episode file."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    """absolute byte offset in the file"""
    nbytes: int


@dataclass(frozen=True)
class EpisodeHeader:
    """The parsed, validated header of one episode file."""

    path: Path
    index: int
    num_steps: int
    entries: dict[str, _Entry]
    info: dict[str, str]
    file_size: int


def episode_filename(index: int) -> str:
    """File name of episode ``index``: ``ep_000042.safetensors``."""
    if index < 0:
        raise ValueError(f"episode index must be >= 0, got {index}")
    return f"ep_{index:06d}{EPISODE_SUFFIX}"


def episode_index(name: str) -> int | None:
    """The index in an episode file name (``ep_000042.safetensors`` -> 42), None for other names."""
    m = _EPISODE_RE.match(name)
    return int(m.group(1)) if m else None


def read_episode_header(path: Path, schema: Mapping[str, ArraySpec]) -> EpisodeHeader:
    """Read and validate the header of an episode file against ``schema``.

    Checks the header length, the JSON, every dtype/shape/offset, that the file holds exactly the
    bytes the header promises (a truncated file fails here), and the row counts of the schema.

    Raises:
        StoreError: naming ``path`` and what was wrong.
    """
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise StoreError(f"{path}: corrupt episode file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(_MAX_HEADER_BYTES, file_size - 8):
                raise StoreError(
                    f"{path}: corrupt episode file (header length {header_len} exceeds file size "
                    f"{file_size})"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise StoreError(f"{path}: cannot read episode file ({e})") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: corrupt episode file (header is not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise StoreError(f"{path}: corrupt episode file (header is not a JSON object)")
    info = header.pop("__metadata__", None) or {}
    if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
        raise StoreError(f"{path}: corrupt episode file (__metadata__ must map strings to strings)")

    data_start = 8 + header_len
    entries: dict[str, _Entry] = {}
    data_end = 0
    for name, desc in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[desc["dtype"]]
            shape = tuple(int(s) for s in desc["shape"])
            begin, end = (int(o) for o in desc["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise StoreError(
                f"{path}: corrupt episode file (array {name!r} has a bad header entry {desc!r})"
            ) from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if min(shape, default=0) < 0 or begin < 0 or end - begin != nbytes:
            raise StoreError(
                f"{path}: corrupt episode file (array {name!r}: shape {list(shape)} of "
                f"{desc['dtype']} needs {nbytes} bytes, offsets give {end - begin})"
            )
        entries[name] = _Entry(dtype, shape, data_start + begin, nbytes)
        data_end = max(data_end, end)
    if data_start + data_end != file_size:
        raise StoreError(
            f"{path}: corrupt or truncated episode file (header promises "
            f"{data_start + data_end} bytes, file has {file_size})"
        )

    missing = sorted(set(schema) - set(entries))
    unexpected = sorted(set(entries) - set(schema))
    if missing or unexpected:
        raise StoreError(
            f"{path}: arrays do not match the store schema (missing {missing}, unexpected "
            f"{unexpected})"
        )
    num_steps = check_rows(
        {name: (e.dtype, e.shape) for name, e in entries.items()}, schema, str(path)
    )
    try:
        index = int(info["index"])
    except (KeyError, ValueError):
        from_name = episode_index(path.name)
        index = -1 if from_name is None else from_name
    return EpisodeHeader(path, index, num_steps, entries, dict(info), file_size)


def check_rows(
    arrays: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]],
    schema: Mapping[str, ArraySpec],
    where: str,
) -> int:
    """Check every schema array's dtype, row shape and row count; return the episode length T.

    Args:
        arrays: name -> ``(dtype, shape)`` of each array (parsed header or arrays to write).
        schema: the store's schema.
        where: names the file or episode in errors.

    Raises:
        StoreError: the first mismatch, or an episode of no steps.
    """
    implied: dict[str, int] = {}
    for name, spec in schema.items():
        dtype, shape = arrays[name]
        if dtype != spec.np_dtype:
            raise StoreError(
                f"{where}: array {name!r} has dtype {dtype.name}, expected {spec.dtype}"
            )
        if len(shape) != 1 + len(spec.shape) or tuple(shape[1:]) != spec.shape:
            raise StoreError(
                f"{where}: array {name!r} has shape {list(shape)}, expected "
                f"({'T+1' if spec.rows == 'per_obs' else 'T'}, {', '.join(map(str, spec.shape))})"
            )
        implied[name] = shape[0] - 1 if spec.rows == "per_obs" else shape[0]
    if len(set(implied.values())) > 1:
        counts = ", ".join(
            f"{n!r}: {arrays[n][1][0]} ({'T+1' if schema[n].rows == 'per_obs' else 'T'})"
            for n in implied
        )
        raise StoreError(
            f"{where}: row counts disagree ({counts}); per_obs arrays need T+1 rows, per_step T"
        )
    num_steps = next(iter(implied.values()), 0)
    if num_steps < 1:
        raise StoreError(f"{where}: an episode needs at least 1 step, got {num_steps}")
    return num_steps


def write_episode_file(
    path: Path,
    arrays: Mapping[str, np.ndarray],
    *,
    env_id: str,
    index: int,
    num_steps: int,
    info: Mapping[str, str] | None = None,
) -> None:
    """Write validated, C-contiguous ``arrays`` as one episode file, atomically.

    ``info`` is stored as the header's string metadata, next to the format version, ``env_id``,
    ``index`` and ``num_steps`` (which ``info`` cannot override).
    """
    meta = {k: str(v) for k, v in (info or {}).items() if k not in _RESERVED_INFO}
    meta.update(
        dreamlab_format=str(FORMAT_VERSION),
        env_id=env_id,
        index=str(index),
        num_steps=str(num_steps),
        crc32=json.dumps({name: _crc32(arr) for name, arr in sorted(arrays.items())}),
    )
    atomic_write_bytes(path, safetensors_bytes(dict(arrays), metadata=meta))


def _crc32(arr: np.ndarray | memoryview) -> int:
    return zlib.crc32(arr if isinstance(arr, memoryview) else memoryview(arr).cast("B"))


def verify_episode_file(header: EpisodeHeader) -> None:
    """Check every array of the file against the CRC-32 its header recorded (files written
    before checksums were recorded pass unchecked).

    Raises:
        StoreError: naming the file and the damaged array.
    """
    raw = header.info.get("crc32")
    if raw is None:
        return
    try:
        expected = {str(k): int(v) for k, v in json.loads(raw).items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        raise StoreError(
            f"{header.path}: corrupt episode file (bad crc32 record {raw!r})"
        ) from None
    try:
        with open(header.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise StoreError(f"{header.path}: cannot read episode file ({e})") from None
    with mm:
        view = memoryview(mm)
        try:
            for name, entry in header.entries.items():
                got = _crc32(view[entry.offset : entry.offset + entry.nbytes])
                if name in expected and got != expected[name]:
                    raise StoreError(
                        f"{header.path}: array {name!r} fails its checksum (recorded crc32 "
                        f"{expected[name]}, read {got}): the file was damaged after it was "
                        "written; restore it, or delete it and collect it again"
                    )
        finally:
            view.release()


def map_episode(header: EpisodeHeader) -> dict[str, np.ndarray]:
    """All arrays of the episode file of ``header``, memory-mapped and read-only (no copy)."""
    try:
        with open(header.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise StoreError(f"{header.path}: cannot map episode file ({e})") from None
    out = {}
    for name, entry in header.entries.items():
        count = entry.nbytes // entry.dtype.itemsize
        arr = np.frombuffer(mm, dtype=entry.dtype, count=count, offset=entry.offset)
        out[name] = arr.reshape(entry.shape)
    return out


class EpisodeReader:
    """Copies rows out of one open episode file with ``pread`` (no mmap, nothing cached)."""

    def __init__(self, header: EpisodeHeader) -> None:
        """Open the file of ``header`` (see :meth:`dreamlab.data.store.EpisodeStore.reader`)."""
        self.header = header
        try:
            self._fd: int | None = os.open(header.path, os.O_RDONLY)
        except OSError as e:
            raise StoreError(f"{header.path}: cannot open episode file ({e})") from None

    def close(self) -> None:
        """Close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _entry(self, key: str) -> tuple[_Entry, int]:
        if self._fd is None:
            raise StoreError(f"{self.header.path}: reader is closed")
        e = self.header.entries.get(key)
        if e is None:
            raise StoreError(
                f"{self.header.path}: no array {key!r} ({sorted(self.header.entries)})"
            )
        num_rows = e.shape[0]
        return e, (e.nbytes // num_rows if num_rows else 0)

    def read_span(
        self, key: str, start: int, stop: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Copy rows ``start:stop`` of array ``key`` with one ``pread``.

        Returns:
            ``(stop - start, *row_shape)`` array; ``out`` when given (must be C-contiguous).
        """
        e, row_bytes = self._entry(key)
        if not 0 <= start <= stop <= e.shape[0]:
            raise StoreError(
                f"{self.header.path}: rows {start}:{stop} of {key!r} out of range 0:{e.shape[0]}"
            )
        if out is None:
            out = np.empty((stop - start, *e.shape[1:]), dtype=e.dtype)
        assert self._fd is not None
        _pread_into(self._fd, out, e.offset + start * row_bytes, self.header.path)
        return out

    def read_rows(
        self,
        key: str,
        rows: np.ndarray,
        out: np.ndarray | None = None,
        slots: np.ndarray | None = None,
    ) -> np.ndarray:
        """Copy chosen rows of array ``key``, one ``pread`` per row.

        Args:
            key: array name.
            rows: ``(N,)`` row numbers, any order, repeats allowed.
            out: destination, C-contiguous; default a new ``(N, *row_shape)`` array.
            slots: ``(N,)`` positions in ``out`` for each row (default ``0..N-1``), so a sampler
                can scatter rows of one episode into their places in a shuffled batch.

        Returns:
            ``out``.
        """
        e, row_bytes = self._entry(key)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= e.shape[0]):
            raise StoreError(f"{self.header.path}: rows of {key!r} out of range 0:{e.shape[0]}")
        if out is None:
            out = np.empty((len(rows), *e.shape[1:]), dtype=e.dtype)
        targets = range(len(rows)) if slots is None else np.asarray(slots).tolist()
        assert self._fd is not None
        for slot, r in zip(targets, rows.tolist(), strict=True):
            _pread_into(self._fd, out[slot : slot + 1], e.offset + r * row_bytes, self.header.path)
        return out


def _pread_into(fd: int, out: np.ndarray, offset: int, path: Path) -> None:
    """Fill the C-contiguous ``out`` with bytes at ``offset`` of ``fd``."""
    view = out.data.cast("B")
    got = os.preadv(fd, [view], offset)
    while got < len(view):
        more = os.preadv(fd, [view[got:]], offset + got)
        if more == 0:
            raise StoreError(f"{path}: truncated episode file (short read at byte {offset + got})")
        got += more


def clean_stale_temps(directory: Path, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove temp files of interrupted writes older than ``max_age`` seconds; return them."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    now = time.time()
    for entry in os.scandir(directory):
        if _TEMP_RE.match(entry.name):
            try:
                if now - entry.stat().st_mtime > max_age:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except FileNotFoundError:
                pass  # its writer finished (renamed it) or another reader cleaned it
    return removed
