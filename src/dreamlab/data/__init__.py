"""Episodes: the store (one safetensors file per episode), samplers, collection, Minari I/O.

Modules: :mod:`~dreamlab.data.schema` (what a store holds), :mod:`~dreamlab.data.episode_file`
(one episode file), :mod:`~dreamlab.data.store` (the store), :mod:`~dreamlab.data.sampling`,
:mod:`~dreamlab.data.rollout` (the one loop that plays a policy in real envs),
:mod:`~dreamlab.data.collect`, :mod:`~dreamlab.data.minari_io`, :mod:`~dreamlab.data.action_log`,
:mod:`~dreamlab.data.frames` and :mod:`~dreamlab.data.video_io` (recorded videos in and out).

``collect``/``CollectConfig``/``CollectSummary`` and ``export_minari``/``import_minari`` are
loaded on first use, so reading a store does not import the environments or minari.
"""

from typing import Any

from dreamlab.data.episode_file import EpisodeReader
from dreamlab.data.sampling import FrameSampler, SequenceSampler
from dreamlab.data.schema import (
    ArraySpec,
    StoreError,
    StoreMeta,
    describe_space,
    latent_schema,
    observation_schema,
    space_from_description,
    transition_schema,
)
from dreamlab.data.store import EpisodeStore

_LAZY = {
    "CollectConfig": "dreamlab.data.collect",
    "CollectSummary": "dreamlab.data.collect",
    "collect": "dreamlab.data.collect",
    "export_minari": "dreamlab.data.minari_io",
    "import_minari": "dreamlab.data.minari_io",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dreamlab.data' has no attribute {name!r}")


__all__ = [
    "ArraySpec",
    "CollectConfig",
    "CollectSummary",
    "collect",
    "export_minari",
    "import_minari",
    "EpisodeReader",
    "EpisodeStore",
    "FrameSampler",
    "SequenceSampler",
    "StoreError",
    "StoreMeta",
    "describe_space",
    "latent_schema",
    "observation_schema",
    "space_from_description",
    "transition_schema",
]
