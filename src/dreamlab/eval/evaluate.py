"""Evaluate any policy with a batched ``predict`` in the real environment.

The policy only has to follow the Stable-Baselines3 shape
``predict(obs (N, H, W, 3), state, episode_start (N,)) -> (actions (N, ...), state)``, so the same
function scores the random policy, the scripted expert, the V+M+C agent, a planner or a BC policy.
Episodes run in lockstep slots (:func:`dreamlab.data.rollout.play_episodes`): one batched
``predict`` call per step for every slot still playing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from dreamlab.data.rollout import EpisodeResult, Policy, play_episodes
from dreamlab.progress import tqdm

if TYPE_CHECKING:
    from dreamlab.plan.mpc import PlannerConfig
    from dreamlab.worldmodel import WorldModel

__all__ = ["EvalResult", "Policy", "evaluate_policy", "score_agents"]


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
            "lengths": [int(n) for n in self.lengths],
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
    envs = [make_env() for _ in range(max(1, min(num_envs, episodes)))]
    best: tuple[float, np.ndarray | None] = (-np.inf, None)
    worst: tuple[float, np.ndarray | None] = (np.inf, None)
    t0 = time.perf_counter()
    bar = tqdm(total=episodes, desc=desc, unit="ep", disable=not progress, leave=False)

    def finished(episode: EpisodeResult) -> None:
        nonlocal best, worst
        if on_episode is not None and episode.arrays is not None:
            on_episode(numbers[episode.number], episode.arrays)
        if record and episode.arrays is not None:
            if episode.episode_return > best[0]:
                best = (episode.episode_return, episode.arrays["obs"])
            if episode.episode_return < worst[0]:
                worst = (episode.episode_return, episode.arrays["obs"])
        bar.update(1)

    try:
        played = play_episodes(
            envs,
            policy,
            [seed + n for n in numbers],
            keep_arrays=record or on_episode is not None,
            on_episode=finished,
        )
    finally:
        bar.close()
        for env in envs:
            env.close()
    return EvalResult(
        env=env_name,
        returns=[e.episode_return for e in played],
        lengths=[e.length for e in played],
        caught=[int(e.info.get("caught", 0)) for e in played],
        missed=[int(e.info.get("missed", 0)) for e in played],
        seconds=time.perf_counter() - t0,
        best_frames=best[1],
        worst_frames=worst[1],
    )


def score_agents(
    out_dir: str | Path,
    trained: Policy | None,
    env_id: str,
    env_kwargs: dict[str, Any],
    names: Sequence[str],
    episodes: int,
    *,
    seed: int = 0,
    progress: bool = True,
    world_model: Callable[[], WorldModel] | None = None,
    planner: PlannerConfig | None = None,
) -> dict[str, Any]:
    """``dreamlab evaluate`` for a run of any generation: score each agent of ``names``
    (``controller`` = the run's ``trained`` agent, ``random``, ``expert``, and ``planner``:
    CEM/MPPI with ``planner``'s settings in the dream of ``world_model()``, the run's loaded
    world model) over ``episodes`` real episodes on the same seeds, write ``OUT/eval.json``
    (merged with earlier agents') and videos of each agent's best and worst episode, print one
    line per agent.

    Raises:
        ValueError: an agent name this run cannot give, or no trained agent yet.
    """
    from dreamlab.envs import make_env
    from dreamlab.envs.policies import make_policy
    from dreamlab.io import atomic_write_json, read_json
    from dreamlab.plan.mpc import PlannerAgent
    from dreamlab.rundir import run_action_space
    from dreamlab.viz import write_video

    out = Path(out_dir)
    known = ("controller", "random", "expert", *(("planner",) if world_model else ()))
    for name in names:
        if name not in known:
            raise ValueError(f"{out}: agent {name!r} is not one this run has; use {known}")
    if "controller" in names and trained is None:
        raise ValueError(f"{out}: no trained agent yet; run `dreamlab pipeline --run {out}` first")
    space = run_action_space(out, env_id, env_kwargs)
    file = out / "eval.json"
    results: dict[str, Any] = read_json(file, "eval") if file.exists() else {}
    results.setdefault("agents", {})
    for name in names:
        if name == "planner":
            assert world_model is not None
            policy: Any = PlannerAgent(world_model(), space, planner)
        else:
            policy = trained if name == "controller" else make_policy(name, space, seed=seed)
        assert policy is not None
        r = evaluate_policy(
            lambda: make_env(env_id, **env_kwargs),
            policy,
            episodes,
            env_name=env_id,
            seed=seed,
            progress=progress,
            desc=f"evaluate {name}",
        )
        summary = r.summary()
        if isinstance(policy, PlannerAgent):
            summary["planner"] = policy.config.to_dict()
            summary["planning"] = policy.timing()
        for which, frames in (("best", r.best_frames), ("worst", r.worst_frames)):
            if frames is not None:
                write_video(out / f"eval_{name}_{which}.mp4", frames, fps=15)
        results["agents"][name] = summary
        extra = f", catch rate {summary['catch_rate']:.2f}" if "catch_rate" in summary else ""
        print(
            f"{name:>18}: return {summary['mean_return']:.2f} ± {summary['std_return']:.2f} "
            f"over {summary['episodes']} episodes{extra}"
        )
    atomic_write_json(file, results)
    return results
