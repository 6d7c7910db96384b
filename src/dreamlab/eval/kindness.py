"""Is the dream kinder than reality? An agent's return in whole dreams beside its real return.

A controller trained only in a dream is worth what the dream's score is worth in reality. Each
agent plays whole episodes in the dream, from real episodes' first frames, for as long as a real
episode can last, under the rules it trained under (temperature, deaths drawn or thresholded);
its mean return there is set beside its mean return in the real env (``eval.json``).

*Kinder* means the dream pays the agent clearly more than reality does: the gap is larger than
twice its standard error and than a tenth of the real score's scale (its mean or its spread,
whichever is larger). If random play is paid more
in the dream too, the dream is easier everywhere (M misses deaths or invents rewards); if only
C is, C found an error of M to exploit. Either way C's dream score overstates it, and the
temperature, the checks of the dream (``dream_checks``) and the iterative procedure are where to
look (docs/vm.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dreamlab.dream import DreamVecEnv
from dreamlab.worldmodel import StartLatents, WorldModel

__all__ = ["dream_episodes", "kindness", "kindness_line"]


@torch.inference_mode()
def dream_episodes(
    world_model: WorldModel,
    starts: StartLatents,
    policy: Any,
    action_space: Any,
    episodes: int,
    temperature: float,
    max_steps: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``episodes`` dreams played by ``policy`` (a callable over feature tensors, or an object
    with ``predict`` like a random policy) in one batch, each until it ends or ``max_steps``:
    ``(lengths (episodes,) int, returns (episodes,) float)``."""
    env = DreamVecEnv(
        world_model,
        starts,
        action_space,
        num_envs=episodes,
        temperature=temperature,
        max_episode_steps=max_steps,
        autoreset=False,
    )
    obs, _ = env.reset(seed=seed)
    alive = np.ones(episodes, bool)
    steps = np.zeros(episodes, np.int64)
    returns = np.zeros(episodes, np.float64)
    while alive.any():
        if hasattr(policy, "predict"):
            action, _ = policy.predict(obs)
        else:
            action = policy(torch.as_tensor(obs)).numpy()
        obs, reward, term, trunc, _ = env.step(action)
        steps += alive
        returns += np.where(alive, np.asarray(reward, np.float64), 0.0)
        alive &= ~(np.asarray(term) | np.asarray(trunc))
    return steps, returns


def _side(mean: float, std: float, episodes: int) -> dict[str, float]:
    return {
        "episodes": int(episodes),
        "mean_return": float(mean),
        "std_return": float(std),
        "stderr": float(std / math.sqrt(max(episodes, 1))),
    }


def kindness(dream_returns: np.ndarray, real: dict[str, Any]) -> dict[str, Any]:
    """One agent's dream returns beside its real scores (an ``eval.json`` agent entry): the
    means, their standard errors, the gap and whether the dream is ``kinder``."""
    d = np.asarray(dream_returns, np.float64)
    dream = _side(float(d.mean()), float(d.std()), len(d))
    actual = _side(float(real["mean_return"]), float(real["std_return"]), int(real["episodes"]))
    gap = dream["mean_return"] - actual["mean_return"]
    noise = 2.0 * math.hypot(dream["stderr"], actual["stderr"])
    scale = max(abs(actual["mean_return"]), actual["std_return"], 1e-9)
    return {
        "dream": dream,
        "real": actual,
        "gap": gap,
        "ratio": dream["mean_return"] / actual["mean_return"] if actual["mean_return"] else None,
        "kinder": bool(gap > noise and gap > 0.1 * scale),
        "harsher": bool(-gap > noise and -gap > 0.1 * scale),
    }


def kindness_line(agents: dict[str, dict[str, Any]]) -> str:
    """The verdict in one sentence, from :func:`kindness` of ``controller`` and (if measured)
    ``random``."""
    c = agents.get("controller")
    if c is None:
        return "C has no real score yet: run evaluate first"
    d, r = c["dream"]["mean_return"], c["real"]["mean_return"]
    rnd = agents.get("random")
    if c["kinder"]:
        if rnd is None:
            why = "random play was not scored, so whether only C is paid more is not known"
        elif rnd["kinder"]:
            why = "random play is paid more in the dream too: M misses deaths or invents rewards"
        else:
            why = "random play is not: C exploits an error of M"
        return (
            f"WARNING: the dream is kinder than reality: C scores {d:.2f} in its dream and "
            f"{r:.2f} in reality ({why}); its dream score overstates it"
        )
    if c["harsher"]:
        return (
            f"the dream is harsher than reality: C scores {d:.2f} in its dream, {r:.2f} in reality"
        )
    return f"the dream is honest about C: {d:.2f} in its dream, {r:.2f} in reality"
