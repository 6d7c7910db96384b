"""What an episode store holds: its array schema, action-space descriptions and ``store.json``.

An episode of ``T`` steps holds per-observation arrays with ``T+1`` rows (``obs`` includes the final
observation, as Minari does) and per-step arrays with ``T`` rows (``action``, ``reward``,
``terminated``, ``truncated``). The schema is generic so that derived stores (latent sequences
``mu``/``logvar``) use the same code with other named arrays. :class:`StoreMeta` is the content
of ``STORE/store.json``; Gymnasium action spaces are recorded there as JSON
(:func:`describe_space`, :func:`space_from_description`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dreamlab.io import DreamlabError, jsonable

__all__ = [
    "FORMAT_VERSION",
    "SAFETENSORS_DTYPES",
    "ArraySpec",
    "Rows",
    "StoreError",
    "StoreMeta",
    "action_spec",
    "describe_space",
    "latent_schema",
    "observation_schema",
    "space_from_description",
    "transition_schema",
]

FORMAT_VERSION = 1
"""Version of the store layout written into ``store.json`` and every episode header."""

# safetensors dtype codes <-> numpy dtypes (BF16 has no numpy dtype and is not used here).
SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
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
"""safetensors dtype code -> numpy dtype: the dtypes an episode array may have"""
_STORABLE = {v.str for v in SAFETENSORS_DTYPES.values()}

Rows = Literal["per_obs", "per_step"]


class StoreError(DreamlabError):
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
        if dt.str not in _STORABLE:
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
        if jsonable(self.action_space) != jsonable(other.action_space):
            return f"action_space: store has {self.action_space}, got {other.action_space}"
        return None
