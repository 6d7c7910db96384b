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


def test_played_episodes_are_handed_over_whole_and_replay_exactly() -> None:
    env = make_env("catch")
    kept: dict[int, dict[str, np.ndarray]] = {}
    result = evaluate_policy(
        lambda: make_env("catch"),
        make_policy("random", env.action_space, seed=1),
        0,
        seed=50,
        num_envs=2,
        record=False,
        progress=False,
        indices=[4, 1, 7],
        on_episode=lambda i, ep: kept.__setitem__(i, ep),
    )
    assert sorted(kept) == [1, 4, 7] and result.episodes == 3
    for k, (i, ep) in enumerate(sorted(kept.items(), key=lambda kv: [4, 1, 7].index(kv[0]))):
        t = len(ep["action"])
        assert ep["obs"].shape == (t + 1, 64, 64, 3) and ep["action"].shape == (t, 1)
        assert ep["reward"].dtype == np.float32 and ep["terminated"][-1]
        assert float(ep["reward"].sum()) == result.returns[k] and t == result.lengths[k]
        # episode i was reset with seed + i: replaying its actions gives the same frames
        obs, _ = env.reset(seed=50 + i)
        np.testing.assert_array_equal(obs, ep["obs"][0])
        for step, action in enumerate(ep["action"]):
            obs, *_ = env.step(action)
            np.testing.assert_array_equal(obs, ep["obs"][step + 1])


def test_noisy_policy_explores_around_the_wrapped_policy() -> None:
    from gymnasium import spaces

    from dreamlab.envs import NoisyPolicy

    env = make_env("catch")
    expert = make_policy("expert", env.action_space)
    obs = np.stack([env.reset(seed=s)[0] for s in range(400)])
    start = np.ones(len(obs), bool)
    clean, _ = expert.predict(obs, None, start)
    same, _ = NoisyPolicy(expert, env.action_space, 0.0).predict(obs, None, start)
    np.testing.assert_array_equal(same, clean)
    noisy, _ = NoisyPolicy(expert, env.action_space, 0.3, seed=0).predict(obs, None, start)
    assert noisy.shape == clean.shape and np.all(np.abs(noisy) <= 1.0)
    unclipped = np.abs(clean) < 0.5
    assert 0.2 < np.std((noisy - clean)[unclipped]) < 0.4  # 0.3 of the half-range 1
    space = spaces.Discrete(3)
    discrete = make_policy("expert", space)
    base, _ = discrete.predict(obs, None, start)
    swapped, _ = NoisyPolicy(discrete, space, 0.3, seed=0).predict(obs, None, start)
    # a random action replaces 30 %, and a third of those happen to agree
    assert 0.12 < np.mean(swapped != base) < 0.28
    with pytest.raises(ValueError, match="noise"):
        NoisyPolicy(expert, env.action_space, 1.5)
