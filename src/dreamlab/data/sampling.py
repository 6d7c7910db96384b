"""Seeded, bounded-memory samplers over an :class:`~dreamlab.data.store.EpisodeStore` (numpy only).

Both samplers keep only per-episode bookkeeping (row offsets) and, for an epoch, one permutation of
global row ids (8 bytes per frame); every batch is read from disk with ``pread`` into a fresh array.
Rows of one batch are grouped by episode so each episode file is opened once per batch, and
scattered back into their shuffled slots so the batch order stays random.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from dreamlab.data.schema import StoreError
from dreamlab.data.store import EpisodeStore


def _group_by_episode(episode_pos: np.ndarray) -> list[np.ndarray]:
    """Split batch slots into groups sharing an episode: ``(B,)`` -> list of slot arrays."""
    order = np.argsort(episode_pos, kind="stable")
    cuts = np.flatnonzero(np.diff(episode_pos[order])) + 1
    return np.split(order, cuts)


class FrameSampler:
    """Single rows (frames) of one per-observation array, shuffled globally across episodes.

    ``for batch in sampler`` runs one epoch: every frame of the store exactly once, in batches of
    ``(B, *row_shape)`` (``(B, H, W, 3) uint8`` for ``obs``); each epoch draws a new permutation.
    ``sample()`` draws a batch uniformly with replacement.
    """

    def __init__(
        self,
        store: EpisodeStore,
        batch_size: int,
        seed: int = 0,
        key: str = "obs",
        drop_last: bool = False,
    ) -> None:
        """Index the store as it is now (episodes appended later are not seen).

        Args:
            store: the episode store.
            batch_size: frames per batch B.
            seed: seed of the sampler's generator (epochs and samples are reproducible).
            key: array to read (any array of the schema; per_step arrays work too).
            drop_last: drop the last, smaller batch of an epoch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        spec = store.meta.schema.get(key)
        if spec is None:
            raise StoreError(
                f"{store.path}: no array {key!r} in the schema ({sorted(store.meta.schema)})"
            )
        if len(store) == 0:
            raise StoreError(f"{store.path}: the store holds no episodes to sample frames from")
        self.store = store
        self.key = key
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.row_shape = spec.shape
        self.dtype = spec.np_dtype
        self.episode_indices = np.asarray(store.indices, dtype=np.int64)  # (E,)
        self.offsets = np.concatenate([[0], np.cumsum(store.rows(key))]).astype(np.int64)  # (E+1,)
        self.num_frames = int(self.offsets[-1])
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_frames // self.batch_size
        return -(-self.num_frames // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        perm = self.rng.permutation(self.num_frames)  # (N,) int64: the only O(frames) state
        for b in range(len(self)):
            yield self.gather(perm[b * self.batch_size : (b + 1) * self.batch_size])

    def sample(self, batch_size: int | None = None) -> np.ndarray:
        """A batch of frames drawn uniformly with replacement: ``(B, *row_shape)``."""
        ids = self.rng.integers(0, self.num_frames, size=batch_size or self.batch_size)
        return self.gather(ids)

    def gather(self, frame_ids: np.ndarray) -> np.ndarray:
        """Read global frame ids ``(B,)`` (0..num_frames-1) into a new ``(B, *row_shape)`` array."""
        frame_ids = np.asarray(frame_ids, dtype=np.int64)
        out = np.empty((len(frame_ids), *self.row_shape), dtype=self.dtype)  # (B, H, W, 3)
        if not len(frame_ids):
            return out
        pos = np.searchsorted(self.offsets, frame_ids, side="right") - 1  # (B,) episode position
        rows = frame_ids - self.offsets[pos]  # (B,) row within the episode
        for slots in _group_by_episode(pos):
            slots = slots[np.argsort(rows[slots], kind="stable")]  # ascending offsets: readahead
            with self.store.reader(int(self.episode_indices[pos[slots[0]]])) as r:
                r.read_rows(self.key, rows[slots], out=out, slots=slots)
        return out


class SequenceSampler:
    """Random fixed-length windows of ``seq_len`` steps from episodes at least that long (or, with
    ``pad_short``, from every episode: a shorter one is the whole episode, padded and masked).

    A batch is a dict: per_obs arrays ``(B, seq_len + 1, ...)`` (observations before and after
    every step of the window), per_step arrays ``(B, seq_len, ...)``. Windows are drawn uniformly
    over all valid start steps, so every step is equally likely whatever the episode lengths.
    ``for batch in sampler`` yields ``len(sampler)`` random batches: about one pass over the steps.
    """

    def __init__(
        self,
        store: EpisodeStore,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        keys: Sequence[str] | None = None,
        cover_ends: bool = False,
        pad_short: bool = False,
    ) -> None:
        """Index the episodes long enough for a window.

        Args:
            store: the episode store.
            seq_len: steps per window (T of the batch).
            batch_size: windows per batch B.
            seed: seed of the sampler's generator.
            keys: arrays to read (default all arrays of the schema).
            cover_ends: draw a step uniformly and then a window that contains it, instead of a
                uniform start step. Uniform starts see an episode's last step in one window out
                of ``seq_len`` where a middle step is in ``seq_len``; the last step is where
                ``terminated`` happens, so a termination head would barely see positives.
            pad_short: an episode shorter than ``seq_len`` gives one window, the whole episode
                from its first step, padded with zeros; batches then carry ``mask`` ``(B,
                seq_len)`` float32, 1 on real steps. So ``seq_len`` can cover whole episodes
                (M sees deaths with the memory of everything before them) without dropping the
                short ones, whose deaths are the early ones.

        Raises:
            StoreError: if no episode has ``seq_len`` steps, or a key is not in the schema.
        """
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        schema = store.meta.schema
        self.keys = list(keys) if keys is not None else list(schema)
        unknown = [k for k in self.keys if k not in schema]
        if unknown:
            raise StoreError(f"{store.path}: no arrays {unknown} in the schema ({sorted(schema)})")
        lengths = store.lengths  # (E,)
        eligible = (lengths >= 1) if pad_short else (lengths >= seq_len)
        if not eligible.any():
            longest = int(lengths.max()) if len(lengths) else 0
            raise StoreError(
                f"{store.path}: no episode has seq_len={seq_len} steps (longest has {longest}, "
                f"{len(lengths)} episodes); lower seq_len or collect longer episodes"
            )
        self.store = store
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.episode_indices = np.asarray(store.indices, dtype=np.int64)[eligible]  # (E',)
        windows = np.maximum(lengths[eligible] - seq_len + 1, 1)  # (E',) valid start steps
        self.pad_short = pad_short
        self.offsets = np.concatenate([[0], np.cumsum(windows)]).astype(np.int64)  # (E'+1,)
        self.num_windows = int(self.offsets[-1])
        self.num_skipped = int((~eligible).sum())
        self.eligible_steps = int(lengths[eligible].sum())
        self.cover_ends = cover_ends
        self.eligible_lengths = lengths[eligible]  # (E',)
        self.step_offsets = np.concatenate([[0], np.cumsum(self.eligible_lengths)]).astype(np.int64)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        """Batches per pass: eligible steps / (batch_size * seq_len), at least 1."""
        return max(1, self.eligible_steps // (self.batch_size * self.seq_len))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for _ in range(len(self)):
            yield self.sample()

    def sample(self, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """A batch of random windows: ``{key: (B, seq_len[+1], *row_shape)}``."""
        return self.gather(self.draw(self.rng, batch_size or self.batch_size))

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Draw ``size`` global window ids with ``rng`` (uniform starts, or by step with
        ``cover_ends``); :meth:`gather` reads them."""
        if not self.cover_ends:
            return rng.integers(0, self.num_windows, size=size)
        step = rng.integers(0, self.eligible_steps, size=size)  # (B,) global step id
        pos = np.searchsorted(self.step_offsets, step, side="right") - 1  # (B,) episode
        t = step - self.step_offsets[pos]  # (B,) step within the episode
        back = rng.integers(0, self.seq_len, size=size)  # (B,) place of t in the window
        last = np.maximum(self.eligible_lengths[pos] - self.seq_len, 0)  # (B,) last start
        start = np.clip(t - back, 0, last)  # (B,)
        return self.offsets[pos] + start

    def gather(self, window_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Read global window ids ``(B,)`` (0..num_windows-1) into a batch dict."""
        window_ids = np.asarray(window_ids, dtype=np.int64)
        batch_size = len(window_ids)
        schema = self.store.meta.schema
        out = {}
        for k in self.keys:
            spec = schema[k]
            rows = self.seq_len + 1 if spec.rows == "per_obs" else self.seq_len
            out[k] = np.empty(
                (batch_size, rows, *spec.shape), dtype=spec.np_dtype
            )  # (B, T(+1), ...)
        pos = np.searchsorted(self.offsets, window_ids, side="right") - 1  # (B,)
        starts = window_ids - self.offsets[pos]  # (B,) first step of each window
        steps = np.minimum(self.eligible_lengths[pos], self.seq_len)  # (B,) real steps
        if self.pad_short:
            for arr in out.values():
                arr[:] = 0  # padding rows (masked out)
        for slots in _group_by_episode(pos) if batch_size else []:
            with self.store.reader(int(self.episode_indices[pos[slots[0]]])) as r:
                for b in slots.tolist():
                    s, n = int(starts[b]), int(steps[b])
                    for k, arr in out.items():
                        rows = n + arr.shape[1] - self.seq_len  # n (+1 for per_obs arrays)
                        r.read_span(k, s, s + rows, out=arr[b, :rows])
        if self.pad_short:
            out["mask"] = (np.arange(self.seq_len)[None] < steps[:, None]).astype(np.float32)
        return out
