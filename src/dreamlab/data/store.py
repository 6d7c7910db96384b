"""The episode store: one safetensors file per episode plus a ``store.json`` describing them all.

Layout of a store directory::

    STORE/store.json                        format version, env id, preset, spaces, array schema
    STORE/episodes/ep_000000.safetensors    one episode: named arrays + string metadata
    STORE/episodes/ep_000001.safetensors
    ...

An episode of ``T`` steps holds per-observation arrays with ``T+1`` rows (``obs`` includes the final
observation, as Minari does) and per-step arrays with ``T`` rows (``action``, ``reward``,
``terminated``, ``truncated``). The schema is generic so that derived stores (latent sequences
``mu``/``logvar``) use the same code with other named arrays.

Episode files are parsed by hand (8-byte header length, JSON header, raw data) so that every read
can be validated against the schema and frames can be read with ``pread`` or memory-mapped without
going through a copy. Files are written with ``safetensors.numpy.save_file`` so any safetensors
reader can open them.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.numpy import save_file

from dreamlab.io import atomic_path, atomic_write_json, read_json

FORMAT_VERSION = 1
"""Version of the store layout written into ``store.json`` and every episode header."""

STORE_FILE = "store.json"
EPISODES_DIR = "episodes"
EPISODE_SUFFIX = ".safetensors"
STALE_TEMP_SECONDS = 60.0
"""Temp files older than this are leftovers of a crash; younger ones may be a live writer's."""

_EPISODE_RE = re.compile(r"^ep_(\d{6,})\.safetensors$")
# dreamlab.io.atomic_path names temp files ".{target}.<random>.tmp{suffix}".
_TEMP_RE = re.compile(r"^\.ep_\d{6,}\.safetensors\..*\.tmp.*$")
_MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype codes <-> numpy dtypes (BF16 has no numpy dtype and is not used here).
_ST_TO_NP: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
}
_NP_TO_ST = {v.str: k for k, v in _ST_TO_NP.items()}
_RESERVED_INFO = ("dreamlab_format", "env_id", "index", "num_steps")

Rows = Literal["per_obs", "per_step"]


class StoreError(Exception):
    """A store or episode file is missing, corrupt, or does not match what was expected."""


@dataclass(frozen=True)
class ArraySpec:
    """Schema of one named array of an episode."""

    dtype: str
    """numpy dtype name: uint8, float16, float32, int64, bool, ..."""
    shape: tuple[int, ...]
    """shape of one row, e.g. (64, 64, 3) for obs, (1,) for a Box(1) action, () for reward"""
    rows: Rows
    """per_obs: T+1 rows (one per observation); per_step: T rows (one per action)"""

    def __post_init__(self) -> None:
        if self.rows not in ("per_obs", "per_step"):
            raise ValueError(f"ArraySpec.rows must be 'per_obs' or 'per_step', got {self.rows!r}")
        dt = np.dtype(self.dtype)
        if dt.str not in _NP_TO_ST:
            raise ValueError(f"ArraySpec.dtype {self.dtype!r} has no safetensors equivalent")
        object.__setattr__(self, "dtype", dt.name)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def np_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of this array."""
        return np.dtype(self.dtype)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.np_dtype.itemsize

    def num_rows(self, num_steps: int) -> int:
        """Rows this array has in an episode of ``num_steps`` steps."""
        return num_steps + 1 if self.rows == "per_obs" else num_steps

    def to_json(self) -> dict[str, Any]:
        """JSON form stored in ``store.json``."""
        return {"dtype": self.dtype, "shape": list(self.shape), "rows": self.rows}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> ArraySpec:
        """Parse the JSON form; ``where`` names the file and field in the error."""
        try:
            return cls(dtype=obj["dtype"], shape=tuple(obj["shape"]), rows=obj["rows"])
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(
                f"{where}: expected {{dtype, shape, rows}} for an array schema, got {obj!r} ({e})"
            ) from None


def describe_space(space: Any) -> dict[str, Any]:
    """JSON description of a Gymnasium ``Box`` or ``Discrete`` action space.

    Returns:
        ``{"type": "Box", "shape": [...], "low": [...], "high": [...], "dtype": ...}`` or
        ``{"type": "Discrete", "n": n, "start": start}``.
    """
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "low": np.asarray(space.low, dtype=np.float64).ravel().tolist(),
            "high": np.asarray(space.high, dtype=np.float64).ravel().tolist(),
            "dtype": np.dtype(space.dtype).name,
        }
    raise StoreError(
        f"action space {space!r} is not supported by the episode store (expected Box or Discrete)"
    )


def space_from_description(desc: Mapping[str, Any]) -> Any:
    """Rebuild the Gymnasium space described by :func:`describe_space`."""
    from gymnasium import spaces

    if desc.get("type") == "Discrete":
        return spaces.Discrete(int(desc["n"]), start=int(desc.get("start", 0)))
    if desc.get("type") == "Box":
        shape = tuple(desc["shape"])
        dtype = np.dtype(desc.get("dtype", "float32"))
        # JSON floats are float64; casting to the space dtype first keeps gymnasium from warning.
        low = np.asarray(desc["low"], dtype=dtype).reshape(shape)
        high = np.asarray(desc["high"], dtype=dtype).reshape(shape)
        return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    raise StoreError(f"unknown action space description {dict(desc)!r} (expected Box or Discrete)")


def action_spec(action_space: Mapping[str, Any]) -> ArraySpec:
    """Schema of the ``action`` array for a described action space (float32 Box, int64 Discrete)."""
    if action_space.get("type") == "Discrete":
        return ArraySpec("int64", (), "per_step")
    if action_space.get("type") == "Box":
        return ArraySpec("float32", tuple(action_space["shape"]), "per_step")
    raise StoreError(f"unknown action space description {dict(action_space)!r}")


def transition_schema(action_space: Mapping[str, Any]) -> dict[str, ArraySpec]:
    """The per-step arrays every store holds: action, reward, terminated, truncated."""
    return {
        "action": action_spec(action_space),
        "reward": ArraySpec("float32", (), "per_step"),
        "terminated": ArraySpec("bool", (), "per_step"),
        "truncated": ArraySpec("bool", (), "per_step"),
    }


def observation_schema(
    obs_shape: tuple[int, ...], action_space: Mapping[str, Any]
) -> dict[str, ArraySpec]:
    """Schema of an observation store: ``obs`` uint8 (T+1, H, W, 3) plus the transitions."""
    return {
        "obs": ArraySpec("uint8", tuple(obs_shape), "per_obs"),
        **transition_schema(action_space),
    }


def latent_schema(
    latent_dim: int, action_space: Mapping[str, Any], dtype: str = "float32"
) -> dict[str, ArraySpec]:
    """Schema of a latent store: ``mu``, ``logvar`` (T+1, Z) plus the transitions."""
    return {
        "mu": ArraySpec(dtype, (latent_dim,), "per_obs"),
        "logvar": ArraySpec(dtype, (latent_dim,), "per_obs"),
        **transition_schema(action_space),
    }


@dataclass
class StoreMeta:
    """Everything ``store.json`` records about a store."""

    env_id: str
    """Gymnasium id (or preset name) the episodes come from"""
    schema: dict[str, ArraySpec]
    """named arrays of every episode"""
    action_space: dict[str, Any]
    """description of the action space (see describe_space)"""
    kind: str = "observations"
    """what the episodes hold: 'observations' (frames) or a derived kind such as 'latents'"""
    preset: dict[str, Any] | None = None
    """the env preset (dataclasses.asdict of EnvPreset) used to make the env"""
    extra: dict[str, Any] = field(default_factory=dict)
    """free-form JSON metadata (collection seed and policy, source checkpoint of latents, ...)"""
    format_version: int = FORMAT_VERSION
    """version of the store layout"""

    @classmethod
    def for_env(
        cls,
        env_id: str,
        obs_shape: tuple[int, ...],
        action_space: Any,
        *,
        preset: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> StoreMeta:
        """Metadata of an observation store for frames of ``obs_shape`` and a Gymnasium space."""
        desc = action_space if isinstance(action_space, Mapping) else describe_space(action_space)
        return cls(
            env_id=env_id,
            schema=observation_schema(obs_shape, desc),
            action_space=dict(desc),
            preset=preset,
            extra=dict(extra or {}),
        )

    @property
    def obs_shape(self) -> tuple[int, ...] | None:
        """Row shape of ``obs`` (None for stores without frames)."""
        spec = self.schema.get("obs")
        return spec.shape if spec is not None else None

    def to_json(self) -> dict[str, Any]:
        """JSON form written to ``store.json``."""
        obs = self.schema.get("obs")
        return {
            "format_version": self.format_version,
            "kind": self.kind,
            "env_id": self.env_id,
            "obs_shape": list(obs.shape) if obs is not None else None,
            "obs_dtype": obs.dtype if obs is not None else None,
            "action_space": self.action_space,
            "schema": {name: spec.to_json() for name, spec in self.schema.items()},
            "preset": self.preset,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> StoreMeta:
        """Parse ``store.json`` content; errors name ``where`` and the bad field."""
        if not isinstance(obj, dict):
            raise StoreError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        for key in ("format_version", "env_id", "schema", "action_space"):
            if key not in obj:
                raise StoreError(f"{where}: missing field {key!r}")
        if obj["format_version"] != FORMAT_VERSION:
            raise StoreError(
                f"{where}: format_version is {obj['format_version']!r}, this dreamlab reads "
                f"{FORMAT_VERSION}"
            )
        if not isinstance(obj["schema"], dict) or not obj["schema"]:
            raise StoreError(f"{where}: field 'schema' must be a non-empty object")
        schema = {
            name: ArraySpec.from_json(spec, f"{where}: schema.{name}")
            for name, spec in obj["schema"].items()
        }
        return cls(
            env_id=str(obj["env_id"]),
            schema=schema,
            action_space=dict(obj["action_space"]),
            kind=str(obj.get("kind", "observations")),
            preset=obj.get("preset"),
            extra=dict(obj.get("extra") or {}),
            format_version=int(obj["format_version"]),
        )

    def mismatch(self, other: StoreMeta) -> str | None:
        """Name the first field where ``other`` cannot share a store with ``self``, else None."""
        if self.env_id != other.env_id:
            return f"env_id: store has {self.env_id!r}, got {other.env_id!r}"
        if self.kind != other.kind:
            return f"kind: store has {self.kind!r}, got {other.kind!r}"
        if self.schema.keys() != other.schema.keys():
            return f"schema: store has arrays {sorted(self.schema)}, got {sorted(other.schema)}"
        for name, spec in self.schema.items():
            if spec != other.schema[name]:
                return (
                    f"schema.{name}: store has {spec.to_json()}, got {other.schema[name].to_json()}"
                )
        if _jsonable(self.action_space) != _jsonable(other.action_space):
            return f"action_space: store has {self.action_space}, got {other.action_space}"
        return None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


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
            dtype = _ST_TO_NP[desc["dtype"]]
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
    num_steps = _check_rows(
        {name: (e.dtype, e.shape) for name, e in entries.items()}, schema, str(path)
    )
    try:
        index = int(info["index"])
    except (KeyError, ValueError):
        m = _EPISODE_RE.match(path.name)
        index = int(m.group(1)) if m else -1
    return EpisodeHeader(path, index, num_steps, entries, dict(info), file_size)


def _check_rows(
    arrays: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]],
    schema: Mapping[str, ArraySpec],
    where: str,
) -> int:
    """Check dtypes, row shapes and row counts; return the episode length T."""
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


class EpisodeStore:
    """A directory of episodes sharing one schema; safe to append to from several processes.

    Readers get memory-mapped, read-only arrays (:meth:`episode`) or copies of chosen rows read with
    ``pread`` (:meth:`reader`); nothing but the small parsed headers is
    cached, so iterating a store far larger than RAM keeps the process's own memory flat.
    """

    def __init__(self, path: Path, meta: StoreMeta) -> None:
        """Use :meth:`create`, :meth:`open` or :meth:`open_or_create` instead."""
        self.path = path
        self.meta = meta
        self._headers: dict[int, EpisodeHeader] = {}
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
        _clean_stale_temps(root / EPISODES_DIR)
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
                m = _EPISODE_RE.match(entry.name)
                if m:
                    found.append(int(m.group(1)))
        found.sort()
        self._indices = found
        present = set(found)
        self._headers = {i: h for i, h in self._headers.items() if i in present}

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
        num_steps = _check_rows(
            {n: (a.dtype, a.shape) for n, a in prepared.items()}, self.meta.schema, where
        )
        if index is None:
            self.refresh()
            index = self._indices[-1] + 1 if self._indices else 0
        path = self.episode_path(index)
        if path.exists():
            raise StoreError(f"{path}: episode {index} already exists in the store")
        meta = {k: str(v) for k, v in (info or {}).items() if k not in _RESERVED_INFO}
        meta.update(
            dreamlab_format=str(FORMAT_VERSION),
            env_id=self.meta.env_id,
            index=str(index),
            num_steps=str(num_steps),
        )
        with atomic_path(path) as tmp:
            save_file(prepared, str(tmp), metadata=meta)
        if index not in self._indices:
            self._indices.append(index)
            self._indices.sort()
        self._headers.pop(index, None)
        return path

    # -- reading --------------------------------------------------------------------------------

    def _spec(self, key: str) -> ArraySpec:
        spec = self.meta.schema.get(key)
        if spec is None:
            raise StoreError(
                f"{self.path}: no array {key!r} in the schema ({sorted(self.meta.schema)})"
            )
        return spec

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """All arrays of episode ``index``, memory-mapped and read-only (no copy, no cache)."""
        h = self.header(index)
        try:
            with open(h.path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise StoreError(f"{h.path}: cannot map episode file ({e})") from None
        out = {}
        for name, entry in h.entries.items():
            count = entry.nbytes // entry.dtype.itemsize
            arr = np.frombuffer(mm, dtype=entry.dtype, count=count, offset=entry.offset)
            out[name] = arr.reshape(entry.shape)
        return out

    def info(self, index: int) -> dict[str, str]:
        """String metadata stored with episode ``index``."""
        return dict(self.header(index).info)

    def reader(self, index: int) -> EpisodeReader:
        """Open episode ``index`` for row reads; use as ``with store.reader(i) as r: ...``."""
        return EpisodeReader(self.header(index))

    def validate(self) -> None:
        """Read every episode file completely and check it.

        Checks the header against the schema and file size, the episode index and env id in the
        header, that bool arrays hold only 0/1 and float arrays are finite.

        Raises:
            StoreError: naming the first bad file.
        """
        self.refresh()
        self._headers.clear()
        for index in self._indices:
            h = self.header(index)
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


class EpisodeReader:
    """Copies rows out of one open episode file with ``pread`` (no mmap, nothing cached)."""

    def __init__(self, header: EpisodeHeader) -> None:
        """Open the file of ``header`` (see :meth:`EpisodeStore.reader`)."""
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


def _clean_stale_temps(directory: Path, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
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
