"""Dreamer: actor-critic in imagination, the online loop (resume, eval.json), the pipeline preset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamlab.checkpoint import load_model, save_model
from dreamlab.cli import main
from dreamlab.generations.rssm.agent import DreamerAgent
from dreamlab.generations.rssm.config import DreamerConfig, get_dreamer_preset
from dreamlab.generations.rssm.online import train_dreamer
from dreamlab.models.actor_critic import ActorCritic, ActorCriticConfig
from dreamlab.models.rssm import RSSM, rssm_preset
from dreamlab.train.imagination import ImaginationConfig, ImaginationTrainer, lambda_returns


def test_lambda_returns_by_hand() -> None:
    rewards = torch.tensor([[1.0], [0.0], [2.0]])  # (H=3, N=1)
    conts = torch.tensor([[1.0], [0.0], [1.0]])
    values = torch.tensor([[0.5], [1.0], [3.0], [4.0]])
    g, lam = 0.9, 0.5
    r2 = 2.0 + g * 1.0 * ((1 - lam) * 4.0 + lam * 4.0)
    r1 = 0.0 + g * 0.0 * ((1 - lam) * 3.0 + lam * r2)
    r0 = 1.0 + g * 1.0 * ((1 - lam) * 1.0 + lam * r1)
    out = lambda_returns(rewards, conts, values, g, lam)
    torch.testing.assert_close(out[:, 0], torch.tensor([r0, r1, r2]))


def test_configs_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="horizon"):
        ImaginationConfig(horizon=0)
    with pytest.raises(ValueError, match="action_high"):
        ActorCriticConfig(action_low=(1.0,), action_high=(0.0,))
    with pytest.raises(ValueError, match="num_envs"):
        DreamerConfig(num_envs=0)
    with pytest.raises(ValueError, match="unknown Dreamer preset"):
        get_dreamer_preset("nope")


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_imagination_update_changes_actor_and_critic(kind: str, one_thread: None) -> None:
    torch.manual_seed(0)
    n = 3 if kind == "discrete" else 2
    rssm = RSSM(rssm_preset("tiny", frame_size=16, action_kind=kind, action_dim=n))  # type: ignore[arg-type]
    ac_cfg = ActorCriticConfig(
        feature_dim=rssm.config.feature_dim,
        action_kind=kind,  # type: ignore[arg-type]
        action_dim=n,
        action_low=(-1.0, 0.0),
        action_high=(1.0, 2.0),
        hidden=32,
        value_bins=31,
    )
    ac = ActorCritic(ac_cfg)
    before = [p.detach().clone() for p in ac.actor.parameters()]
    slow_before = [p.detach().clone() for p in ac.slow_critic.parameters()]
    trainer = ImaginationTrainer(ac, ImaginationConfig(horizon=5, actor_lr=1e-3, critic_lr=1e-3))
    deter = torch.randn(20, rssm.config.deter)
    stoch = rssm.sample_stoch(rssm.prior_logits(deter)).detach()
    metrics = trainer.update(rssm, deter, stoch)
    assert all(np.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, ac.actor.parameters(), strict=True))
    trainer.update(rssm, deter, stoch)
    assert any(
        not torch.equal(a, b) for a, b in zip(slow_before, ac.slow_critic.parameters(), strict=True)
    )
    # env actions respect the bounds / the index range
    act = ac.to_env(ac.policy(torch.randn(50, ac_cfg.feature_dim)).sample())
    if kind == "discrete":
        assert act.dtype == torch.int64 and int(act.min()) >= 0 and int(act.max()) < n
    else:
        low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])
        assert bool(((act >= low) & (act <= high)).all())


def test_actor_critic_save_load_round_trip(tmp_path: Path) -> None:
    ac = ActorCritic(ActorCriticConfig(feature_dim=8, hidden=16, value_bins=15))
    ac.return_scale.fill_(3.5)
    save_model(tmp_path / "ac", ac)
    loaded = load_model(tmp_path / "ac", ActorCritic)
    assert isinstance(loaded, ActorCritic)
    assert float(loaded.return_scale) == 3.5
    x = torch.randn(4, 8)
    torch.testing.assert_close(loaded.value(x), ac.value(x))


def _debug_config(**changes: object) -> DreamerConfig:
    return dataclasses.replace(get_dreamer_preset("catch-dreamer-debug"), **changes)  # type: ignore[arg-type]


def test_online_loop_writes_eval_and_resumes(tmp_path: Path, one_thread: None) -> None:
    out = tmp_path / "run"
    cfg = _debug_config(total_env_steps=300)
    result = train_dreamer(cfg, out)
    assert result.env_steps == 300 and result.updates > 0
    for name in ("config.json", "trainer.json", "metrics.jsonl", "eval.json"):
        assert (out / name).exists(), name
    evals = json.loads((out / "eval.json").read_text())
    assert evals["final"]["episodes"] == cfg.final_eval_episodes
    assert 0.0 <= evals["final"]["catch_rate"] <= 1.0
    assert len(evals["history"]) == 1  # eval_every=200
    # running again is a no-op; a different config is refused
    again = train_dreamer(cfg, out)
    assert (again.env_steps, again.updates) == (result.env_steps, result.updates)
    with pytest.raises(ValueError, match="other settings"):
        train_dreamer(dataclasses.replace(cfg, batch_size=8), out)
    # extending the budget continues from the checkpoint (weights, counters, replay)
    data = json.loads((out / "config.json").read_text())
    data["config"]["total_env_steps"] = 500
    (out / "config.json").write_text(json.dumps(data))
    longer = train_dreamer(dataclasses.replace(cfg, total_env_steps=500), out)
    assert longer.env_steps == 500 and longer.updates > result.updates
    assert longer.episodes >= result.episodes
    agent = DreamerAgent.load(out)
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    actions, state = agent.predict(frames)
    assert actions.shape == (2,) and actions.dtype == np.int64
    assert state["deter"].shape[0] == 2


def test_pipeline_cli_runs_the_dreamer_preset(tmp_path: Path, one_thread: None) -> None:
    run = tmp_path / "dreamer"
    assert main(["pipeline", "--preset", "catch-dreamer-debug", "--run", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "catch rate" in report
    # the same directory cannot be reused for a V/M/C preset
    assert main(["pipeline", "--preset", "catch-dreamer", "--run", str(run)]) == 2


def test_compare_models_measures_run_on_an_rssm(one_thread: None) -> None:
    """The fidelity measures and dream_return (used by compare-models) take an RSSM world model."""
    import gymnasium as gym

    from dreamlab.compare_models import dream_return
    from dreamlab.envs import make_env
    from dreamlab.eval.catch_probe import catch_config_for
    from dreamlab.eval.fidelity import FidelityConfig, measure_fidelity
    from dreamlab.generations.rssm.worldmodel import RSSMWorldModel

    torch.manual_seed(0)
    space = gym.spaces.Box(-1, 1, (1,), np.float32)
    wm = RSSMWorldModel(RSSM(rssm_preset("tiny", frame_size=32)), space)
    env = make_env("catch-32")
    episodes = []
    for seed in range(2):
        obs, _ = env.reset(seed=seed)
        frames, actions, rewards = [obs], [], []
        for _ in range(12):
            a = env.action_space.sample()
            obs, r, *_ = env.step(a)
            frames.append(obs)
            actions.append(a)
            rewards.append(r)
        episodes.append(
            {
                "obs": np.stack(frames),
                "action": np.asarray(actions, np.float32),
                "reward": np.asarray(rewards, np.float32),
                "terminated": np.zeros(12, bool),
            }
        )
    cfg = FidelityConfig(context=3, horizon=8, speed_batch=4, speed_steps=2, speed_repeats=1)
    result = measure_fidelity(wm, episodes, space, cfg, catch=catch_config_for("catch-32"))
    assert result.open_loop.mse.shape == (2, 8) and result.open_loop.reward_abs.shape == (2, 8)
    assert result.control["actions"] == cfg.continuous_actions
    start = {"deter": torch.zeros(4, 128), "stoch": torch.zeros(4, 64)}
    value = dream_return(wm, start, space, lambda f: torch.zeros(f.shape[0], 1), 4, 10)
    assert np.isfinite(value)
