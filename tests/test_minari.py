"""Minari export/import: store -> Minari -> store is lossless; foreign datasets are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

from dreamlab.data import EpisodeStore, StoreError, StoreMeta, latent_schema

minari = pytest.importorskip("minari")
pytest.importorskip("h5py")  # Minari's default (hdf5) backend

from dreamlab.data.minari_io import export_minari, import_minari  # noqa: E402

OBS = (8, 8, 3)


@pytest.fixture(autouse=True)
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every dataset of these tests out of ~/.minari."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def episode(num_steps: int, seed: int, discrete: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ended = np.zeros(num_steps, dtype=bool)
    ended[-1] = True
    return {
        "obs": rng.integers(0, 256, (num_steps + 1, *OBS), dtype=np.uint8),
        "action": rng.integers(0, 3, num_steps)
        if discrete
        else rng.uniform(-1, 1, (num_steps, 1)).astype(np.float32),
        "reward": rng.normal(size=num_steps).astype(np.float32),
        "terminated": ended if seed % 2 else np.zeros(num_steps, dtype=bool),
        "truncated": np.zeros(num_steps, dtype=bool) if seed % 2 else ended,
    }


def make_store(path: Path, discrete: bool, indices: list[int]) -> EpisodeStore:
    space = spaces.Discrete(3) if discrete else spaces.Box(-1, 1, (1,), np.float32)
    meta = StoreMeta.for_env(
        "dreamlab/Catch-v0",
        OBS,
        space,
        preset={"name": "catch", "env_kwargs": {"num_balls": 2}},
        extra={"collect": {"seed": 0, "policy": "random"}},
    )
    store = EpisodeStore.create(path, meta)
    for i in indices:
        store.append(episode(4 + i, seed=i, discrete=discrete), index=i, info={"seed": str(i)})
    return store


def assert_same_store(a: EpisodeStore, b: EpisodeStore) -> None:
    assert a.indices == b.indices
    assert a.meta == b.meta
    for i in a.indices:
        left, right = a.episode(i), b.episode(i)
        assert left.keys() == right.keys()
        for k in left:
            assert left[k].dtype == right[k].dtype, k
            np.testing.assert_array_equal(left[k], right[k], err_msg=f"episode {i} {k}")
        assert {k: v for k, v in b.info(i).items() if k != "source"} == a.info(i)


@pytest.mark.parametrize("discrete", [False, True])
def test_round_trip_is_identical(tmp_path: Path, discrete: bool) -> None:
    store = make_store(tmp_path / "store", discrete, indices=[0, 2, 5])
    dataset_dir = export_minari(store, "dreamlab/catch-test-v0")
    assert dataset_dir == tmp_path / "minari" / "dreamlab" / "catch-test-v0"

    dataset = minari.load_dataset("dreamlab/catch-test-v0")  # readable by plain minari
    assert dataset.total_episodes == 3 and dataset.total_steps == 4 + 6 + 9
    np.testing.assert_array_equal(dataset[1].observations, store.episode(2)["obs"])

    back = import_minari("dreamlab/catch-test-v0", tmp_path / "back")
    assert_same_store(store, EpisodeStore.open(tmp_path / "back"))
    assert back.info(2)["source"] == "minari:dreamlab/catch-test-v0#1"


def test_export_to_explicit_root_and_import_by_path(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", False, indices=[0, 1])
    dataset_dir = export_minari(store.path, "catch-path-v0", path=tmp_path / "elsewhere")
    assert dataset_dir.parent == tmp_path / "elsewhere"
    assert not (tmp_path / "minari" / "catch-path-v0").exists()
    assert_same_store(store, import_minari(dataset_dir, tmp_path / "back"))
    assert_same_store(store, import_minari(dataset_dir / "data", tmp_path / "back2"))


def test_reimport_skips_present_episodes(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", False, indices=[0, 1, 2])
    export_minari(store, "catch-resume-v0")
    partial = import_minari("catch-resume-v0", tmp_path / "back")
    partial.episode_path(1).unlink()  # as if the import had been killed before episode 1
    again = import_minari("catch-resume-v0", EpisodeStore.open(tmp_path / "back"))
    assert again.indices == [0, 1, 2]
    assert_same_store(store, again)


def test_foreign_pixel_dataset_imports(tmp_path: Path) -> None:
    buffers = [
        minari.data_collector.EpisodeBuffer(
            id=i,
            seed=100 + i,
            observations=ep["obs"],
            actions=ep["action"],
            rewards=ep["reward"].astype(np.float64).tolist(),
            terminations=ep["terminated"].tolist(),
            truncations=ep["truncated"].tolist(),
            infos={},
        )
        for i, ep in enumerate(episode(5, seed=s, discrete=True) for s in range(2))
    ]
    with pytest.warns(UserWarning):  # minari wants an env spec and a code permalink
        minari.create_dataset_from_buffers(
            "foreign/pixels-v0",
            buffers,
            observation_space=spaces.Box(0, 255, OBS, np.uint8),
            action_space=spaces.Discrete(3),
            jpeg_encoding=False,
        )
    store = import_minari("foreign/pixels-v0", tmp_path / "store")
    assert store.meta.env_id == "minari:foreign/pixels-v0"
    assert store.meta.action_space == {"type": "Discrete", "n": 3, "start": 0}
    assert store.indices == [0, 1]
    assert store.info(1)["seed"] == "101"
    ep = store.episode(1)
    want = episode(5, seed=1, discrete=True)
    np.testing.assert_array_equal(ep["obs"], want["obs"])
    np.testing.assert_array_equal(ep["action"], want["action"])
    assert ep["reward"].dtype == np.float32 and ep["action"].dtype == np.int64


def test_state_dataset_is_refused(tmp_path: Path) -> None:
    buffer = minari.data_collector.EpisodeBuffer(
        observations=np.zeros((3, 4), np.float32),
        actions=np.zeros((2,), np.int64),
        rewards=[0.0, 1.0],
        terminations=[False, True],
        truncations=[False, False],
        infos={},
    )
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers(
            "foreign/state-v0",
            [buffer],
            observation_space=spaces.Box(-1, 1, (4,), np.float32),
            action_space=spaces.Discrete(2),
        )
    with pytest.raises(StoreError, match="foreign/state-v0.*not \\(H, W, 3\\) uint8 frames"):
        import_minari("foreign/state-v0", tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_export_and_import_errors(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", False, indices=[0])
    export_minari(store, "catch-err-v0")
    with pytest.raises(StoreError, match="catch-err-v0.*exists already"):
        export_minari(store, "catch-err-v0")
    with pytest.raises(StoreError, match="not found locally"):
        import_minari("no-such-dataset-v0", tmp_path / "x")
    other = make_store(tmp_path / "discrete", True, indices=[0])
    with pytest.raises(StoreError, match="incompatible store.*schema.action"):
        import_minari("catch-err-v0", other)
    desc = {"type": "Discrete", "n": 3, "start": 0}
    latents = EpisodeStore.create(
        tmp_path / "latents",
        StoreMeta("x", latent_schema(4, desc), desc, kind="latents"),
    )
    with pytest.raises(StoreError, match="only observation stores"):
        export_minari(latents, "latents-v0")
    empty = EpisodeStore.create(tmp_path / "empty", StoreMeta.for_env("x", OBS, desc))
    with pytest.raises(StoreError, match="no episodes to export"):
        export_minari(empty, "empty-v0")
    assert not (tmp_path / "minari" / "empty-v0").exists()


def test_failed_export_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path / "store", False, indices=[0, 1, 2])
    read = store.episode

    def failing(index: int) -> dict[str, np.ndarray]:
        if index == 2:
            raise OSError("disk vanished")
        return read(index)

    monkeypatch.setattr(store, "episode", failing)
    with pytest.raises(OSError, match="disk vanished"):
        export_minari(store, "half-v0")
    assert not (tmp_path / "minari" / "half-v0").exists()
    monkeypatch.undo()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    export_minari(store, "half-v0")  # the id is free again
