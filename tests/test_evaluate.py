"""Evaluation in the real env: any batched SB3-shaped policy, episodes in lockstep slots."""

from __future__ import annotations

import numpy as np
import pytest

from dreamlab.envs import make_env
from dreamlab.envs.policies import make_policy
from dreamlab.eval.evaluate import evaluate_policy


def _score(policy_name: str, num_envs: int, episodes: int = 6) -> dict:
    env = make_env("catch")
    policy = make_policy(policy_name, env.action_space, seed=0)
    result = evaluate_policy(
        lambda: make_env("catch"),
        policy,
        episodes,
        env_name="catch",
        seed=3,
        num_envs=num_envs,
        progress=False,
    )
    return {"result": result, "summary": result.summary()}


def test_scores_do_not_depend_on_the_number_of_slots() -> None:
    one, four = _score("expert", 1), _score("expert", 4)
    assert one["result"].returns == four["result"].returns
    assert one["result"].lengths == four["result"].lengths


def test_summary_has_the_eval_json_fields_and_catch_rate() -> None:
    expert, random = _score("expert", 3)["summary"], _score("random", 3)["summary"]
    for key in ("env", "episodes", "mean_return", "std_return", "catch_rate", "balls"):
        assert key in expert
    assert expert["episodes"] == 6 and expert["balls"] == 30
    assert expert["catch_rate"] == 1.0 and expert["mean_return"] == 5.0
    assert random["catch_rate"] < 0.6


def test_best_and_worst_episodes_are_recorded_whole() -> None:
    result = _score("random", 2)["result"]
    best, worst = result.best_frames, result.worst_frames
    assert best is not None and worst is not None
    assert best.dtype == np.uint8 and best.shape[1:] == (64, 64, 3)
    assert len(best) == result.lengths[int(np.argmax(result.returns))] + 1
    assert len(worst) == result.lengths[int(np.argmin(result.returns))] + 1


def test_bad_episode_count_is_refused() -> None:
    with pytest.raises(ValueError, match="episodes"):
        evaluate_policy(
            lambda: make_env("catch"), make_policy("random", make_env("catch").action_space), 0
        )
