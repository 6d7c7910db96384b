"""Evaluate any policy with a batched ``predict`` in the real environment.

The policy only has to follow the Stable-Baselines3 shape
``predict(obs (N, H, W, 3), state, episode_start (N,)) -> (actions (N, ...), state)``, so the same
function scores the random policy, the scripted expert, the V+M+C agent, a planner or a BC policy.
Episodes run in lockstep slots: one batched ``predict`` call per step for every slot still playing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from dreamlab.progress import tqdm


class Policy(Protocol):
    """Anything with a batched, SB3-shaped ``predict``."""

    def predict(
        self, obs: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None
    ) -> tuple[np.ndarray, Any]: ...


@dataclass
class EvalResult:
    """Scores of one evaluation.

    ``best_frames`` / ``worst_frames`` hold the frames (T+1, H, W, 3) uint8 of the best and worst
    episode, so a caller can write videos without keeping every episode in memory.
    """

    env: str
    returns: list[float]
    lengths: list[int]
    caught: list[int] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    seconds: float = 0.0
    best_frames: np.ndarray | None = None
    worst_frames: np.ndarray | None = None

    @property
    def episodes(self) -> int:
        return len(self.returns)

    def summary(self) -> dict[str, Any]:
        """The JSON-able numbers (what ``eval.json`` holds)."""
        returns = np.asarray(self.returns, dtype=np.float64)
        out: dict[str, Any] = {
            "env": self.env,
            "episodes": self.episodes,
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()),
            "median_return": float(np.median(returns)),
            "min_return": float(returns.min()),
            "max_return": float(returns.max()),
            "mean_length": float(np.mean(self.lengths)),
            "seconds": round(self.seconds, 3),
        }
        balls = int(np.sum(self.caught) + np.sum(self.missed))
        if balls > 0:
            out["catch_rate"] = float(np.sum(self.caught) / balls)
            out["balls"] = balls
        return out


def evaluate_policy(
    make_env: Callable[[], gym.Env],
    policy: Policy,
    episodes: int,
    *,
    env_name: str = "",
    seed: int = 0,
    num_envs: int = 16,
    record: bool = True,
    progress: bool = True,
    indices: Sequence[int] | None = None,
    on_episode: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    desc: str = "evaluate",
) -> EvalResult:
    """Play ``episodes`` episodes of ``policy`` in fresh environments from ``make_env``.

    Args:
        make_env: builds one environment with uint8 frame observations (H, W, 3).
        policy: batched SB3-shaped policy; its recurrent ``state`` is reset per slot through
            ``episode_start``.
        episodes: number of episodes; episode ``i`` is reset with seed ``seed + i`` so results do
            not depend on ``num_envs``.
        num_envs: lockstep slots (one batched ``predict`` per step).
        record: keep the frames of the best and worst episode.
        indices: play these episode numbers (seeds ``seed + i``) instead of ``0..episodes-1``
            (``episodes`` is then ignored): a resumed collection plays only what is missing.
        on_episode: called as each episode ends with its number and the whole episode in the
            store's layout (``obs (T+1, H, W, 3)``, ``action (T, ...)``, ``reward``,
            ``terminated``, ``truncated (T,)``), e.g. to save the agent's own experience.
        desc: the progress bar's label.

    Returns:
        The per-episode returns, lengths and (for Catch) caught/missed counts, in the order of
        ``indices`` (or ``0..episodes-1``).
    """
    numbers = list(range(episodes)) if indices is None else [int(i) for i in indices]
    episodes = len(numbers)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    keep_frames = record or on_episode is not None
    num_envs = max(1, min(num_envs, episodes))
    envs = [make_env() for _ in range(num_envs)]
    returns = np.full(episodes, np.nan)
    lengths = np.zeros(episodes, dtype=np.int64)
    caught = np.zeros(episodes, dtype=np.int64)
    missed = np.zeros(episodes, dtype=np.int64)
    best: tuple[float, np.ndarray | None] = (-np.inf, None)
    worst: tuple[float, np.ndarray | None] = (np.inf, None)

    next_episode = 0
    slot_episode = np.full(num_envs, -1)
    slot_return = np.zeros(num_envs)
    slot_frames: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
    slot_steps: list[list[tuple[Any, float, bool, bool]]] = [[] for _ in range(num_envs)]
    obs = [None] * num_envs
    episode_start = np.ones(num_envs, dtype=bool)

    def start(slot: int) -> None:
        nonlocal next_episode
        if next_episode >= episodes:
            slot_episode[slot] = -1
            return
        slot_episode[slot] = next_episode
        obs[slot], _ = envs[slot].reset(seed=seed + numbers[next_episode])
        slot_return[slot] = 0.0
        slot_frames[slot] = [obs[slot]] if keep_frames else []
        slot_steps[slot] = []
        episode_start[slot] = True
        next_episode += 1

    for slot in range(num_envs):
        start(slot)
    state: Any = None
    t0 = time.perf_counter()
    bar = tqdm(total=episodes, desc=desc, unit="ep", disable=not progress, leave=False)
    try:
        while (slot_episode >= 0).any():
            # Finished slots keep stepping the policy on their last frame so that the batch (and a
            # recurrent policy's state layout) stays fixed; their actions are ignored.
            batch = np.stack(obs)
            actions, state = policy.predict(batch, state, episode_start.copy())
            episode_start[:] = False
            for slot in range(num_envs):
                ep = slot_episode[slot]
                if ep < 0:
                    continue
                action = actions[slot]
                obs[slot], reward, terminated, truncated, info = envs[slot].step(action)
                slot_return[slot] += float(reward)
                lengths[ep] += 1
                if keep_frames:
                    slot_frames[slot].append(obs[slot])
                if on_episode is not None:
                    slot_steps[slot].append((action, float(reward), terminated, truncated))
                if terminated or truncated:
                    returns[ep] = slot_return[slot]
                    caught[ep] = int(info.get("caught", 0))
                    missed[ep] = int(info.get("missed", 0))
                    if on_episode is not None:
                        acts, rews, terms, truncs = zip(*slot_steps[slot], strict=True)
                        on_episode(
                            numbers[ep],
                            {
                                "obs": np.stack(slot_frames[slot]),
                                "action": np.stack([np.asarray(a) for a in acts]),
                                "reward": np.asarray(rews, np.float32),
                                "terminated": np.asarray(terms, bool),
                                "truncated": np.asarray(truncs, bool),
                            },
                        )
                    if record:
                        if slot_return[slot] > best[0]:
                            best = (slot_return[slot], np.stack(slot_frames[slot]))
                        if slot_return[slot] < worst[0]:
                            worst = (slot_return[slot], np.stack(slot_frames[slot]))
                    bar.update(1)
                    start(slot)
    finally:
        bar.close()
        for env in envs:
            env.close()
    return EvalResult(
        env=env_name,
        returns=[float(r) for r in returns],
        lengths=[int(n) for n in lengths],
        caught=[int(c) for c in caught],
        missed=[int(m) for m in missed],
        seconds=time.perf_counter() - t0,
        best_frames=best[1],
        worst_frames=worst[1],
    )
