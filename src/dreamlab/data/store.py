"""The episode store: a directory of episode files plus a ``store.json`` describing them all.

Layout of a store directory::

    STORE/store.json                        format version, env id, preset, spaces, array schema
    STORE/episodes/ep_000000.safetensors    one episode: named arrays + string metadata
    STORE/episodes/ep_000001.safetensors
    ...

What the episodes hold is described by :mod:`dreamlab.data.schema`; one episode file is read and
written by :mod:`dreamlab.data.episode_file`. Several processes may append to one store at once:
every episode is written atomically under its own index.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from dreamlab.data.episode_file import (
    EpisodeHeader,
    EpisodeReader,
    check_rows,
    clean_stale_temps,
    episode_filename,
    episode_index,
    map_episode,
    read_episode_header,
    verify_episode_file,
    write_episode_file,
)
from dreamlab.data.schema import ArraySpec, StoreError, StoreMeta
from dreamlab.io import atomic_write_json, read_json

__all__ = ["EPISODES_DIR", "STORE_FILE", "EpisodeStore"]

STORE_FILE = "store.json"
EPISODES_DIR = "episodes"


class EpisodeStore:
    """A directory of episodes sharing one schema; safe to append to from several processes.

    Readers get memory-mapped, read-only arrays (:meth:`episode`) or copies of chosen rows read with
    ``pread`` (:meth:`reader`); nothing but the small parsed headers is
    cached, so iterating a store far larger than RAM keeps the process's own memory flat. The
    first read of an episode in a store object checks its arrays against the checksums in its
    header (one pass over the file, ~4 GB/s).
    """

    def __init__(self, path: Path, meta: StoreMeta) -> None:
        """Use :meth:`create`, :meth:`open` or :meth:`open_or_create` instead."""
        self.path = path
        self.meta = meta
        self._headers: dict[int, EpisodeHeader] = {}
        self._verified: set[int] = set()
        self._indices: list[int] = []
        self.refresh()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: StoreMeta) -> EpisodeStore:
        """Create an empty store at ``path`` (which must not hold a store yet)."""
        root = Path(path)
        if (root / STORE_FILE).exists():
            raise StoreError(f"{root}: a store already exists here (use open or open_or_create)")
        (root / EPISODES_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / STORE_FILE, meta.to_json())
        return cls(root, meta)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        env_id: str | None = None,
        obs_shape: tuple[int, ...] | None = None,
        kind: str | None = None,
    ) -> EpisodeStore:
        """Open an existing store, optionally checking what it must hold.

        Args:
            path: store directory.
            env_id: if given, the store's env id must equal it.
            obs_shape: if given, the store's ``obs`` rows must have this shape.
            kind: if given, the store's kind ('observations', 'latents', ...) must equal it.

        Raises:
            StoreError: naming the store and the mismatched field.
        """
        root = Path(path)
        meta_path = root / STORE_FILE
        try:
            raw = read_json(meta_path, what="store metadata")
        except FileNotFoundError:
            raise StoreError(f"{root}: not an episode store ({STORE_FILE} not found)") from None
        except ValueError as e:
            raise StoreError(str(e)) from None
        meta = StoreMeta.from_json(raw, str(meta_path))
        if env_id is not None and meta.env_id != env_id:
            raise StoreError(f"{root}: store holds env_id {meta.env_id!r}, expected {env_id!r}")
        if obs_shape is not None and meta.obs_shape != tuple(obs_shape):
            raise StoreError(
                f"{root}: store holds obs_shape {meta.obs_shape}, expected {tuple(obs_shape)}"
            )
        if kind is not None and meta.kind != kind:
            raise StoreError(f"{root}: store holds kind {meta.kind!r}, expected {kind!r}")
        clean_stale_temps(root / EPISODES_DIR)
        return cls(root, meta)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], meta: StoreMeta) -> EpisodeStore:
        """Open the store at ``path`` if it exists (it must be compatible with ``meta``), else create it.

        Raises:
            StoreError: naming the store and the first incompatible field.
        """
        root = Path(path)
        if not (root / STORE_FILE).exists():
            try:
                return cls.create(root, meta)
            except StoreError:
                pass  # another process created it between the check and create
        store = cls.open(root)
        problem = store.meta.mismatch(meta)
        if problem is not None:
            raise StoreError(f"{root}: incompatible store ({problem})")
        return store

    # -- listing --------------------------------------------------------------------------------

    @property
    def episodes_dir(self) -> Path:
        """Directory holding the episode files."""
        return self.path / EPISODES_DIR

    def episode_path(self, index: int) -> Path:
        """Path of episode ``index`` (whether or not it exists)."""
        return self.episodes_dir / episode_filename(index)

    def refresh(self) -> None:
        """Rescan the episode directory (other processes may have appended episodes)."""
        found = []
        if self.episodes_dir.is_dir():
            for entry in os.scandir(self.episodes_dir):
                index = episode_index(entry.name)
                if index is not None:
                    found.append(index)
        found.sort()
        self._indices = found
        present = set(found)
        self._headers = {i: h for i, h in self._headers.items() if i in present}
        self._verified &= present

    @property
    def indices(self) -> list[int]:
        """Sorted indices of the episodes present."""
        return list(self._indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.episode_path(index).exists()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def missing(self, num_episodes: int) -> list[int]:
        """Indices in ``range(num_episodes)`` that are not stored yet."""
        present = set(self._indices)
        return [i for i in range(num_episodes) if i not in present]

    def header(self, index: int) -> EpisodeHeader:
        """The validated header of episode ``index`` (cached; headers are a few hundred bytes)."""
        h = self._headers.get(index)
        if h is None:
            path = self.episode_path(index)
            if not path.exists():
                raise StoreError(f"{self.path}: episode {index} not found ({path})")
            h = read_episode_header(path, self.meta.schema)
            if h.index != index:
                raise StoreError(f"{path}: header says episode {h.index}, file name says {index}")
            self._headers[index] = h
        return h

    @property
    def lengths(self) -> np.ndarray:
        """Steps T of every episode, aligned with :attr:`indices`: ``(num_episodes,) int64``."""
        return np.array([self.header(i).num_steps for i in self._indices], dtype=np.int64)

    @property
    def num_steps(self) -> int:
        """Total steps (transitions) in the store."""
        return int(self.lengths.sum())

    @property
    def num_frames(self) -> int:
        """Total observations in the store (T+1 per episode)."""
        return self.num_steps + len(self)

    def disk_bytes(self) -> int:
        """Total size of the episode files."""
        return sum(self.header(i).file_size for i in self._indices)

    def rows(self, key: str) -> np.ndarray:
        """Rows of array ``key`` in every episode, aligned with :attr:`indices`."""
        spec = self._spec(key)
        lengths = self.lengths
        return lengths + 1 if spec.rows == "per_obs" else lengths

    # -- writing --------------------------------------------------------------------------------

    def append(
        self,
        arrays: Mapping[str, np.ndarray],
        index: int | None = None,
        info: Mapping[str, str] | None = None,
    ) -> Path:
        """Validate one episode against the schema and write it atomically.

        Args:
            arrays: one array per schema entry; per_obs arrays have T+1 rows, per_step arrays T.
                Float-to-float casts (float64 rewards -> float32) and safe casts (int32 -> int64)
                are applied; any other dtype is an error.
            index: episode index; None takes the next free index after the largest present.
            info: string metadata stored in the episode header (seed, policy, ...).

        Returns:
            The path of the written episode file.

        Raises:
            StoreError: naming the array and what was expected, or when ``index`` exists already.
        """
        where = f"{self.path}: episode {'(new)' if index is None else index}"
        missing = sorted(set(self.meta.schema) - set(arrays))
        unexpected = sorted(set(arrays) - set(self.meta.schema))
        if missing or unexpected:
            raise StoreError(
                f"{where}: arrays do not match the store schema (missing {missing}, unexpected "
                f"{unexpected})"
            )
        prepared: dict[str, np.ndarray] = {}
        for name, spec in self.meta.schema.items():
            arr = np.asarray(arrays[name])
            if arr.dtype != spec.np_dtype:
                both_float = arr.dtype.kind == "f" and spec.np_dtype.kind == "f"
                if not (both_float or np.can_cast(arr.dtype, spec.np_dtype, "safe")):
                    raise StoreError(
                        f"{where}: array {name!r} has dtype {arr.dtype.name}, expected {spec.dtype}"
                    )
                arr = arr.astype(spec.np_dtype)
            prepared[name] = np.ascontiguousarray(arr)
        num_steps = check_rows(
            {n: (a.dtype, a.shape) for n, a in prepared.items()}, self.meta.schema, where
        )
        if index is None:
            self.refresh()
            index = self._indices[-1] + 1 if self._indices else 0
        path = self.episode_path(index)
        if path.exists():
            raise StoreError(f"{path}: episode {index} already exists in the store")
        write_episode_file(
            path, prepared, env_id=self.meta.env_id, index=index, num_steps=num_steps, info=info
        )
        if index not in self._indices:
            self._indices.append(index)
            self._indices.sort()
        self._headers.pop(index, None)
        self._verified.discard(index)
        return path

    # -- reading --------------------------------------------------------------------------------

    def _spec(self, key: str) -> ArraySpec:
        spec = self.meta.schema.get(key)
        if spec is None:
            raise StoreError(
                f"{self.path}: no array {key!r} in the schema ({sorted(self.meta.schema)})"
            )
        return spec

    def _checked_header(self, index: int) -> EpisodeHeader:
        """The header of episode ``index``, its file checked against its checksums once."""
        h = self.header(index)
        if index not in self._verified:
            verify_episode_file(h)
            self._verified.add(index)
        return h

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """All arrays of episode ``index``, memory-mapped and read-only (no copy, no cache)."""
        return map_episode(self._checked_header(index))

    def info(self, index: int) -> dict[str, str]:
        """String metadata stored with episode ``index``."""
        return dict(self.header(index).info)

    def reader(self, index: int) -> EpisodeReader:
        """Open episode ``index`` for row reads; use as ``with store.reader(i) as r: ...``."""
        return EpisodeReader(self._checked_header(index))

    def validate(self) -> None:
        """Read every episode file completely and check it.

        Checks the header against the schema and file size, the episode index and env id in the
        header, every array's checksum, that bool arrays hold only 0/1 and float arrays are finite.

        Raises:
            StoreError: naming the first bad file.
        """
        self.refresh()
        self._headers.clear()
        self._verified.clear()
        for index in self._indices:
            h = self._checked_header(index)
            if h.info.get("env_id", self.meta.env_id) != self.meta.env_id:
                raise StoreError(
                    f"{h.path}: episode env_id {h.info['env_id']!r} differs from the store's "
                    f"{self.meta.env_id!r}"
                )
            for name, arr in self.episode(index).items():
                if arr.dtype == np.bool_:
                    bad = np.count_nonzero(arr.view(np.uint8) > 1)
                    if bad:
                        raise StoreError(f"{h.path}: array {name!r} has {bad} non-0/1 bool bytes")
                elif arr.dtype.kind == "f":
                    bad = arr.size - np.count_nonzero(np.isfinite(arr))
                    if bad:
                        raise StoreError(f"{h.path}: array {name!r} has {bad} non-finite values")
                else:
                    # Touch every page so an unreadable (I/O error) file fails here, not mid-training.
                    np.bitwise_xor.reduce(arr.reshape(-1).view(np.uint8))

    def __repr__(self) -> str:
        return (
            f"EpisodeStore({str(self.path)!r}, env_id={self.meta.env_id!r}, episodes={len(self)})"
        )
