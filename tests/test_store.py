"""The episode store: contract, schema validation, corruption, crash leftovers, interop."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces
from safetensors import safe_open

from dreamlab.data import (
    ArraySpec,
    EpisodeStore,
    StoreError,
    StoreMeta,
    latent_schema,
    space_from_description,
)

OBS = (16, 16, 3)


def make_episode(num_steps: int, seed: int = 0, discrete: bool = False) -> dict[str, np.ndarray]:
    """A synthetic episode obeying the contract."""
    rng = np.random.default_rng(seed)
    terminated = np.zeros(num_steps, dtype=bool)
    terminated[-1] = True
    action = (
        rng.integers(0, 3, num_steps)
        if discrete
        else rng.uniform(-1, 1, (num_steps, 1)).astype(np.float32)
    )
    return {
        "obs": rng.integers(0, 256, (num_steps + 1, *OBS), dtype=np.uint8),
        "action": action,
        "reward": rng.normal(size=num_steps).astype(np.float32),
        "terminated": terminated,
        "truncated": np.zeros(num_steps, dtype=bool),
    }


def box_meta(env_id: str = "dreamlab/Catch-v0", obs_shape: tuple[int, ...] = OBS) -> StoreMeta:
    return StoreMeta.for_env(env_id, obs_shape, spaces.Box(-1, 1, (1,), np.float32))


@pytest.fixture
def store(tmp_path: Path) -> EpisodeStore:
    s = EpisodeStore.create(tmp_path / "data", box_meta())
    for i, n in enumerate([5, 8, 3]):
        s.append(make_episode(n, seed=i), info={"seed": str(i)})
    return s


def test_round_trip_and_counts(store: EpisodeStore) -> None:
    reopened = EpisodeStore.open(store.path, env_id="dreamlab/Catch-v0", obs_shape=OBS)
    assert reopened.indices == [0, 1, 2]
    assert len(reopened) == 3
    assert reopened.lengths.tolist() == [5, 8, 3]
    assert reopened.num_steps == 16 and reopened.num_frames == 19
    for i, n in enumerate([5, 8, 3]):
        ep = reopened.episode(i)
        want = make_episode(n, seed=i)
        assert set(ep) == set(want)
        for k in want:
            np.testing.assert_array_equal(ep[k], want[k])
            assert ep[k].dtype == want[k].dtype
        assert not ep["obs"].flags.writeable
        assert reopened.info(i)["seed"] == str(i)
    reopened.validate()


def test_store_json_describes_store(store: EpisodeStore) -> None:
    meta = json.loads((store.path / "store.json").read_text())
    assert meta["env_id"] == "dreamlab/Catch-v0"
    assert meta["obs_shape"] == list(OBS) and meta["obs_dtype"] == "uint8"
    assert meta["action_space"]["type"] == "Box" and meta["action_space"]["shape"] == [1]
    assert meta["schema"]["obs"] == {"dtype": "uint8", "shape": list(OBS), "rows": "per_obs"}
    assert meta["schema"]["reward"]["rows"] == "per_step"
    space = space_from_description(meta["action_space"])
    assert space == spaces.Box(-1, 1, (1,), np.float32)


def test_files_are_standard_safetensors(store: EpisodeStore) -> None:
    with safe_open(str(store.episode_path(1)), framework="numpy") as f:
        assert f.metadata()["index"] == "1"
        assert f.metadata()["env_id"] == "dreamlab/Catch-v0"
        np.testing.assert_array_equal(f.get_tensor("obs"), make_episode(8, seed=1)["obs"])


def test_reader_rows_and_spans(store: EpisodeStore) -> None:
    ep = make_episode(8, seed=1)
    with store.reader(1) as r:
        np.testing.assert_array_equal(r.read_span("obs", 2, 6), ep["obs"][2:6])
        np.testing.assert_array_equal(
            r.read_rows("reward", np.array([7, 0, 7])), ep["reward"][[7, 0, 7]]
        )
        with pytest.raises(StoreError, match="out of range"):
            r.read_span("obs", 0, 10)


def test_append_validates_schema(store: EpisodeStore) -> None:
    bad = make_episode(4)
    bad["obs"] = bad["obs"][:, :8]
    with pytest.raises(StoreError, match="'obs' has shape"):
        store.append(bad)
    bad = make_episode(4)
    bad["reward"] = bad["reward"][:3]
    with pytest.raises(StoreError, match="row counts disagree.*'reward': 3 \\(T\\)"):
        store.append(bad)
    bad = make_episode(4)
    bad["obs"] = bad["obs"].astype(np.float32)
    with pytest.raises(StoreError, match="'obs' has dtype float32, expected uint8"):
        store.append(bad)
    bad = make_episode(4)
    del bad["truncated"]
    with pytest.raises(StoreError, match="missing \\['truncated'\\]"):
        store.append(bad)
    with pytest.raises(StoreError, match="already exists"):
        store.append(make_episode(4), index=0)
    assert len(store) == 3


def test_append_safe_casts_and_explicit_index(store: EpisodeStore) -> None:
    ep = make_episode(4)
    ep["reward"] = ep["reward"].astype(np.float64)
    path = store.append(ep, index=10)
    assert path.name == "ep_000010.safetensors"
    assert store.episode(10)["reward"].dtype == np.float32
    assert store.append(make_episode(2)).name == "ep_000011.safetensors"
    assert store.missing(12) == list(range(3, 10))


def test_incompatible_store_is_refused(store: EpisodeStore) -> None:
    with pytest.raises(StoreError, match="env_id.*CarRacing"):
        EpisodeStore.open(store.path, env_id="CarRacing-v3")
    with pytest.raises(StoreError, match="obs_shape"):
        EpisodeStore.open(store.path, obs_shape=(64, 64, 3))
    with pytest.raises(StoreError, match="incompatible store.*env_id"):
        EpisodeStore.open_or_create(store.path, box_meta("CarRacing-v3"))
    with pytest.raises(StoreError, match="incompatible store.*schema.obs"):
        EpisodeStore.open_or_create(store.path, box_meta(obs_shape=(64, 64, 3)))
    discrete = StoreMeta.for_env("dreamlab/Catch-v0", OBS, spaces.Discrete(3))
    with pytest.raises(StoreError, match="incompatible store.*schema.action"):
        EpisodeStore.open_or_create(store.path, discrete)
    assert len(EpisodeStore.open_or_create(store.path, box_meta())) == 3


def test_missing_and_corrupt_store_json(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not an episode store"):
        EpisodeStore.open(tmp_path)
    (tmp_path / "store.json").write_text("{not json")
    with pytest.raises(StoreError, match="store.json.*not valid JSON"):
        EpisodeStore.open(tmp_path)
    (tmp_path / "store.json").write_text(json.dumps({"format_version": 1, "env_id": "x"}))
    with pytest.raises(StoreError, match="store.json: missing field 'schema'"):
        EpisodeStore.open(tmp_path)


def test_truncated_episode_names_file(store: EpisodeStore) -> None:
    path = store.episode_path(1)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    reopened = EpisodeStore.open(store.path)
    with pytest.raises(StoreError, match="ep_000001.safetensors: corrupt or truncated"):
        reopened.validate()
    with pytest.raises(StoreError, match="ep_000001"):
        reopened.episode(1)


def test_garbage_header_names_file(store: EpisodeStore) -> None:
    path = store.episode_path(2)
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8:12] = b"\xff\xfe{["
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="ep_000002.safetensors: corrupt episode file"):
        EpisodeStore.open(store.path).validate()
    path.write_bytes(struct.pack("<Q", 10**12) + bytes(data[8:]))
    with pytest.raises(
        StoreError, match="ep_000002.safetensors: corrupt episode file.*header length"
    ):
        EpisodeStore.open(store.path).validate()


def test_validate_reads_data(store: EpisodeStore) -> None:
    path = store.episode_path(0)
    data = bytearray(path.read_bytes())
    with store.reader(0) as r:
        offset = r.header.entries["terminated"].offset
    data[offset] = 7  # a bool byte that is neither 0 nor 1: the header alone cannot see it
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="ep_000000.safetensors: array 'terminated'"):
        EpisodeStore.open(store.path).validate()


def test_foreign_episode_env_is_caught(store: EpisodeStore, tmp_path: Path) -> None:
    other = EpisodeStore.create(tmp_path / "other", box_meta("CarRacing-v3"))
    other.append(make_episode(3), index=7)
    os.replace(other.episode_path(7), store.episode_path(7))
    with pytest.raises(StoreError, match="ep_000007.*CarRacing-v3"):
        EpisodeStore.open(store.path).validate()


def test_temp_files_ignored_and_stale_ones_cleaned(store: EpisodeStore) -> None:
    stale = store.episodes_dir / ".ep_000003.safetensors.abc123.tmp"
    fresh = store.episodes_dir / ".ep_000004.safetensors.def456.tmp"
    stale.write_bytes(b"half an episode")
    fresh.write_bytes(b"a live writer")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    reopened = EpisodeStore.open(store.path)
    assert reopened.indices == [0, 1, 2]
    assert not stale.exists()
    assert fresh.exists()  # may belong to a worker still writing
    reopened.validate()


def test_generic_latent_schema(tmp_path: Path) -> None:
    desc = {"type": "Discrete", "n": 3, "start": 0}
    meta = StoreMeta(
        env_id="dreamlab/CatchDiscrete-v0",
        schema=latent_schema(8, desc, dtype="float16"),
        action_space=desc,
        kind="latents",
    )
    store = EpisodeStore.create(tmp_path / "latents", meta)
    ep = make_episode(6, discrete=True)
    ep.pop("obs")
    ep["mu"] = np.ones((7, 8), np.float16)
    ep["logvar"] = np.zeros((7, 8), np.float16)
    store.append(ep)
    reopened = EpisodeStore.open(tmp_path / "latents", kind="latents")
    assert reopened.meta.obs_shape is None
    assert reopened.meta.schema["mu"] == ArraySpec("float16", (8,), "per_obs")
    got = reopened.episode(0)
    assert got["mu"].shape == (7, 8) and got["action"].dtype == np.int64
    with pytest.raises(StoreError, match="kind 'latents', expected 'observations'"):
        EpisodeStore.open(tmp_path / "latents", kind="observations")
    bad = dict(ep, mu=np.ones((6, 8), np.float16))
    with pytest.raises(StoreError, match="row counts disagree.*'mu': 6 \\(T\\+1\\)"):
        store.append(bad)
