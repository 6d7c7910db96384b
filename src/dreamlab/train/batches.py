"""Resumable batch sources for :func:`dreamlab.train.fit.fit`: frames for V, latent windows for M.

Each is a callable ``start_step -> iterator of batches`` whose stream started at any step is
exactly the stream an uninterrupted run saw from that step on, so a killed training resumes on
the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from dreamlab.data.sampling import FrameSampler, SequenceSampler
from dreamlab.data.store import EpisodeStore

__all__ = ["Batch", "frame_batches", "sequence_batches"]

Batch = dict[str, Any]


def frame_batches(
    store: EpisodeStore, batch_size: int, seed: int = 0, key: str = "obs"
) -> Callable[[int], Iterator[Batch]]:
    """Resumable batch source for the VAE: ``{"obs": (B, H, W, 3) uint8}`` epoch by epoch.

    Epoch ``e`` is the permutation drawn from ``seed`` and ``e``, so the stream started at any
    step is exactly the stream an uninterrupted run saw from that step on. The last batch of an
    epoch is dropped so every step has ``batch_size`` frames.

    Returns:
        ``start_step -> iterator`` for :func:`fit`; ``.steps_per_epoch`` holds batches per epoch.
    """
    sampler = FrameSampler(store, batch_size, seed=seed, key=key, drop_last=True)
    per_epoch = max(1, len(sampler))

    def stream(start_step: int) -> Iterator[Batch]:
        step = start_step
        while True:
            epoch, b = divmod(step, per_epoch)
            perm = np.random.default_rng([seed, epoch]).permutation(sampler.num_frames)
            for i in range(b, per_epoch):
                ids = perm[i * batch_size : (i + 1) * batch_size]
                if len(ids) < batch_size:  # fewer frames than one batch: draw with replacement
                    ids = np.random.default_rng([seed, epoch, i]).integers(
                        0, sampler.num_frames, batch_size
                    )
                step += 1
                yield {key: sampler.gather(ids)}

    stream.steps_per_epoch = per_epoch  # type: ignore[attr-defined]
    return stream


def sequence_batches(
    store: EpisodeStore | Sequence[EpisodeStore],
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    keys: tuple[str, ...] = ("mu", "logvar", "action", "reward", "terminated"),
    cover_ends: bool = True,
    pad_short: bool = False,
) -> Callable[[int], Iterator[Batch]]:
    """Resumable batch source for the MDN-RNN: random windows of ``seq_len`` steps.

    Batch ``s`` is drawn from a generator seeded with ``(seed, s)``, so a resumed run continues
    the exact stream. Per-observation keys have ``seq_len + 1`` rows, per-step keys ``seq_len``.

    ``cover_ends`` draws windows around uniformly drawn steps so that episode ends (where
    ``terminated`` is true) are seen about as often as other steps (see
    :class:`~dreamlab.data.sampling.SequenceSampler`).

    ``pad_short`` keeps episodes shorter than ``seq_len`` as whole, zero-padded windows with a
    ``mask`` (see :class:`~dreamlab.data.sampling.SequenceSampler`).

    Several stores (e.g. random play and the agent's own play) are sampled as one: each window
    comes from a store with probability proportional to the steps it holds.

    Returns:
        ``start_step -> iterator`` for :func:`fit`; ``.steps_per_epoch`` holds batches per pass.
    """
    stores = list(store) if isinstance(store, list | tuple) else [store]
    if not stores:
        raise ValueError("sequence_batches: no stores given")
    samplers = [
        SequenceSampler(
            s, seq_len, batch_size, seed=seed, keys=keys, cover_ends=cover_ends, pad_short=pad_short
        )
        for s in stores
    ]
    weights = np.array([s.eligible_steps for s in samplers], np.float64)
    weights /= weights.sum()

    def stream(start_step: int) -> Iterator[Batch]:
        step = start_step
        while True:
            rng = np.random.default_rng([seed, step])
            step += 1
            if len(samplers) == 1:
                yield samplers[0].gather(samplers[0].draw(rng, batch_size))
                continue
            counts = rng.multinomial(batch_size, weights)  # windows per store
            parts = [
                s.gather(s.draw(rng, int(k))) for s, k in zip(samplers, counts, strict=True) if k
            ]
            yield {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    stream.steps_per_epoch = sum(len(s) for s in samplers)  # type: ignore[attr-defined]
    return stream
