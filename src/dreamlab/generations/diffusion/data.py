"""The training examples of the diffusion world model: every step of a store's episodes, in
memory, served as next-frame batches (context frames and actions -> the next frame, its reward
and termination).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from dreamlab.models import actions_to_tensor

__all__ = ["EpisodeArrays", "StoreSubset", "diffusion_batches"]


class EpisodeArrays:
    """All episodes of a store in memory, indexed by step, for next-frame training examples.

    Example ``(episode e, step t)``: context frames ``obs[t-L+1 .. t]`` and actions
    ``action[t-L+1 .. t]`` (before the episode's start: the first frame repeated and zero
    actions, exactly what ``DiffusionWorldModel.observe`` builds on a fresh state), target
    ``obs[t+1]``, ``reward[t]``, ``terminated[t]``.

    Args:
        store: an ``EpisodeStore`` of frames (``obs``, ``action``, ``reward``, ``terminated``).
        action_kind: 'discrete' or 'continuous'.
        action_dim: number of actions (discrete) or action size.
        max_episodes: read at most this many episodes (the first ones).
    """

    def __init__(
        self, store: Any, action_kind: str, action_dim: int, max_episodes: int | None = None
    ) -> None:
        indices = list(store.indices)[:max_episodes]
        if not indices:
            raise ValueError(f"{getattr(store, 'path', 'store')}: holds no episodes")
        obs, act, rew, term, starts, steps = [], [], [], [], [], []
        frame_base = 0
        for i in indices:
            ep = store.episode(i)
            missing = [k for k in ("obs", "action", "reward", "terminated") if k not in ep]
            if missing:
                raise ValueError(f"episode {i}: a diffusion world model needs arrays {missing}")
            t = len(ep["action"])
            if t < 1:
                continue
            obs.append(np.asarray(ep["obs"]))
            a = actions_to_tensor(np.array(ep["action"]), action_kind, action_dim).numpy()  # type: ignore[arg-type]
            act.append(a.reshape(t, action_dim))
            rew.append(np.asarray(ep["reward"], np.float32))
            term.append(np.asarray(ep["terminated"], bool))
            starts.append(np.full(t, frame_base, np.int64))
            steps.append(np.arange(t, dtype=np.int64))
            frame_base += t + 1
        self.obs = np.concatenate(obs)  # (sum T+1, H, W, 3) uint8
        self.action = np.concatenate(act)  # (sum T, A) float32, row = frame index - episode
        self.reward = np.concatenate(rew)  # (sum T,)
        self.terminated = np.concatenate(term)  # (sum T,)
        self.episode_frame = np.concatenate(starts)  # (N,) first frame of each step's episode
        self.step = np.concatenate(steps)  # (N,) step within its episode
        self.num_steps = len(self.step)
        if self.obs.ndim != 4 or self.obs.shape[-1] != 3 or self.obs.dtype != np.uint8:
            raise ValueError(
                f"{getattr(store, 'path', 'store')}: obs must be uint8 (T+1, H, W, 3), got "
                f"{self.obs.dtype} {self.obs.shape[1:]}"
            )

    @property
    def frame_size(self) -> int:
        """Side of the frames."""
        return int(self.obs.shape[1])

    def gather(self, rows: np.ndarray, context: int) -> dict[str, np.ndarray]:
        """Training examples for global step rows ``(B,)``."""
        t = self.step[rows]  # (B,)
        offs = np.arange(-context + 1, 1)  # (L,)
        back = t[:, None] + offs[None]  # (B, L) step index of each context slot
        valid = back >= 0  # (B, L)
        frame_idx = self.episode_frame[rows, None] + np.maximum(back, 0)  # (B, L)
        step_idx = rows[:, None] + offs[None]  # (B, L) same episode where valid
        actions = np.where(valid[..., None], self.action[np.where(valid, step_idx, 0)], 0.0).astype(
            np.float32
        )  # (B, L, A)
        return {
            "context": self.obs[frame_idx],  # (B, L, H, W, 3)
            "actions": actions,
            "target": self.obs[self.episode_frame[rows] + t + 1],  # (B, H, W, 3)
            "reward": self.reward[rows],
            "terminated": self.terminated[rows].astype(np.float32),
        }


def diffusion_batches(data: EpisodeArrays, context: int, batch_size: int, seed: int) -> Any:
    """A ``fit``-ready batch source: ``start_step -> iterator of batches`` (uniform steps).

    The generator for a resumed run is seeded with ``(seed, start_step)``, so a resume draws
    fresh batches deterministically.
    """

    def stream(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([seed, start_step])
        while True:
            rows = rng.integers(0, data.num_steps, size=batch_size)
            yield data.gather(rows, context)

    return stream


class StoreSubset:
    """The first ``n`` episodes of a store (duck-types ``indices`` / ``episode`` / ``path``)."""

    def __init__(self, store: Any, n: int) -> None:
        self.store, self.indices, self.path = store, list(store.indices)[:n], store.path

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i`` of the store."""
        return self.store.episode(i)
