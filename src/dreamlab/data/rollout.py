"""The one loop that plays a policy in real environments.

Collection, evaluation, the real-env checks of CMA-ES and behavioral cloning's demonstrations all
play episodes the same way, so they all call :func:`play_episodes`: envs in lockstep slots, one
batched SB3-shaped ``predict(obs (N, H, W, 3), state, episode_start (N,)) -> (actions, state)``
per step for every slot, episode ``i`` reset with ``seeds[i]`` (its action space too), so results
do not depend on how many slots there are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

__all__ = ["EpisodeResult", "Policy", "play_episodes"]


class Policy(Protocol):
    """Anything with a batched, SB3-shaped ``predict``."""

    def predict(
        self, obs: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None
    ) -> tuple[np.ndarray, Any]: ...


@dataclass
class EpisodeResult:
    """One finished episode."""

    number: int
    """its position in ``seeds``"""
    seed: int
    """the seed its env (and action space) was reset with"""
    episode_return: float
    """undiscounted return"""
    length: int
    """steps taken (T)"""
    info: dict[str, Any] = field(default_factory=dict)
    """the env's ``info`` at the last step (e.g. Catch's ``caught`` and ``missed``)"""
    arrays: dict[str, np.ndarray] | None = None
    """with ``keep_arrays``: the store's layout, ``obs (T+1, H, W, 3)``, ``action (T, ...)``
    (int64 for Discrete, float32 for Box), ``reward``, ``terminated``, ``truncated (T,)``"""


def play_episodes(
    envs: Sequence[gym.Env[Any, Any]],
    policy: Policy,
    seeds: Sequence[int],
    *,
    keep_arrays: bool = False,
    max_episode_steps: int | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    on_step: Callable[[], bool] | None = None,
) -> list[EpisodeResult]:
    """Play ``len(seeds)`` episodes of ``policy`` in the lockstep slots ``envs``.

    Args:
        envs: one env per slot, all alike (made by the caller, who also closes them).
        policy: batched SB3-shaped policy; its recurrent ``state`` is reset per slot through
            ``episode_start``. Finished slots keep stepping on their last frame so the batch (and
            a recurrent state's layout) stays fixed; their actions are ignored.
        seeds: episode ``i`` resets its env and the env's action space with ``seeds[i]``.
        keep_arrays: return every episode's arrays (``EpisodeResult.arrays``).
        max_episode_steps: truncate an episode here if the env has not ended it by itself.
        on_episode: called as each episode ends (e.g. to store it, or to advance a progress bar).
        on_step: called after every lockstep step (after that step's ``on_episode`` calls), e.g.
            to learn online between steps; returning True stops at once, and the episodes in
            flight are dropped.

    Returns:
        One :class:`EpisodeResult` per finished episode (per seed unless ``on_step`` stopped
        early), in the order of ``seeds``.
    """
    if not envs:
        raise ValueError("play_episodes: no envs given")
    if len(seeds) < 1:
        raise ValueError("play_episodes: no episodes to play (seeds is empty)")
    num_slots = min(len(envs), len(seeds))
    envs = list(envs)[:num_slots]
    discrete = isinstance(envs[0].action_space, gym.spaces.Discrete)
    results: list[EpisodeResult | None] = [None] * len(seeds)
    next_episode = 0
    slot_episode = np.full(num_slots, -1)
    slot_return = np.zeros(num_slots)
    slot_steps = np.zeros(num_slots, dtype=np.int64)
    slot_frames: list[list[np.ndarray]] = [[] for _ in range(num_slots)]
    slot_record: list[list[tuple[Any, float, bool, bool]]] = [[] for _ in range(num_slots)]
    obs: list[Any] = [None] * num_slots
    episode_start = np.ones(num_slots, dtype=bool)

    def start(slot: int) -> None:
        nonlocal next_episode
        if next_episode >= len(seeds):
            slot_episode[slot] = -1
            return
        seed = int(seeds[next_episode])
        slot_episode[slot] = next_episode
        envs[slot].action_space.seed(seed)
        obs[slot], _ = envs[slot].reset(seed=seed)
        slot_return[slot] = 0.0
        slot_steps[slot] = 0
        slot_frames[slot] = [obs[slot]] if keep_arrays else []
        slot_record[slot] = []
        episode_start[slot] = True
        next_episode += 1

    def finish(slot: int, info: dict[str, Any]) -> None:
        number = int(slot_episode[slot])
        arrays = None
        if keep_arrays:
            actions, rewards, terms, truncs = zip(*slot_record[slot], strict=True)
            arrays = {
                "obs": np.stack(slot_frames[slot]).astype(np.uint8, copy=False),
                "action": np.asarray(actions, dtype=np.int64 if discrete else np.float32),
                "reward": np.asarray(rewards, dtype=np.float32),
                "terminated": np.asarray(terms, dtype=bool),
                "truncated": np.asarray(truncs, dtype=bool),
            }
        result = EpisodeResult(
            number, int(seeds[number]), float(slot_return[slot]), int(slot_steps[slot]),
            dict(info), arrays,
        )  # fmt: skip
        results[number] = result
        if on_episode is not None:
            on_episode(result)

    for slot in range(num_slots):
        start(slot)
    state: Any = None
    while (slot_episode >= 0).any():
        actions, state = policy.predict(np.stack(obs), state, episode_start.copy())
        episode_start[:] = False
        for slot in range(num_slots):
            if slot_episode[slot] < 0:
                continue
            action = int(actions[slot]) if discrete else actions[slot]
            obs[slot], reward, terminated, truncated, info = envs[slot].step(action)
            slot_return[slot] += float(reward)
            slot_steps[slot] += 1
            if max_episode_steps is not None and slot_steps[slot] >= max_episode_steps:
                truncated = truncated or not terminated
            if keep_arrays:
                slot_frames[slot].append(obs[slot])
                slot_record[slot].append((action, float(reward), bool(terminated), bool(truncated)))
            if terminated or truncated:
                finish(slot, info)
                start(slot)
        if on_step is not None and on_step():
            break
    return [r for r in results if r is not None]
