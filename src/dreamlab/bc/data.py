"""Demonstrations for behavioral cloning: recording them, and batches of (observation, action).

Demonstrations are ordinary episode stores (:mod:`dreamlab.data.store`): every step's
``obs[t]`` and the ``action[t]`` the demonstrator took on it. They come from

- a policy name that :func:`dreamlab.data.collect.collect` knows (``expert``: the scripted Catch
  player), collected in parallel and resumably;
- any object with an SB3-shaped ``predict`` (a Stable-Baselines3 PPO agent, a planner, a trained
  dreamlab agent): :func:`record_demos`;
- episodes already in a store (recorded play, a Minari import): used as they are.

Batch sources follow :func:`dreamlab.train.fit`'s contract: ``start_step -> iterator`` whose batch
``s`` is drawn from a generator seeded with ``(seed, s)``, so a resumed training continues the
exact stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.data.rollout import EpisodeResult, play_episodes
from dreamlab.data.schema import StoreMeta
from dreamlab.data.store import EpisodeStore
from dreamlab.models import frames_to_tensor
from dreamlab.worldmodel import WorldModel

__all__ = ["feature_batches", "feature_dataset", "pixel_batches", "record_demos", "stack_frames"]

Batch = dict[str, np.ndarray]


def record_demos(
    env: str,
    policy: Any,
    out: str | Path,
    episodes: int,
    *,
    seed: int = 0,
    name: str = "custom",
    progress: bool = True,
) -> EpisodeStore:
    """Play ``episodes`` episodes of any SB3-shaped ``policy`` into the store at ``out``.

    Episode ``i`` is reset with seed ``seed + i``; episodes already in the store are kept, so an
    interrupted recording resumes. For a Stable-Baselines3 agent pass the model itself
    (``PPO.load(...)``): its ``predict(obs, state, episode_start)`` has this shape.

    Args:
        env: preset name or env id (see :func:`dreamlab.envs.make_env`).
        policy: ``predict(obs (1, H, W, 3), state, episode_start (1,)) -> (actions (1, ...), state)``.
        out: store directory (created, or resumed when it holds a store of the same env).
        episodes: episodes the store must hold at the end.
        name: recorded as the episodes' ``policy`` and in the store's metadata.
    """
    from dreamlab.envs import make_env, preset_to_dict, resolve_preset
    from dreamlab.progress import tqdm

    if episodes < 1:
        raise ValueError(f"record_demos: episodes={episodes}; expected >= 1")
    preset = resolve_preset(env)
    game = make_env(preset.env_id, preset)
    try:
        meta = StoreMeta.for_env(
            preset.env_id,
            tuple(game.observation_space.shape or ()),
            game.action_space,
            preset=preset_to_dict(preset),
            extra={"collect": {"seed": seed, "policy": name}},
        )
        store = EpisodeStore.open_or_create(out, meta)
        missing = store.missing(episodes)
        with tqdm(total=len(missing), desc=f"demos {name}", disable=not progress) as bar:

            def keep(result: EpisodeResult) -> None:
                assert result.arrays is not None  # keep_arrays
                i = missing[result.number]
                store.append(result.arrays, index=i, info={"seed": str(seed + i), "policy": name})
                bar.update(1)

            if missing:
                seeds = [seed + i for i in missing]
                play_episodes([game], policy, seeds, keep_arrays=True, on_episode=keep)
    finally:
        game.close()
    return store


class _StepIndex:
    """Maps a global step number to (episode position, step within the episode)."""

    def __init__(self, store: EpisodeStore) -> None:
        if len(store) == 0:
            raise ValueError(f"{store.path}: the demonstration store holds no episodes")
        self.indices = list(store.indices)
        self.lengths = store.lengths  # (E,)
        self.ends = np.cumsum(self.lengths)  # (E,)
        self.total = int(self.ends[-1])
        if self.total == 0:
            raise ValueError(f"{store.path}: the demonstration episodes hold no steps")

    def locate(self, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ep = np.searchsorted(self.ends, steps, side="right")  # (B,)
        t = steps - (self.ends[ep] - self.lengths[ep])  # (B,)
        return ep, t


def stack_frames(obs: np.ndarray, t: int, k: int) -> np.ndarray:
    """Frames ``t-k+1 .. t`` of one episode ``(k, H, W, 3)``; before frame 0, frame 0 repeats.

    This is the padding :class:`dreamlab.bc.policy.BCPolicy` uses at an episode start.
    """
    rows = np.clip(np.arange(t - k + 1, t + 1), 0, None)  # (k,)
    return obs[rows]


def pixel_batches(
    store: EpisodeStore, frame_stack: int, batch_size: int, seed: int = 0
) -> Callable[[int], Iterator[Batch]]:
    """Resumable source of ``{"obs": (B, K, H, W, 3) uint8, "action": (B, ...)}``.

    Every step of every demonstration is equally likely to be drawn. Episodes stay
    memory-mapped; only the batch is copied.
    """
    index = _StepIndex(store)
    episodes = [store.episode(i) for i in index.indices]

    def stream(start_step: int) -> Iterator[Batch]:
        step = start_step
        while True:
            rng = np.random.default_rng([seed, step])
            ep, t = index.locate(rng.integers(0, index.total, batch_size))
            obs = np.stack(
                [
                    stack_frames(episodes[e]["obs"], int(s), frame_stack)
                    for e, s in zip(ep, t, strict=True)
                ]
            )  # (B, K, H, W, 3)
            action = np.stack([episodes[e]["action"][s] for e, s in zip(ep, t, strict=True)])
            step += 1
            yield {"obs": obs, "action": action}

    stream.steps_per_epoch = max(1, index.total // batch_size)  # type: ignore[attr-defined]
    return stream


@torch.inference_mode()
def feature_dataset(
    store: EpisodeStore, world_model: WorldModel, *, chunk: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """The world model's features at every demonstration step, with the action taken there.

    Episodes are run through the world model in lockstep batches of ``chunk``, exactly as the
    policy runs at test time: observe the frame, read the features, step the memory with the
    demonstrator's action.

    Returns:
        ``(features (S, F) float32, actions (S, ...))`` over all ``S`` steps, episode by episode.
    """
    index = _StepIndex(store)
    feats: list[np.ndarray] = []
    acts: list[np.ndarray] = []
    for lo in range(0, len(index.indices), chunk):
        eps = [store.episode(i) for i in index.indices[lo : lo + chunk]]
        lengths = [len(e["action"]) for e in eps]
        horizon = max(lengths)
        state = world_model.initial_state(len(eps))
        per_step: list[np.ndarray] = []
        for t in range(horizon):
            # Episodes that ended repeat their last step; those rows are dropped below.
            rows = [min(t, n - 1) for n in lengths]
            frames = np.stack([e["obs"][r] for e, r in zip(eps, rows, strict=True)])
            action = np.stack([e["action"][r] for e, r in zip(eps, rows, strict=True)])
            state = world_model.observe(state, frames_to_tensor(frames, device=world_model.device))
            per_step.append(world_model.features(state).float().cpu().numpy())  # (E, F)
            state, _, _ = world_model.step(
                state, torch.as_tensor(action, device=world_model.device)
            )
        grid = np.stack(per_step, axis=1)  # (E, T, F)
        for j, e in enumerate(eps):
            feats.append(grid[j, : lengths[j]])
            acts.append(np.asarray(e["action"]))
    return np.concatenate(feats).astype(np.float32), np.concatenate(acts)


def feature_batches(
    features: np.ndarray, actions: np.ndarray, batch_size: int, seed: int = 0
) -> Callable[[int], Iterator[Batch]]:
    """Resumable source of ``{"obs": (B, F) float32, "action": (B, ...)}`` from in-memory rows."""
    if len(features) != len(actions) or len(features) == 0:
        raise ValueError(
            f"feature_batches: {len(features)} feature rows and {len(actions)} actions; expected "
            "the same non-zero number"
        )

    def stream(start_step: int) -> Iterator[Batch]:
        step = start_step
        while True:
            ids = np.random.default_rng([seed, step]).integers(0, len(features), batch_size)
            step += 1
            yield {"obs": features[ids], "action": actions[ids]}

    stream.steps_per_epoch = max(1, len(features) // batch_size)  # type: ignore[attr-defined]
    return stream
