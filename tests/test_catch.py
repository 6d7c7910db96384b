"""Catch: Gymnasium compliance, determinism, rules read back from the pixels, and the policies."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

import dreamlab.envs as envs
from dreamlab.envs.catch import (
    BACKGROUND_COLOR,
    BALL_COLOR,
    HUD_HEIGHT,
    PADDLE_COLOR,
    PIP_COLOR,
    CatchConfig,
    CatchEnv,
    fold_x,
)
from dreamlab.envs.policies import BrownianPolicy, CatchExpert, RandomPolicy, make_policy

HARD = {"ball_speed_y": 3.0, "ball_speed_x": 3.0, "paddle_width": 8, "paddle_speed": 4.0}


def color_mask(frame: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    return np.all(frame == np.array(color, np.uint8), axis=-1)


def count_pips(frame: np.ndarray) -> int:
    return int(color_mask(frame[:HUD_HEIGHT], PIP_COLOR).sum()) // 4  # pips are 2x2


def run_episode(env: gym.Env, seed: int, action_seed: int) -> tuple[list[np.ndarray], list[float]]:
    env.action_space.seed(action_seed)
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs], []
    while True:
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        frames.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            return frames, rewards


def catch_rate(policy_name: str, discrete: bool, episodes: int, **config: object) -> float:
    """Fraction of balls caught over ``episodes`` episodes, 4 envs stepped as one batch."""
    num_envs = 4
    batch = [CatchEnv(discrete=discrete, **config) for _ in range(num_envs)]
    policy = make_policy(policy_name, batch[0].action_space, seed=0)
    if isinstance(policy, CatchExpert):
        policy = CatchExpert(discrete=discrete, config=batch[0].config)
    obs = np.stack([env.reset(seed=i)[0] for i, env in enumerate(batch)])
    starts = np.ones(num_envs, bool)
    next_seed, finished, caught, missed = num_envs, 0, 0, 0
    state = None
    while finished < episodes:
        actions, state = policy.predict(obs, state, starts)
        starts[:] = False
        for i, env in enumerate(batch):
            obs_i, _, terminated, truncated, info = env.step(actions[i])
            if terminated or truncated:
                finished += 1
                caught += info["caught"]
                missed += info["missed"]
                obs_i, _ = env.reset(seed=next_seed)
                next_seed += 1
                starts[i] = True
            obs[i] = obs_i
    return caught / (caught + missed)


@pytest.mark.parametrize("env_id", ["dreamlab/Catch-v0", "dreamlab/CatchDiscrete-v0"])
def test_passes_gymnasium_check_env(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped)
    expected = spaces.Discrete(3) if "Discrete" in env_id else spaces.Box(-1, 1, (1,), np.float32)
    assert env.action_space == expected
    assert env.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8)


def test_registration_is_idempotent_and_kwargs_reach_the_config() -> None:
    envs.register_envs()
    envs.register_envs()
    env = gym.make("dreamlab/CatchDiscrete-v0", num_balls=2, paddle_width=8)
    assert env.unwrapped.config == CatchConfig(num_balls=2, paddle_width=8, discrete=True)


def test_same_seed_same_episode_different_seed_differs() -> None:
    frames_a, rewards_a = run_episode(CatchEnv(), seed=7, action_seed=1)
    frames_b, rewards_b = run_episode(CatchEnv(), seed=7, action_seed=1)
    assert len(frames_a) == len(frames_b)
    assert all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b, strict=True))
    assert rewards_a == rewards_b
    frames_c, _ = run_episode(CatchEnv(), seed=8, action_seed=1)
    assert not np.array_equal(frames_a[0], frames_c[0])


def test_terminates_after_num_balls_with_reward_and_info_accounting() -> None:
    env = CatchEnv(num_balls=3)
    env.action_space.seed(0)
    obs, info = env.reset(seed=3)
    assert info == {"caught": 0, "missed": 0, "balls_left": 3}
    assert count_pips(obs) == 3
    rewards, steps = [], 0
    while True:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        assert not truncated
        assert count_pips(obs) == info["balls_left"]
        rewards.append(reward)
        if reward != 0:
            # The landing frame shows the ball resting on the paddle line.
            rows = np.nonzero(color_mask(obs, BALL_COLOR).any(axis=1))[0]
            assert rows.max() == env.config.paddle_top - 1
        if terminated:
            break
        assert steps < 1000
    assert sum(r != 0 for r in rewards) == 3
    assert info["caught"] == rewards.count(1.0)
    assert info["missed"] == rewards.count(-1.0)
    assert info["caught"] + info["missed"] == 3
    assert count_pips(obs) == 0
    # Each ball takes steps_per_ball steps, plus one entry step for every ball after the first.
    assert steps == 3 * env.config.steps_per_ball + 2
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


@pytest.mark.parametrize("seed", range(6))
def test_straight_falling_ball_is_caught_exactly_when_it_overlaps_the_paddle(seed: int) -> None:
    # No drift and a paddle that never moves: the outcome is decided by the first frame's pixels.
    env = CatchEnv(discrete=True, ball_speed_x=0.0, num_balls=1)
    obs, _ = env.reset(seed=seed)
    ball_cols = np.nonzero(color_mask(obs, BALL_COLOR).any(axis=0))[0]
    paddle_cols = np.nonzero(color_mask(obs, PADDLE_COLOR).any(axis=0))[0]
    overlaps = len(np.intersect1d(ball_cols, paddle_cols)) > 0
    reward = 0.0
    while reward == 0.0:
        obs, reward, terminated, _, info = env.step(1)  # stay
    assert terminated
    assert reward == (1.0 if overlaps else -1.0)
    assert info["caught"] == int(overlaps)


def test_ball_stays_whole_and_bounces_off_the_walls() -> None:
    env = CatchEnv(num_balls=20, ball_speed_x=2.0)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    xs = []
    terminated = False
    while not terminated:
        mask = color_mask(obs, BALL_COLOR)
        assert mask.sum() == env.config.ball_size**2
        xs.append(int(np.nonzero(mask.any(axis=0))[0][0]))
        assert not mask[:HUD_HEIGHT].any()
        obs, _, terminated, _, _ = env.step(env.action_space.sample())
    assert min(xs) <= 1 and max(xs) >= 64 - 3 - 1  # some ball reached each wall


def test_fold_x_reflects_between_walls() -> None:
    x = np.array([-3.0, 0.0, 5.0, 61.0, 64.0, 122.0, 125.0])
    np.testing.assert_allclose(fold_x(x, 61.0), [3.0, 0.0, 5.0, 61.0, 58.0, 0.0, 3.0])


def test_render_returns_the_observation() -> None:
    env = CatchEnv(render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(env.render(), obs)
    obs, *_ = env.step(np.array([1.0], np.float32))
    np.testing.assert_array_equal(env.render(), obs)


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="num_balls"):
        CatchEnv(num_balls=0)
    with pytest.raises(ValueError, match="num_balls"):
        CatchEnv(num_balls=50)  # more pips than fit the HUD
    with pytest.raises(ValueError, match="paddle_width"):
        CatchConfig(paddle_width=64)
    with pytest.raises(TypeError, match="ball_speed"):
        CatchEnv(ball_speed=3)
    with pytest.raises(ValueError, match="render_mode"):
        CatchEnv(render_mode="human")
    with pytest.raises(ValueError, match="expected 0, 1 or 2"):
        env = CatchEnv(discrete=True)
        env.reset(seed=0)
        env.step(3)


@pytest.mark.parametrize("discrete", [False, True])
def test_expert_from_pixels_catches_nearly_everything_random_does_not(discrete: bool) -> None:
    # Measured over 50 episodes (250 balls): expert 1.00, random 0.2 (see docs/envs.md).
    assert catch_rate("expert", discrete, episodes=50) >= 0.95
    assert catch_rate("random", discrete, episodes=50) <= 0.35


def test_expert_handles_the_hard_variant() -> None:
    assert catch_rate("expert", False, episodes=12, **HARD) >= 0.95


def test_random_policy_shapes_bounds_and_seeding() -> None:
    box = spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 0.5], np.float32))
    obs = np.zeros((5, 64, 64, 3), np.uint8)
    starts = np.ones(5, bool)
    actions, state = RandomPolicy(box, seed=1).predict(obs, None, starts)
    assert actions.shape == (5, 2) and actions.dtype == np.float32 and state is None
    assert np.all(actions >= box.low) and np.all(actions <= box.high)
    again, _ = RandomPolicy(box, seed=1).predict(obs, None, starts)
    np.testing.assert_array_equal(actions, again)
    discrete, _ = RandomPolicy(spaces.Discrete(3), seed=1).predict(obs, None, starts)
    assert discrete.shape == (5,) and set(discrete.tolist()) <= {0, 1, 2}


def test_brownian_policy_is_a_bounded_walk_that_restarts_at_episode_start() -> None:
    box = spaces.Box(-1.0, 1.0, (2,), np.float32)
    policy = BrownianPolicy(box, seed=0, sigma=0.1)
    obs = np.zeros((3, 8, 8, 3), np.uint8)
    actions, state = policy.predict(obs, None, np.ones(3, bool))
    steps = [actions]
    for _ in range(200):
        actions, state = policy.predict(obs, state, np.zeros(3, bool))
        steps.append(actions)
    walk = np.stack(steps)  # (T, N, A)
    assert np.all(walk >= -1.0) and np.all(walk <= 1.0)
    # Increments are small (sigma 0.1) unlike independent uniform draws (mean |diff| ~ 0.67).
    assert np.abs(np.diff(walk, axis=0)).mean() < 0.15
    restarted, _ = policy.predict(obs, state, np.array([True, False, False]))
    assert np.abs(restarted[1:] - walk[-1, 1:]).max() < 0.6
    # A CarRacing space gets a gas-up / brake-down drift so the car drives off.
    car = spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))
    policy = make_policy("brownian", car, seed=0)
    actions, state = policy.predict(obs, None, np.ones(3, bool))
    later = []
    for t in range(200):
        actions, state = policy.predict(obs, state, np.zeros(3, bool))
        if t >= 50:
            later.append(actions)
    gas_brake = np.stack(later)[..., 1:].mean(axis=(0, 1))  # (2,)
    assert gas_brake[0] > 0.8 and gas_brake[1] < 0.1


def test_brownian_discrete_is_sticky() -> None:
    policy = BrownianPolicy(spaces.Discrete(3), seed=0, repeat_prob=0.9)
    obs = np.zeros((1, 8, 8, 3), np.uint8)
    actions, state = policy.predict(obs, None, np.ones(1, bool))
    seq = [int(actions[0])]
    for _ in range(300):
        actions, state = policy.predict(obs, state, np.zeros(1, bool))
        seq.append(int(actions[0]))
    changes = sum(a != b for a, b in zip(seq, seq[1:], strict=False))
    assert changes < 60 and set(seq) == {0, 1, 2}


def test_make_policy_errors() -> None:
    with pytest.raises(ValueError, match="unknown policy 'greedy'"):
        make_policy("greedy", spaces.Discrete(3), 0)
    with pytest.raises(ValueError, match="Catch only"):
        make_policy("expert", spaces.Discrete(5), 0)
    with pytest.raises(ValueError, match="Box"):
        make_policy("random", spaces.MultiBinary(3), 0)
    with pytest.raises(ValueError, match=r"expected \(N, H, W, 3\)"):
        RandomPolicy(spaces.Discrete(3)).predict(np.zeros((64, 64, 3), np.uint8), None, np.ones(1))


def test_locate_objects_finds_ball_and_paddle_in_real_and_blurred_frames() -> None:
    from dreamlab.envs import locate_objects

    env = CatchEnv(frame_size=32, paddle_width=6)
    obs, _ = env.reset(seed=3)
    frames = [obs]
    truth = []
    for _ in range(6):
        truth.append((env._ball_x, env._ball_y, env._paddle_x))
        obs, *_ = env.step(np.array([0.7], np.float32))
        frames.append(obs)
    truth.append((env._ball_x, env._ball_y, env._paddle_x))
    batch = np.stack(frames)  # (7, 32, 32, 3)
    found = locate_objects(batch, env.config)
    c = env.config
    for i, (bx, by, px) in enumerate(truth):
        assert found["ball_visible"][i]
        assert abs(found["ball_x"][i] - (round(bx) + (c.ball_size - 1) / 2)) < 0.01
        assert abs(found["ball_y"][i] - (round(by) + (c.ball_size - 1) / 2)) < 0.01
        assert abs(found["paddle_x"][i] - (round(px) + (c.paddle_width - 1) / 2)) < 0.01
    # An imagined frame is float and blurred: mixing 20% background into every pixel keeps
    # each colour nearest its own palette entry.
    blurred = 0.8 * batch / 255.0 + 0.2 * np.array(BACKGROUND_COLOR) / 255.0
    again = locate_objects(blurred, env.config)
    np.testing.assert_allclose(again["ball_x"], found["ball_x"])
    # An empty frame has no ball and no paddle.
    empty = np.zeros((2, 32, 32, 3), np.uint8) + np.array(BACKGROUND_COLOR, np.uint8)
    none = locate_objects(empty, env.config)
    assert not none["ball_visible"].any() and np.isnan(none["paddle_x"]).all()
    with pytest.raises(ValueError, match="expected"):
        locate_objects(np.zeros((4, 4)), env.config)
