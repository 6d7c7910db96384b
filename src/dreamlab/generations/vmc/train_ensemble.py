"""Train an ensemble of MDN-RNNs on bootstrap resamples of the latent episodes.

Member ``i`` sees a resample of the episodes drawn with replacement (about 63% of them, some
several times) and starts from its own random initialisation; both are seeded by
``(seed, i)``. Each member is trained by the one gradient loop, :func:`dreamlab.train.fit.fit`,
into its own checkpoint directory ``OUT/<i>/`` (the usual ``config.json``,
``model.safetensors``, optimizer state, ``metrics.jsonl``) plus ``bootstrap.json`` (which
episodes it saw, how often). Members are trained one after the other: a killed run keeps every
finished member and resumes the current one from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.checkpoint import CheckpointError, has_model, load_model
from dreamlab.data.sampling import SequenceSampler
from dreamlab.data.store import EpisodeStore
from dreamlab.io import atomic_write_json, read_json
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.train.fit import TRAINER_FILE, FitResult, TrainConfig, fit

__all__ = [
    "BOOTSTRAP_FILE",
    "bootstrap_counts",
    "bootstrap_sequence_batches",
    "load_ensemble",
    "member_dirs",
    "train_ensemble",
]

BOOTSTRAP_FILE = "bootstrap.json"
MEMBER_SEED_OFFSET = 1000
"""member i is seeded with ``seed + 1000 + i`` so no member repeats the single model's seed"""

Batch = dict[str, Any]


def bootstrap_counts(num_episodes: int, seed: int, member: int) -> np.ndarray:
    """How often each of ``num_episodes`` episodes is in member ``member``'s resample.

    Returns:
        ``(num_episodes,)`` int64 counts summing to ``num_episodes``.
    """
    if num_episodes < 1:
        raise ValueError(f"bootstrap_counts: need at least one episode, got {num_episodes}")
    picks = np.random.default_rng([seed, member]).integers(0, num_episodes, num_episodes)
    return np.bincount(picks, minlength=num_episodes).astype(np.int64)


def bootstrap_sequence_batches(
    store: EpisodeStore,
    seq_len: int,
    batch_size: int,
    counts: np.ndarray,
    seed: int = 0,
    keys: tuple[str, ...] = ("mu", "logvar", "action", "reward", "terminated"),
) -> Callable[[int], Iterator[Batch]]:
    """Resumable batch source over a bootstrap resample of the store's episodes.

    Like :func:`dreamlab.train.batches.sequence_batches` with ``cover_ends=True`` (a uniformly drawn
    step, then a window containing it), except that episode ``e`` is drawn in proportion to
    ``counts[e] * length[e]``: the resample's steps are uniformly likely. Batch ``s`` is drawn
    from a generator seeded with ``(seed, s)``, so a resumed run continues the exact stream.

    Args:
        store: latent store.
        seq_len: steps per window.
        batch_size: windows per batch.
        counts: ``(len(store),)`` copies of each episode (in ``store.indices`` order).
        seed: stream seed.
        keys: arrays to read.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (len(store),):
        raise ValueError(
            f"bootstrap_sequence_batches: counts has shape {counts.shape}, the store holds "
            f"{len(store)} episodes"
        )
    sampler = SequenceSampler(store, seq_len, batch_size, seed=seed, keys=keys, cover_ends=True)
    position = {int(e): i for i, e in enumerate(store.indices)}
    eligible_counts = np.array([counts[position[int(e)]] for e in sampler.episode_indices])
    weights = eligible_counts * sampler.eligible_lengths  # (E',) steps in the resample
    if weights.sum() <= 0:
        raise ValueError(
            f"bootstrap_sequence_batches: the resample holds no episode with {seq_len} steps"
        )
    p = weights / weights.sum()

    def stream(start_step: int) -> Iterator[Batch]:
        step = start_step
        while True:
            rng = np.random.default_rng([seed, step])
            pos = rng.choice(len(p), size=batch_size, p=p)  # (B,) eligible episode
            length = sampler.eligible_lengths[pos]  # (B,)
            t = rng.integers(0, length)  # (B,) step inside the episode
            back = rng.integers(0, seq_len, size=batch_size)  # (B,) place of t in the window
            start = np.clip(t - back, 0, length - seq_len)  # (B,)
            step += 1
            yield sampler.gather(sampler.offsets[pos] + start)

    stream.steps_per_epoch = len(sampler)  # type: ignore[attr-defined]
    return stream


def _finished(member_dir: Path) -> bool:
    trainer = member_dir / TRAINER_FILE
    if not (has_model(member_dir) and trainer.exists()):
        return False
    state = read_json(trainer, "trainer state")
    return int(state.get("step", 0)) >= int(state.get("total_steps", 1))


def member_dirs(out_dir: str | Path) -> list[Path]:
    """Directories ``OUT/0``, ``OUT/1``, ... of members that finished training, in order.

    Counting stops at the first member that is missing or still unfinished (a killed run).
    """
    root = Path(out_dir)
    found = []
    i = 0
    while _finished(root / str(i)):
        found.append(root / str(i))
        i += 1
    return found


def _check_bootstrap(path: Path, record: dict[str, Any]) -> None:
    """Write the member's resample record, or check that a resumed member saw the same one."""
    if path.exists():
        saved = read_json(path, "bootstrap record")
        if saved.get("episodes") != record["episodes"] or saved.get("counts") != record["counts"]:
            raise CheckpointError(
                f"{path}: this member was trained on another resample of the episodes (the "
                "latent store changed since?); delete the ensemble directory to retrain it"
            )
        return
    atomic_write_json(path, record)


def train_ensemble(
    latents: EpisodeStore,
    config: MDNRNNConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    *,
    members: int = 5,
    seq_len: int = 32,
    seed: int = 0,
) -> list[FitResult]:
    """Train (or resume) ``members`` MDN-RNNs on bootstrap resamples into ``OUT/<i>/``.

    Args:
        latents: latent store (``mu``, ``logvar``, ``action``, ``reward``, ``terminated``).
        config: every member's architecture (the run's MDN-RNN config).
        train_cfg: the gradient loop; its ``seed`` is replaced per member, and the step count
            is resolved from the store's size as for the single model.
        out_dir: ensemble directory (the run's ``mdnrnn_ensemble/``).
        members: ensemble size M (>= 2).
        seq_len: steps per training window.
        seed: seed of the resamples and of each member's initialisation.

    Returns:
        One :class:`~dreamlab.train.fit.FitResult` per member (finished members return at
        once).
    """
    if members < 2:
        raise ValueError(f"train_ensemble: members must be >= 2, got {members}")
    if len(latents) == 0:
        raise ValueError(f"train_ensemble: {latents.path} holds no episodes")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    total = train_cfg.resolve_steps(max(1, latents.num_steps // seq_len))
    episodes = [int(e) for e in latents.indices]
    atomic_write_json(
        root / "ensemble.json",
        {
            "members": members,
            "seed": seed,
            "seq_len": seq_len,
            "steps_per_member": total,
            "mdnrnn": dataclasses.asdict(config),
            "train": dataclasses.asdict(train_cfg),
        },
    )
    results = []
    for i in range(members):
        member_seed = seed + MEMBER_SEED_OFFSET + i
        counts = bootstrap_counts(len(episodes), seed, i)
        member_dir = root / str(i)
        member_dir.mkdir(parents=True, exist_ok=True)
        _check_bootstrap(
            member_dir / BOOTSTRAP_FILE,
            {"member": i, "seed": seed, "episodes": episodes, "counts": counts.tolist()},
        )
        torch.manual_seed(member_seed)
        model = MDNRNN(config)
        batches = bootstrap_sequence_batches(
            latents, seq_len, train_cfg.batch_size, counts, seed=member_seed
        )
        cfg = dataclasses.replace(train_cfg, seed=member_seed)
        results.append(
            fit(model, batches, cfg, member_dir, total_steps=total, stage=f"ensemble{i}")
        )
    return results


def load_ensemble(out_dir: str | Path, members: int | None = None) -> list[MDNRNN]:
    """Load the trained members of ``OUT/`` (all of them, or the first ``members``)."""
    dirs = member_dirs(out_dir)
    if members is not None:
        if len(dirs) < members:
            raise CheckpointError(
                f"{out_dir}: holds {len(dirs)} trained members, {members} requested; run "
                "`dreamlab train-ensemble` first"
            )
        dirs = dirs[:members]
    if not dirs:
        raise CheckpointError(
            f"{out_dir}: no finished ensemble members; run `dreamlab train-ensemble` first"
        )
    return [load_model(d) for d in dirs]
