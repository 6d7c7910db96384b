"""Episode store throughput: episode writes, random frame reads, epoch iteration, sequence windows.

Generates a synthetic store of 64x64x3 frames, then reports the median over ``--repeats`` runs of
each measurement. Reads hit the page cache (the store was just written); a store larger than RAM
is bounded by the disk instead.

    .venv/bin/python benchmarks/bench_store.py --frames 50000 --repeats 5
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tyro

from dreamlab.data import EpisodeStore, FrameSampler, SequenceSampler, StoreMeta
from dreamlab.io import atomic_write_json


@dataclass
class BenchConfig:
    """Episode store benchmark settings."""

    frames: int = 50_000
    """frames in the generated store (64x64x3 uint8, 12 KiB each)"""
    episode_len: int = 500
    """steps per generated episode"""
    frame_size: int = 64
    """side of the square frames"""
    batch_size: int = 256
    """frames per random-frame batch"""
    seq_len: int = 32
    """steps per sequence window"""
    seq_batch_size: int = 16
    """windows per sequence batch"""
    batches: int = 100
    """batches per timed run"""
    repeats: int = 5
    """timed runs per measurement (the median is reported)"""
    dir: Path | None = None
    """where to build the store (default: a temp dir, removed afterwards)"""
    out: Path | None = None
    """also write the results as JSON here"""


def _median_rate(run: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
    """Median of ``items / second`` over ``repeats`` runs of ``run`` (which returns its items)."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        items = run()
        rates.append(items / (time.perf_counter() - t0))
    return statistics.median(rates), rates


def main(cfg: BenchConfig) -> dict[str, float]:
    """Run the benchmark and return the medians."""
    root = Path(tempfile.mkdtemp(prefix="bench_store_")) if cfg.dir is None else cfg.dir
    try:
        shape = (cfg.frame_size, cfg.frame_size, 3)
        action_space = {
            "type": "Box",
            "shape": [1],
            "low": [-1.0],
            "high": [1.0],
            "dtype": "float32",
        }
        store = EpisodeStore.create(
            root / "store", StoreMeta.for_env("bench/Env-v0", shape, action_space)
        )
        rng = np.random.default_rng(0)
        num_episodes = max(1, cfg.frames // (cfg.episode_len + 1))
        steps = cfg.episode_len
        episode = {
            "obs": rng.integers(0, 256, (steps + 1, *shape), dtype=np.uint8),  # (T+1, H, W, 3)
            "action": rng.uniform(-1, 1, (steps, 1)).astype(np.float32),
            "reward": rng.normal(size=steps).astype(np.float32),
            "terminated": np.zeros(steps, dtype=bool),
            "truncated": np.zeros(steps, dtype=bool),
        }
        t0 = time.perf_counter()
        for _ in range(num_episodes):
            store.append(episode)
        write_s = time.perf_counter() - t0
        results: dict[str, float] = {
            "store_frames": store.num_frames,
            "store_mb": store.disk_bytes() / 1e6,
            "write_frames_per_s": store.num_frames / write_s,
            "write_mb_per_s": store.disk_bytes() / 1e6 / write_s,
        }

        frames = FrameSampler(store, cfg.batch_size, seed=0)
        frames.sample()  # warm the page cache of headers

        def random_batches() -> int:
            return sum(len(frames.sample()) for _ in range(cfg.batches))

        def one_epoch() -> int:
            return sum(len(b) for b in frames)

        sequences = SequenceSampler(store, cfg.seq_len, cfg.seq_batch_size, seed=0)

        def sequence_batches() -> int:
            return sum(len(sequences.sample()["obs"]) for _ in range(cfg.batches))

        results["random_frames_per_s"], _ = _median_rate(random_batches, cfg.repeats)
        results["epoch_frames_per_s"], _ = _median_rate(one_epoch, max(1, cfg.repeats // 2))
        windows, _ = _median_rate(sequence_batches, cfg.repeats)
        results["sequence_windows_per_s"] = windows
        results["sequence_frames_per_s"] = windows * (cfg.seq_len + 1)
        return results
    finally:
        if cfg.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    config = tyro.cli(BenchConfig)
    numbers = main(config)
    for name, value in numbers.items():
        print(f"{name:>24s}: {value:,.0f}")
    if config.out is not None:
        atomic_write_json(
            config.out, {"config": asdict(config) | {"dir": None, "out": None}, **numbers}
        )
