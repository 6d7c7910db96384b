"""Frame and sequence samplers: coverage, correctness, determinism, bounded memory."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dreamlab.data import EpisodeStore, FrameSampler, SequenceSampler, StoreError, StoreMeta

OBS = (4, 4, 3)
ACTION = {"type": "Box", "shape": [1], "low": [-1.0], "high": [1.0], "dtype": "float32"}


def labelled_episode(ep: int, num_steps: int, obs_shape: tuple[int, ...] = OBS) -> dict:
    """Frames and actions carry their (episode, row) so a sampled row can be traced back."""
    obs = np.zeros((num_steps + 1, *obs_shape), dtype=np.uint8)
    obs[:, 0, 0, 0] = ep
    obs[:, 0, 0, 1] = np.arange(num_steps + 1)
    steps = np.arange(num_steps)
    return {
        "obs": obs,
        "action": (ep * 1000 + steps).astype(np.float32)[:, None],
        "reward": (ep * 1000 + steps).astype(np.float32),
        "terminated": steps == num_steps - 1,
        "truncated": np.zeros(num_steps, dtype=bool),
    }


def make_store(path: Path, lengths: list[int], obs_shape: tuple[int, ...] = OBS) -> EpisodeStore:
    store = EpisodeStore.create(path, StoreMeta.for_env("test/Env-v0", obs_shape, ACTION))
    for ep, n in enumerate(lengths):
        store.append(labelled_episode(ep, n, obs_shape))
    return store


def frame_ids(batch: np.ndarray) -> list[tuple[int, int]]:
    return [(int(f[0, 0, 0]), int(f[0, 0, 1])) for f in batch]


@pytest.fixture
def store(tmp_path: Path) -> EpisodeStore:
    return make_store(tmp_path / "data", [10, 3, 25, 7, 1])


def test_epoch_covers_every_frame_once(store: EpisodeStore) -> None:
    sampler = FrameSampler(store, batch_size=8, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-store.num_frames // 8)
    assert all(b.shape == (8, *OBS) and b.dtype == np.uint8 for b in batches[:-1])
    assert batches[-1].shape[0] == store.num_frames - 8 * (len(batches) - 1)
    seen = Counter(fid for b in batches for fid in frame_ids(b))
    want = {(ep, t) for ep, n in enumerate([10, 3, 25, 7, 1]) for t in range(n + 1)}
    assert set(seen) == want and max(seen.values()) == 1
    dropped = FrameSampler(store, batch_size=8, seed=0, drop_last=True)
    assert all(b.shape[0] == 8 for b in dropped)


def test_epochs_are_shuffled_and_seeded(store: EpisodeStore) -> None:
    first = frame_ids(next(iter(FrameSampler(store, 16, seed=1))))
    assert len({ep for ep, _ in first}) >= 3  # a batch mixes episodes
    assert first == frame_ids(next(iter(FrameSampler(store, 16, seed=1))))
    assert first != frame_ids(next(iter(FrameSampler(store, 16, seed=2))))
    sampler = FrameSampler(store, 16, seed=1)
    assert frame_ids(next(iter(sampler))) != frame_ids(next(iter(sampler)))  # new epoch


def test_random_frames_match_store(store: EpisodeStore) -> None:
    sampler = FrameSampler(store, 32, seed=3)
    batch = sampler.sample()
    assert batch.shape == (32, *OBS)
    for frame, (ep, t) in zip(batch, frame_ids(batch), strict=True):
        np.testing.assert_array_equal(frame, store.episode(ep)["obs"][t])
    assert sampler.sample(5).shape == (5, *OBS)


def test_frame_sampler_other_key(store: EpisodeStore) -> None:
    rewards = np.concatenate(list(FrameSampler(store, 7, seed=0, key="reward")))
    assert sorted(rewards.tolist()) == sorted(
        float(ep * 1000 + t) for ep, n in enumerate([10, 3, 25, 7, 1]) for t in range(n)
    )
    with pytest.raises(StoreError, match="no array 'pixels'"):
        FrameSampler(store, 4, key="pixels")


def test_sequence_windows_are_aligned(store: EpisodeStore) -> None:
    sampler = SequenceSampler(store, seq_len=5, batch_size=64, seed=0)
    assert sampler.num_skipped == 2  # episodes of 3 and 1 steps
    batch = sampler.sample()
    assert batch["obs"].shape == (64, 6, *OBS)
    assert batch["action"].shape == (64, 5, 1)
    assert batch["reward"].shape == batch["terminated"].shape == (64, 5)
    for b in range(64):
        ep = int(batch["obs"][b, 0, 0, 0, 0])
        start = int(batch["obs"][b, 0, 0, 0, 1])
        assert (batch["obs"][b, :, 0, 0, 0] == ep).all()
        np.testing.assert_array_equal(batch["obs"][b, :, 0, 0, 1], np.arange(start, start + 6))
        np.testing.assert_array_equal(batch["reward"][b], ep * 1000 + np.arange(start, start + 5))
        np.testing.assert_array_equal(batch["action"][b, :, 0], batch["reward"][b])


def test_sequence_windows_are_uniform_over_starts(store: EpisodeStore) -> None:
    sampler = SequenceSampler(store, seq_len=5, batch_size=512, seed=0, keys=["reward"])
    starts = Counter(
        (int(r[0]) // 1000, int(r[0]) % 1000) for _ in range(8) for r in sampler.sample()["reward"]
    )
    valid = {(ep, s) for ep, n in enumerate([10, 3, 25, 7, 1]) if n >= 5 for s in range(n - 4)}
    assert set(starts) == valid
    # 4096 draws over 30 starts: about 137 each; any start under 60 means a biased sampler
    assert min(starts.values()) > 60


def test_cover_ends_sees_the_terminal_step_often(tmp_path: Path) -> None:
    store = make_store(tmp_path / "long", [100, 100])
    seq_len = 20

    def terminal_rate(cover_ends: bool) -> float:
        sampler = SequenceSampler(
            store,
            seq_len,
            batch_size=2000,
            seed=0,
            keys=["terminated", "reward"],
            cover_ends=cover_ends,
        )
        batch = sampler.sample()
        # windows stay aligned: consecutive steps of one episode
        np.testing.assert_array_equal(np.diff(batch["reward"], axis=1), 1)
        return float(batch["terminated"].any(axis=1).mean())

    # Uniform starts: 1 of 81 windows per episode holds the last step. Step coverage: every
    # step is the target of 1/200 draws; the last step is in the window when the target lies
    # in the last 20 steps and the window is clipped to the end, about half of those draws.
    assert terminal_rate(False) < 0.03
    assert terminal_rate(True) > 0.07


def test_pad_short_keeps_short_episodes_whole_and_masked(store: EpisodeStore) -> None:
    """Episodes [10, 3, 25, 7, 1] with seq_len 8: the 3-, 7- and 1-step episodes are windows
    from their first step, zero-padded, their padding masked; rows never cross an episode."""
    sampler = SequenceSampler(
        store, 8, 600, seed=0, keys=["obs", "reward", "terminated"], cover_ends=True, pad_short=True
    )
    batch = sampler.sample()
    assert batch["mask"].shape == (600, 8) and batch["mask"].dtype == np.float32
    seen = set()
    for b in range(600):
        n = int(batch["mask"][b].sum())
        assert np.all(batch["mask"][b, :n] == 1) and np.all(batch["mask"][b, n:] == 0)
        ep = int(batch["reward"][b, 0]) // 1000
        start = int(batch["reward"][b, 0]) % 1000
        length = [10, 3, 25, 7, 1][ep]
        assert n == min(length, 8)
        if length < 8:
            assert start == 0 and bool(batch["terminated"][b, n - 1])  # the whole episode
            assert not batch["terminated"][b, n:].any() and np.all(batch["reward"][b, n:] == 0)
        np.testing.assert_array_equal(batch["reward"][b, :n], ep * 1000 + start + np.arange(n))
        np.testing.assert_array_equal(batch["obs"][b, : n + 1, 0, 0, 0], ep)
        np.testing.assert_array_equal(batch["obs"][b, n + 1 :], 0)
        seen.add(ep)
    assert seen == {0, 1, 2, 3, 4}  # no episode is dropped
    with pytest.raises(StoreError, match="no episode has seq_len=26"):
        SequenceSampler(store, seq_len=26, batch_size=4)  # without pad_short they are


def test_sequence_sampler_seeded_and_keys(store: EpisodeStore) -> None:
    a = SequenceSampler(store, 4, 8, seed=5, keys=["obs", "action"]).sample()
    b = SequenceSampler(store, 4, 8, seed=5, keys=["obs", "action"]).sample()
    assert set(a) == {"obs", "action"}
    np.testing.assert_array_equal(a["obs"], b["obs"])
    sampler = SequenceSampler(store, 4, 8, seed=5)
    assert len(list(sampler)) == len(sampler) == max(1, (10 + 25 + 7) // 32)


def test_sequence_sampler_errors(store: EpisodeStore) -> None:
    with pytest.raises(StoreError, match="no episode has seq_len=26 steps \\(longest has 25"):
        SequenceSampler(store, seq_len=26, batch_size=4)
    with pytest.raises(StoreError, match="no arrays \\['mu'\\]"):
        SequenceSampler(store, seq_len=2, batch_size=4, keys=["mu"])


def _rss_anon_bytes() -> int:
    """Anonymous resident memory: the process's own heap, not page cache of mapped files."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    import psutil

    return int(psutil.Process().memory_full_info().uss)


def test_iterating_a_large_store_keeps_memory_bounded(tmp_path: Path) -> None:
    frame = (64, 64, 3)
    store = EpisodeStore.create(tmp_path / "big", StoreMeta.for_env("test/Env-v0", frame, ACTION))
    num_steps = 999
    for ep in range(24):  # 24,000 frames of 64x64x3: 295 MB on disk
        arrays = labelled_episode(ep, num_steps, obs_shape=(1, 1, 3))
        arrays["obs"] = np.broadcast_to(arrays["obs"], (num_steps + 1, *frame))
        store.append(arrays)
        del arrays
    store_bytes = store.disk_bytes()
    assert store_bytes > 280e6

    frames = FrameSampler(store, batch_size=256, seed=0)
    sequences = SequenceSampler(store, seq_len=32, batch_size=16, seed=0)
    next(iter(frames))  # warm up allocator and imports before the baseline
    baseline = peak = _rss_anon_bytes()
    total = 0
    for batch in frames:
        total += len(batch)
        peak = max(peak, _rss_anon_bytes())
    for _ in range(50):
        sequences.sample()
        peak = max(peak, _rss_anon_bytes())
    for ep in store.indices:  # memory-mapped episodes count as page cache, not heap
        total_pixels = int(store.episode(ep)["obs"][::50].sum())
        assert total_pixels >= 0
        peak = max(peak, _rss_anon_bytes())
    shutil.rmtree(store.path)  # pytest keeps tmp dirs of recent runs; do not keep 295 MB
    assert total == store.num_frames
    growth = peak - baseline
    assert growth < 40e6, (
        f"heap grew by {growth / 1e6:.0f} MB iterating a {store_bytes / 1e6:.0f} MB store"
    )
