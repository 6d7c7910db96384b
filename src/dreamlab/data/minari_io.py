"""Export an episode store to a Minari dataset and import Minari datasets into a store.

Minari (Farama's offline-RL dataset format) is the exchange format: a store exported here opens
with ``minari.load_dataset`` and a Minari dataset of ``(H, W, 3) uint8`` frames becomes a store
that every dreamlab stage can train on. Frames are written raw (``jpeg_encoding=False``) so that a
round trip gives identical arrays. The default Minari backend is HDF5 (needs ``h5py``).

Minari writes its files itself, so an export is not atomic file by file; a failed export removes
the half-written dataset directory instead.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dreamlab.data.schema import StoreError, StoreMeta, describe_space, space_from_description
from dreamlab.data.store import EpisodeStore

_META_KEY = "dreamlab_store"
"""Key of the dataset metadata holding the exporting store's store.json."""


def _import_minari() -> Any:
    try:
        import minari  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError("Minari import/export needs minari: pip install 'minari>=0.5'") from None
    return minari


@contextmanager
def _datasets_root(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Point Minari at ``path`` (its datasets root) for the duration of the block."""
    if path is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(path).resolve())
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _buffer(minari: Any, episode: dict[str, np.ndarray], seed: int | None) -> Any:
    return minari.data_collector.EpisodeBuffer(
        seed=seed,
        observations=np.asarray(episode["obs"]),  # (T+1, H, W, 3)
        actions=np.asarray(episode["action"]),  # (T, ...)
        rewards=np.asarray(episode["reward"]),  # (T,)
        terminations=np.asarray(episode["terminated"]),  # (T,)
        truncations=np.asarray(episode["truncated"]),  # (T,)
        infos={},  # minari's EpisodeData repr fails on None
    )


def export_minari(
    store: EpisodeStore | str | os.PathLike[str],
    dataset_id: str,
    path: str | os.PathLike[str] | None = None,
    *,
    data_format: str = "hdf5",
    author: str | None = None,
    description: str | None = None,
) -> Path:
    """Write every episode of an observation store into a new Minari dataset.

    Episodes become Minari episodes 0..N-1 in store order (Minari ids are sequential); each one
    keeps its store index and header metadata in Minari's episode metadata, and the store's
    ``store.json`` goes into the dataset metadata, so :func:`import_minari` restores both.

    Args:
        store: an observation store (or its path).
        dataset_id: Minari id, ``(namespace/)name-v0``.
        path: Minari datasets root; None uses ``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``.
        data_format: Minari backend: ``hdf5`` (needs h5py) or ``arrow`` (needs pyarrow).
        author: recorded in the dataset metadata.
        description: recorded in the dataset metadata.

    Returns:
        The dataset directory (``ROOT/dataset_id``).

    Raises:
        StoreError: the store has no frames (e.g. a latent store) or no episodes.
    """
    minari = _import_minari()
    from gymnasium import spaces

    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store)
    obs_shape = store.meta.obs_shape
    if obs_shape is None or store.meta.schema["obs"].dtype != "uint8":
        raise StoreError(
            f"{store.path}: only observation stores (uint8 'obs' frames) export to Minari; this "
            f"store is of kind {store.meta.kind!r} with arrays {sorted(store.meta.schema)}"
        )
    indices = store.indices
    if not indices:
        raise StoreError(f"{store.path}: the store holds no episodes to export")
    observation_space = spaces.Box(0, 255, obs_shape, np.uint8)
    action_space = space_from_description(store.meta.action_space)

    with _datasets_root(path):
        from minari.storage.datasets_root_dir import (  # type: ignore[import-untyped]
            get_dataset_path,
        )

        dataset_dir = get_dataset_path(dataset_id)
        if dataset_dir.exists():
            raise StoreError(f"{dataset_dir}: Minari dataset {dataset_id!r} exists already")
        try:
            dataset = None
            episode_meta = []
            for index in indices:
                info = store.info(index)
                seed = int(info["seed"]) if info.get("seed", "").lstrip("-").isdigit() else None
                buffer = _buffer(minari, store.episode(index), seed)
                if dataset is None:
                    with warnings.catch_warnings():
                        # Minari nags about missing env_spec / permalink / author. No env spec on
                        # purpose: gym.make(id) would give the raw env, not the wrapped 64x64 one;
                        # the preset travels in the metadata instead.
                        warnings.filterwarnings("ignore", category=UserWarning, module="minari")
                        dataset = minari.create_dataset_from_buffers(
                            dataset_id,
                            [buffer],
                            observation_space=observation_space,
                            action_space=action_space,
                            algorithm_name=f"dreamlab {info.get('policy', 'unknown')} policy",
                            author=author,
                            description=description
                            or f"dreamlab episodes of {store.meta.env_id} from {store.path}",
                            data_format=data_format,
                            jpeg_encoding=False,
                        )
                else:
                    # One episode at a time: memory stays at one episode whatever the store size.
                    dataset.update_dataset_from_buffer([buffer])
                episode_meta.append({"dreamlab_index": index, "dreamlab_info": json.dumps(info)})
            assert dataset is not None
            dataset.storage.update_episode_metadata(episode_meta)
            dataset.storage.update_metadata({_META_KEY: store.meta.to_json()})
        except BaseException:
            shutil.rmtree(dataset_dir, ignore_errors=True)
            raise
    return dataset_dir


def _load_dataset(minari: Any, dataset_id_or_path: str | os.PathLike[str]) -> Any:
    """A Minari dataset from a local id or a dataset directory (``ROOT/ID`` or ``ROOT/ID/data``)."""
    candidate = Path(dataset_id_or_path)
    for data_dir in (candidate / "data", candidate):
        if (data_dir / "metadata.json").is_file():
            return minari.MinariDataset(data_dir)
    try:
        return minari.load_dataset(str(dataset_id_or_path))
    except (FileNotFoundError, ValueError) as e:
        raise StoreError(
            f"Minari dataset {str(dataset_id_or_path)!r} not found locally (give a dataset id under "
            f"MINARI_DATASETS_PATH or a dataset directory; download it with `minari download`): {e}"
        ) from None


def _meta_for(dataset: Any, source: str) -> StoreMeta:
    """Store metadata for a Minari dataset: its own ``store.json`` if dreamlab wrote it."""
    from gymnasium import spaces

    saved = dataset.storage.metadata.get(_META_KEY)
    if saved is not None:
        return StoreMeta.from_json(saved, f"{source}: metadata.{_META_KEY}")
    obs_space = dataset.observation_space
    if not (
        isinstance(obs_space, spaces.Box)
        and obs_space.dtype == np.uint8
        and len(obs_space.shape) == 3
        and obs_space.shape[2] == 3
    ):
        raise StoreError(
            f"{source}: observation space {obs_space} is not (H, W, 3) uint8 frames; dreamlab "
            f"stores hold pixel observations (record the dataset with a dreamlab env)"
        )
    action_space = describe_space(dataset.action_space)
    env_spec = dataset.env_spec
    env_id = env_spec.id if env_spec is not None else f"minari:{dataset.id}"
    return StoreMeta.for_env(
        env_id, tuple(obs_space.shape), action_space, extra={"minari": {"dataset_id": dataset.id}}
    )


def import_minari(
    dataset_id_or_path: str | os.PathLike[str],
    out_store: EpisodeStore | str | os.PathLike[str],
) -> EpisodeStore:
    """Copy the episodes of a Minari dataset of pixel observations into an episode store.

    A dataset exported by :func:`export_minari` gets back its store metadata, episode indices and
    episode metadata; any other dataset needs ``(H, W, 3) uint8`` observations and a ``Box`` or
    ``Discrete`` action space, and its episodes keep their Minari ids as indices. Episodes already
    in the store are skipped, so an interrupted import can be re-run.

    Args:
        dataset_id_or_path: a local Minari dataset id, or the dataset's directory.
        out_store: the store to fill (created if missing; must be compatible if it exists).

    Returns:
        The store.

    Raises:
        StoreError: dataset missing, frames not usable, or an incompatible store.
    """
    minari = _import_minari()
    dataset = _load_dataset(minari, dataset_id_or_path)
    source = f"Minari dataset {dataset.id!r}"
    meta = _meta_for(dataset, source)
    if isinstance(out_store, EpisodeStore):
        store = out_store
        problem = store.meta.mismatch(meta)
        if problem is not None:
            raise StoreError(f"{store.path}: incompatible store for {source} ({problem})")
    else:
        store = EpisodeStore.open_or_create(out_store, meta)
    present = set(store.indices)
    ids = [int(i) for i in dataset.episode_indices]
    extras = dataset.storage.get_episode_metadata(ids)
    for episode_id, episode_meta in zip(ids, extras, strict=True):
        index = int(episode_meta.get("dreamlab_index", episode_id))
        if index in present:
            continue
        info = json.loads(episode_meta.get("dreamlab_info", "{}"))
        if "seed" not in info and episode_meta.get("seed") is not None:
            info["seed"] = str(episode_meta["seed"])
        info.setdefault("source", f"minari:{dataset.id}#{episode_id}")
        ep = next(iter(dataset.storage.get_episodes([episode_id])))
        if not isinstance(ep["observations"], np.ndarray):
            raise StoreError(f"{source}: episode {episode_id} observations are not one array")
        arrays = {
            "obs": ep["observations"],
            "action": ep["actions"],
            "reward": ep["rewards"],
            "terminated": ep["terminations"],
            "truncated": ep["truncations"],
        }
        try:
            store.append(arrays, index=index, info=info)
        except StoreError as e:
            raise StoreError(f"{source}: episode {episode_id}: {e}") from None
    return store
