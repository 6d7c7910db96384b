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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.dream import DreamVecEnv
from dreamlab.io import atomic_write_json, read_json
from dreamlab.worldmodel import StartLatents, WorldModel

__all__ = [
    "KINDNESS_FILE",
    "dream_episodes",
    "kindness",
    "kindness_line",
    "kindness_markdown",
    "kindness_of_run",
    "measure_kindness",
]

KINDNESS_FILE = "kindness.json"
"""what :func:`measure_kindness` writes into a run directory"""


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


def kindness_line(agents: dict[str, dict[str, Any]], agent: str = "C", model: str = "M") -> str:
    """The verdict in one sentence, from :func:`kindness` of ``controller`` and (if measured)
    ``random``; ``agent`` and ``model`` name the trained agent and the world model."""
    c = agents.get("controller")
    if c is None:
        return f"{agent} has no real score yet: run evaluate first"
    d, r = c["dream"]["mean_return"], c["real"]["mean_return"]
    rnd = agents.get("random")
    if c["kinder"]:
        if rnd is None:
            why = f"random play was not scored, so whether only {agent} is paid more is not known"
        elif rnd["kinder"]:
            why = (
                f"random play is paid more in the dream too: {model} misses deaths or invents "
                "rewards"
            )
        else:
            why = f"random play is not: {agent} exploits an error of {model}"
        return (
            f"WARNING: the dream is kinder than reality: {agent} scores {d:.2f} in its dream and "
            f"{r:.2f} in reality ({why}); its dream score overstates it"
        )
    if c["harsher"]:
        return (
            f"the dream is harsher than reality: {agent} scores {d:.2f} in its dream, {r:.2f} in "
            "reality"
        )
    return f"the dream is honest about {agent}: {d:.2f} in its dream, {r:.2f} in reality"


def measure_kindness(
    out: Path,
    world_model: WorldModel,
    starts: StartLatents,
    action_space: Any,
    agents: dict[str, tuple[Any, dict[str, Any]]],
    *,
    max_steps: int,
    episodes: int = 256,
    temperature: float = 1.0,
    termination: str = "the world model's",
    seed: int = 0,
    agent: str = "C",
    model: str = "M",
) -> dict[str, Any]:
    """Each of ``agents`` (name -> (dream policy, its real ``eval.json`` summary); ``controller``
    is the trained one) plays ``episodes`` whole dreams from ``starts``; their returns beside the
    real ones go to ``out/kindness.json`` (written atomically, returned) and the verdict is
    printed."""
    result = {}
    for name, (policy, real) in agents.items():
        _, returns = dream_episodes(
            world_model, starts, policy, action_space, episodes, temperature, max_steps, seed
        )
        result[name] = kindness(returns, real)
    data = {
        "episodes": episodes,
        "max_steps": int(max_steps),
        "temperature": temperature,
        "termination": termination,
        "agents": result,
        "verdict": kindness_line(result, agent, model),
    }
    atomic_write_json(Path(out) / KINDNESS_FILE, data)
    print(f"[dreamlab] {data['verdict']}", flush=True)
    return data


def kindness_of_run(
    out: Path,
    world_model: WorldModel,
    starts: StartLatents,
    store: Any,
    trained: tuple[Any, dict[str, Any]],
    env: tuple[str, dict[str, Any]],
    *,
    real_seed: int,
    seed: int = 0,
    episodes: int = 256,
    agent: str = "the agent",
    model: str = "the world model",
) -> dict[str, Any]:
    """:func:`measure_kindness` for a run whose evaluation scored only its trained agent
    (``trained``: its dream policy and real summary): random play is scored first in the real
    ``env`` (id, keywords) on as many episodes from the agent's first seed ``real_seed``, then
    both play whole dreams as long as the longest real episode (of the episode ``store`` the run
    learned from, whose action space random play samples, or the agent's)."""
    from dreamlab.envs import make_env
    from dreamlab.envs.policies import make_policy
    from dreamlab.eval.evaluate import evaluate_policy
    from dreamlab.rundir import store_action_space

    policy, real = trained
    action_space = store_action_space(store)
    longest = int(store.lengths.max())
    random = make_policy("random", action_space, seed=seed)
    random_real = evaluate_policy(
        lambda: make_env(env[0], **env[1]),
        random,
        int(real["episodes"]),
        env_name=env[0],
        seed=real_seed,
        record=False,
        progress=False,
        desc="random",
    ).summary()
    return measure_kindness(
        out,
        world_model,
        starts,
        action_space,
        {"controller": (policy, real), "random": (random, random_real)},
        max_steps=max([int(longest), *[int(n) for n in real.get("lengths", [])]]),
        episodes=episodes,
        seed=seed,
        agent=agent,
        model=model,
    )


def kindness_markdown(root: Path, labels: dict[str, str] | None = None) -> list[str]:
    """The report's section on ``root/kindness.json`` (none when it is absent): returns in whole
    dreams beside real ones, one row per agent (``labels`` name them)."""
    path = Path(root) / KINDNESS_FILE
    if not path.exists():
        return []
    k = read_json(path, "kindness")
    lines = [
        "## Is the dream kinder than reality?",
        "",
        f"**{k['verdict'][0].upper()}{k['verdict'][1:]}.**",
        "",
        "| agent | return in whole dreams | return in reality | dream - real |",
        "|---|---|---|---|",
    ]
    for name, a in k["agents"].items():
        d, r = a["dream"], a["real"]
        lines.append(
            f"| {(labels or {}).get(name, name)} | {d['mean_return']:.2f} ± {d['stderr']:.2f} | "
            f"{r['mean_return']:.2f} ± {r['stderr']:.2f} | {a['gap']:+.2f} |"
        )
    lines += [
        "",
        f"{k['episodes']} dreams per agent from real episodes' first frames, up to "
        f"{k['max_steps']} steps (the longest real episode), temperature {k['temperature']:g}, "
        f"deaths by {k['termination']} (± one standard error). Kinder: the gap exceeds twice "
        "its standard error and a tenth of the real score (or of its spread, if larger).",
        "",
    ]
    return lines
