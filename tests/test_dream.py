"""DreamEnv / DreamVecEnv over a hand-written toy world and over a tiny untrained V+M."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from test_worldmodel import ToyWorld, tiny_vm, toy_start_bank

from dreamlab.dream import DreamEnv, DreamVecEnv

BOX1 = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def vm_bank(n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"mu": torch.randn(n, 4, generator=g), "logvar": torch.full((n, 4), -2.0)}


@pytest.mark.parametrize("discrete", [False, True])
def test_dream_env_passes_check_env_with_the_toy_world(discrete: bool) -> None:
    space = gym.spaces.Discrete(3) if discrete else BOX1
    env = DreamEnv(
        ToyWorld(discrete), toy_start_bank(), space, max_episode_steps=20, render_mode="rgb_array"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env's warnings count as failures here ...
        # ... except this one: features ([z, h]) are honestly unbounded, z is Gaussian.
        warnings.filterwarnings("ignore", message=".*infinity.*")
        check_env(env, skip_render_check=True)  # render is tested below (no spec)


@pytest.mark.parametrize("discrete", [False, True])
def test_dream_env_passes_check_env_with_a_tiny_vm_world_model(discrete: bool) -> None:
    space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    env = DreamEnv(
        tiny_vm(discrete),
        vm_bank(),
        space,
        temperature=1.15,
        max_episode_steps=10,
        render_mode="rgb_array",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*infinity.*")
        check_env(env, skip_render_check=True)  # render is tested below (no spec)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (12,) and obs.dtype == np.float32
    frame = env.render()
    assert frame is not None and frame.shape == (16, 16, 3) and frame.dtype == np.uint8


def test_dream_env_truncates_and_needs_reset() -> None:
    env = DreamEnv(ToyWorld(), toy_start_bank(), BOX1, max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(1, np.float32))[3] for _ in range(3)]
    assert flags == [False, False, True]
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(1, np.float32))


def test_temperature_changes_the_dream() -> None:
    def run(tau: float) -> np.ndarray:
        env = DreamEnv(
            tiny_vm(), vm_bank(), gym.spaces.Box(-1.0, 1.0, (2,), np.float32), temperature=tau
        )
        env.reset(seed=5)
        return env.step(np.zeros(2, np.float32))[0]  # one step: an untrained M may terminate

    np.testing.assert_array_equal(run(0.0), run(0.0))  # tau = 0 is deterministic
    assert not np.allclose(run(0.0), run(1.5))


def test_vec_env_autoresets_finished_dreams_in_the_same_step() -> None:
    bank = {"x0": torch.tensor([2.9, 0.0]), "goal": torch.tensor([0.0, 0.0])}
    env = DreamVecEnv(ToyWorld(), bank, BOX1, 4, max_episode_steps=5, temperature=0.0)
    # dreams 0, 1 start at the edge (x0 = 2.9) and fall off with a push; 2, 3 start at 0.
    env.reset_tensor(seed=0, start_indices=torch.tensor([0, 0, 1, 1]))
    push = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    obs, reward, terminated, truncated, final_obs = env.step_tensor(push)
    assert terminated.tolist() == [True, True, False, False]
    assert final_obs is not None
    np.testing.assert_allclose(final_obs[:2, 0].numpy(), [3.15, 3.15], rtol=1e-6)
    assert (obs[:2, 0].abs() < 3.0).all()  # already a fresh start (x0 is 2.9 or 0.0)
    assert env.elapsed_steps.tolist() == [0, 0, 1, 1]
    # Truncation: the calm dreams hit the 5-step limit and are reset too.
    for _ in range(4):
        obs, reward, terminated, truncated, final_obs = env.step_tensor(torch.zeros(4, 1))
    assert truncated[2:].tolist() == [True, True] and not terminated[2:].any()
    assert env.elapsed_steps[2:].tolist() == [0, 0]


def test_vec_env_numpy_api_and_final_obs_info() -> None:
    bank = {"x0": torch.tensor([2.9]), "goal": torch.tensor([0.0])}
    env = DreamVecEnv(ToyWorld(), bank, BOX1, 3, temperature=0.0, render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, 2) and obs.dtype == np.float32 and info == {}
    assert env.observation_space.shape == (3, 2) and env.action_space.shape == (3, 1)
    obs, reward, terminated, truncated, info = env.step(np.array([[1.0], [0.0], [1.0]], np.float32))
    assert reward.dtype == np.float64 and terminated.tolist() == [True, False, True]
    assert info["_final_obs"].tolist() == [True, False, True]
    assert info["final_obs"].shape == (3, 2)
    frames = env.render()
    assert frames is not None and frames.shape == (3, 8, 8, 3) and frames.dtype == np.uint8
    env.close()


def test_vec_env_is_reproducible_from_a_seed_and_batched_over_vm() -> None:
    def rollout(seed: int) -> np.ndarray:
        env = DreamVecEnv(tiny_vm(), vm_bank(), gym.spaces.Box(-1.0, 1.0, (2,), np.float32), 16)
        obs = [env.reset_tensor(seed=seed)]
        for _ in range(4):
            obs.append(env.step_tensor(torch.full((16, 2), 0.3))[0])
        return torch.stack(obs).numpy()

    np.testing.assert_array_equal(rollout(3), rollout(3))
    assert not np.allclose(rollout(3), rollout(4))


def test_vec_env_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same number of rows"):
        DreamVecEnv(ToyWorld(), {"x0": torch.zeros(3), "goal": torch.zeros(2)}, BOX1, 2)
    env = DreamVecEnv(ToyWorld(), toy_start_bank(), BOX1, 2)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step_tensor(torch.zeros(2, 1))
    env.reset_tensor(seed=0)
    with pytest.raises(ValueError, match="actions for 2 dreams"):
        env.step_tensor(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="start_indices"):
        env.reset_tensor(start_indices=torch.tensor([0, 99]))
