"""RSSM world model: config, losses, save/load, the WorldModel protocol, existing tools on it,
and learning on real Catch frames."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamlab.checkpoint import load_model, save_model
from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import EpisodeStore
from dreamlab.dream import DreamEnv, DreamVecEnv
from dreamlab.envs import make_env
from dreamlab.eval.evaluate import evaluate_policy
from dreamlab.generations.rssm.trainer import Replay
from dreamlab.generations.rssm.worldmodel import RSSMWorldModel, rssm_start_states
from dreamlab.models import frames_to_tensor
from dreamlab.models.rssm import RSSM, RSSMConfig, TwoHot, rssm_preset, symexp, symlog
from dreamlab.worldmodel import WorldModel

TINY = rssm_preset("tiny", frame_size=32, action_kind="continuous", action_dim=1)

Check = Callable[..., None]  # the check fixture (conftest.py)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> EpisodeStore:
    path = tmp_path_factory.mktemp("rssm") / "data"
    collect(CollectConfig(env="catch-32", out=path, episodes=8, progress=False, workers=1))
    return EpisodeStore.open(path)


def _batch(store: EpisodeStore, batch_size: int = 4, seq_len: int = 12, seed: int = 0) -> dict:
    replay = Replay(seq_len)
    for i in store.indices:
        replay.add(store.episode(i))
    return {
        k: torch.as_tensor(v)
        for k, v in replay.sample(np.random.default_rng(seed), batch_size).items()
    }


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="frame_size"):
        RSSMConfig(frame_size=48)
    with pytest.raises(ValueError, match="reward_bins"):
        RSSMConfig(reward_bins=10)
    with pytest.raises(ValueError, match="unknown RSSM preset"):
        rssm_preset("huge")
    assert rssm_preset("dreamerv3-s").stoch_dim == 32 * 32


def test_symlog_and_two_hot() -> None:
    x = torch.tensor([-100.0, -1.0, 0.0, 0.3, 5.0, 1e4])
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-4, atol=1e-5)
    twohot = TwoHot(255)
    # the logits that minimise the two-hot loss decode back to the target
    target = torch.tensor([0.0, 1.0, -1.0, 3.7])
    logits = torch.zeros(4, 255, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        twohot.loss(logits, target).sum().backward()
        opt.step()
    torch.testing.assert_close(twohot.mean(logits.detach()), target, atol=0.05, rtol=0.02)


def test_compute_loss_shapes_and_gradients(store: EpisodeStore) -> None:
    torch.manual_seed(0)
    model = RSSM(TINY)
    loss, metrics = model.compute_loss(_batch(store))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert {"image", "reward", "cont", "kl_dyn", "kl_rep"} <= set(metrics)
    # free bits: the KL terms are floored
    assert metrics["kl_dyn"] >= 0
    with pytest.raises(ValueError, match="batch needs key"):
        model.compute_loss({"obs": torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8)})


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RSSM(dataclasses.replace(TINY, action_kind="discrete", action_dim=3))
    save_model(tmp_path / "wm", model)
    loaded = load_model(tmp_path / "wm", RSSM)
    assert isinstance(loaded, RSSM) and loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_world_model_protocol_shapes() -> None:
    torch.manual_seed(0)
    wm = RSSMWorldModel(RSSM(TINY), gym.spaces.Box(-1, 1, (1,), np.float32))
    assert isinstance(wm, WorldModel)
    state = wm.initial_state(3)
    state = wm.observe(state, torch.rand(3, 3, 32, 32))
    assert wm.features(state).shape == (3, TINY.feature_dim)
    nxt, reward, terminated = wm.step(state, torch.zeros(3, 1))
    assert reward.shape == (3,) and terminated.dtype == torch.bool
    assert not torch.equal(nxt["deter"], state["deter"])
    assert wm.decode(nxt).shape == (3, 3, 32, 32)
    # one-hot latents: S variables each with one class set
    assert torch.allclose(nxt["stoch"].view(3, TINY.stoch, TINY.classes).sum(-1), torch.ones(3, 8))
    with pytest.raises(ValueError, match="does not fit"):
        RSSMWorldModel(RSSM(TINY), gym.spaces.Discrete(3))
    with pytest.raises(ValueError, match="frames of shape"):
        wm.observe(wm.initial_state(1), torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="'deter' and 'stoch'"):
        wm.start_state({"mu": torch.zeros(1, 4)})


def test_dream_env_and_planner_run_on_an_rssm(store: EpisodeStore) -> None:
    """The existing tools (DreamEnv/DreamVecEnv, the CEM planner) take an RSSM unchanged."""
    from gymnasium.utils.env_checker import check_env

    from dreamlab.plan.mpc import PlannerAgent, PlannerConfig

    torch.manual_seed(0)
    space = gym.spaces.Box(-1, 1, (1,), np.float32)
    wm = RSSMWorldModel(RSSM(TINY), space)
    bank = rssm_start_states(wm, store, frames="all", max_episodes=3)
    assert bank["deter"].shape[1] == TINY.deter and bank["deter"].shape[0] > 3
    env = DreamEnv(wm, bank, space, max_episode_steps=20, render_mode="rgb_array")
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (TINY.feature_dim,)
    assert env.render().shape == (32, 32, 3)
    vec = DreamVecEnv(wm, bank, space, num_envs=5, max_episode_steps=10)
    vec.reset(seed=1)
    for _ in range(12):
        obs, reward, terminated, truncated, _ = vec.step(np.zeros((5, 1), np.float32))
    assert obs.shape == (5, TINY.feature_dim) and np.isfinite(reward).all()

    agent = PlannerAgent(wm, space, PlannerConfig(horizon=4, population=16, iterations=2))
    result = evaluate_policy(
        lambda: gym.wrappers.TimeLimit(make_env("catch-32"), 15),
        agent,
        2,
        num_envs=2,
        record=False,
        progress=False,
    )
    assert result.episodes == 2 and all(n == 15 for n in result.lengths)


def test_many_futures_sample_from_an_rssm(store: EpisodeStore) -> None:
    """Uncertainty sampling (K futures of one action sequence) takes an RSSM unchanged."""
    from dreamlab.eval.futures import sample_futures

    torch.manual_seed(0)
    space = gym.spaces.Box(-1, 1, (1,), np.float32)
    wm = RSSMWorldModel(RSSM(TINY), space)
    ep = store.episode(store.indices[0])
    res = sample_futures(
        wm,
        ep["obs"][:2],
        ep["action"][1:9],
        num_samples=6,
        seed=0,
        context_actions=ep["action"][:1],
    )
    assert res.frames.shape == (6, 9, 32, 32, 3) and res.reward.shape == (6, 8)
    # the stochastic latent is sampled: the K futures differ
    assert float(res.frames.astype(np.float32).std(axis=0).mean()) > 0


def _ball_rows_cols(frames: torch.Tensor) -> torch.Tensor:
    """Centre (row, col) of the yellow ball ``(N, 2)``: pixels with high R and G, low B."""
    r, g, b = frames[:, 0], frames[:, 1], frames[:, 2]
    ball = ((r > 0.7) & (g > 0.55) & (b < 0.5)).float()  # (N, H, W)
    mass = ball.sum((-2, -1)).clamp(min=1e-6)
    rows = torch.arange(frames.shape[-2]).float()
    cols = torch.arange(frames.shape[-1]).float()
    return torch.stack(
        [(ball.sum(-1) * rows).sum(-1) / mass, (ball.sum(-2) * cols).sum(-1) / mass], -1
    )


@pytest.mark.learning
def test_world_model_loss_falls(store: EpisodeStore, seed: int, check: Check) -> None:
    torch.manual_seed(seed)
    model = RSSM(dataclasses.replace(TINY, foreground_weight=10.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(30):
        loss, metrics = model.compute_loss(_batch(store, 8, 12, seed=1_000 * seed + step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["image"])
    check("image loss last / first", np.mean(losses[-5:]) / np.mean(losses[:3]), "<", 0.5)


@pytest.mark.slow
def test_rssm_learns_catch_frames_and_the_ball(store: EpisodeStore, one_thread: None) -> None:
    """A tiny RSSM reconstructs where the ball is on real Catch frames (~2 min on one core)."""
    torch.manual_seed(0)
    model = RSSM(dataclasses.replace(TINY, foreground_weight=10.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1000):
        loss, _ = model.compute_loss(_batch(store, 16, 16, seed=step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    wm = RSSMWorldModel(model, gym.spaces.Box(-1, 1, (1,), np.float32))
    ep = store.episode(store.indices[-1])
    frames = frames_to_tensor(ep["obs"][:40])  # (T, 3, H, W)
    state = wm.initial_state(1)
    recons = []
    for t in range(len(frames)):
        state = wm.observe(state, frames[t : t + 1])
        recons.append(wm.decode(state))
        state, _, _ = wm.step(state, torch.as_tensor(ep["action"][t : t + 1]))
    recon = torch.cat(recons)
    true_pos, pred_pos = _ball_rows_cols(frames), _ball_rows_cols(recon)
    error = (true_pos - pred_pos).norm(dim=-1)  # (T,) pixels
    assert float(error.median()) < 2.0, error
