"""Fidelity measures on hand-written world models whose answers are known, and on a small V+M."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamlab.envs import make_env
from dreamlab.envs.catch import BACKGROUND_COLOR, CatchConfig
from dreamlab.eval.catch_probe import catch_config_for, position_probe
from dreamlab.eval.fidelity import FidelityConfig, measure_fidelity, open_loop
from dreamlab.eval.step_measures import (
    controllability,
    imagination_speed,
    reward_termination_recall,
)
from dreamlab.models import frames_to_tensor
from dreamlab.worldmodel import WorldModel

CATCH32 = CatchConfig(frame_size=32, paddle_width=6)
SPACE = gym.spaces.Discrete(3)


def _episodes(count: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Whole random episodes of catch-32 with discrete actions."""
    env = make_env("catch-32", discrete=True)
    episodes = []
    for i in range(count):
        obs, _ = env.reset(seed=seed + i)
        env.action_space.seed(seed + i)
        frames, actions, rewards, terms = [obs], [], [], []
        while True:
            a = env.action_space.sample()
            obs, r, term, trunc, _ = env.step(a)
            frames.append(obs)
            actions.append(a)
            rewards.append(r)
            terms.append(term)
            if term or trunc:
                break
        episodes.append(
            {
                "obs": np.stack(frames),
                "action": np.asarray(actions, np.int64),
                "reward": np.asarray(rewards, np.float32),
                "terminated": np.asarray(terms, bool),
            }
        )
    env.close()
    return episodes


@pytest.fixture(scope="module")
def episodes() -> list[dict[str, np.ndarray]]:
    return _episodes()


class _Base:
    """What every hand-written model shares: CPU, tiny features, start_state unused."""

    feature_dim = 1
    action_dim = 3

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def features(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return (
            next(iter(state.values())).float().reshape(len(next(iter(state.values()))), -1)[:, :1]
        )

    def start_state(self, start: Any, generator: Any = None) -> dict[str, torch.Tensor]:
        return self.initial_state(next(iter(start.values())).shape[0])


class Oracle(_Base):
    """Replays the real episodes it was given (row b = episode b): a perfect model."""

    def __init__(self, episodes: list[dict[str, np.ndarray]]) -> None:
        n = max(len(ep["action"]) for ep in episodes)

        def pad(x: np.ndarray, rows: int) -> np.ndarray:
            return np.concatenate([x, np.repeat(x[-1:], rows - len(x), 0)])

        self.obs = frames_to_tensor(np.stack([pad(ep["obs"], n + 1) for ep in episodes]))
        self.reward = torch.as_tensor(np.stack([pad(ep["reward"], n) for ep in episodes]))
        self.term = torch.as_tensor(np.stack([pad(ep["terminated"], n) for ep in episodes]))

    def initial_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        ep = torch.arange(batch_size) % len(self.obs)
        return {"t": torch.zeros(batch_size, dtype=torch.long), "ep": ep}

    def observe(self, state: dict[str, torch.Tensor], frames: torch.Tensor) -> Any:
        return state

    def step(self, state: Any, action: Any, temperature: float = 1.0, generator: Any = None):
        t, ep = state["t"], state["ep"]
        return {"t": t + 1, "ep": ep}, self.reward[ep, t], self.term[ep, t]

    def decode(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.obs[state["ep"], state["t"]]


class CopyLast(_Base):
    """Holds the last observed frame; predicts reward 0 and never ends."""

    def initial_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        return {"frame": torch.zeros(batch_size, 3, 32, 32)}

    def observe(self, state: Any, frames: torch.Tensor) -> Any:
        return {"frame": frames.clone()}

    def step(self, state: Any, action: Any, temperature: float = 1.0, generator: Any = None):
        n = len(state["frame"])
        return dict(state), torch.zeros(n), torch.zeros(n, dtype=torch.bool)

    def decode(self, state: Any) -> torch.Tensor:
        return state["frame"]


class NoisyCopy(CopyLast):
    """Copy-last plus sampled noise: ignores actions, but is stochastic."""

    def step(self, state: Any, action: Any, temperature: float = 1.0, generator: Any = None):
        noise = torch.rand(state["frame"].shape, generator=generator) * 0.1
        n = len(state["frame"])
        return {"frame": state["frame"] + noise}, torch.zeros(n), torch.zeros(n, dtype=torch.bool)


class ActionPainter(CopyLast):
    """Paints the whole frame grey level action / 2: the image *is* the action."""

    def step(
        self, state: Any, action: torch.Tensor, temperature: float = 1.0, generator: Any = None
    ):
        n = len(state["frame"])
        level = action.float().view(n, 1, 1, 1) / 2.0
        return {"frame": level.expand(n, 3, 32, 32).clone()}, torch.zeros(n), torch.zeros(n) > 0


def test_hand_written_models_satisfy_the_protocol() -> None:
    for model in (CopyLast(), NoisyCopy(), ActionPainter()):
        assert isinstance(model, WorldModel)


def test_oracle_is_perfect(episodes: list[dict[str, np.ndarray]]) -> None:
    ol = open_loop(Oracle(episodes), episodes, context=3, horizon=20)
    assert ol.mse.shape == (4, 20) and float(ol.mse.max()) == 0.0
    assert np.all(ol.psnr == 60.0)
    assert float(ol.reward_abs.max()) == 0.0
    np.testing.assert_array_equal(ol.imagined, ol.real)
    assert float(ol.baseline_mse.mean()) > 0  # the ball moves
    probe = position_probe(ol.imagined, ol.real, CATCH32)
    for key in ("ball_x_err", "ball_y_err", "paddle_x_err"):
        assert np.nanmax(probe[key]) == 0.0
    assert np.all(probe["ball_visible_agreement"] == 1.0)
    recall = reward_termination_recall(Oracle(episodes), episodes)
    assert set(recall["reward"]) <= {"-1", "0", "1"} and "0" in recall["reward"]
    assert all(v["recall"] == 1.0 for v in recall["reward"].values())
    assert recall["terminated"]["true"] == {"recall": 1.0, "count": 4}
    assert recall["terminated"]["false"]["recall"] == 1.0
    assert recall["steps"] == sum(len(ep["action"]) for ep in episodes)


def test_copy_last_model_equals_the_baseline(episodes: list[dict[str, np.ndarray]]) -> None:
    ol = open_loop(CopyLast(), episodes, context=5, horizon=10)
    np.testing.assert_array_equal(ol.mse, ol.baseline_mse)
    np.testing.assert_array_equal(ol.psnr, ol.baseline_psnr)
    # predicting reward 0 always: every 0 is right, every catch and miss is wrong
    recall = reward_termination_recall(CopyLast(), episodes, reward_classes=[-1.0, 0.0, 1.0])
    assert recall["reward"]["0"]["recall"] == 1.0
    rare = [recall["reward"][c] for c in ("-1", "1") if recall["reward"][c]["count"]]
    assert rare and all(r["recall"] == 0.0 for r in rare)
    assert recall["terminated"]["true"]["recall"] == 0.0
    assert recall["terminated"]["false"]["recall"] == 1.0


def test_probe_reads_a_one_pixel_shift(episodes: list[dict[str, np.ndarray]]) -> None:
    real = np.stack([ep["obs"][:30] for ep in episodes])  # (B, 30, 32, 32, 3)
    down = np.empty_like(real)
    down[..., 1:, :, :] = real[..., :-1, :, :]
    down[..., 0, :, :] = BACKGROUND_COLOR
    probe = position_probe(down, real, CATCH32)
    np.testing.assert_allclose(np.nanmean(probe["ball_y_err"]), 1.0)
    assert np.nanmax(probe["ball_x_err"]) == 0.0 and np.nanmax(probe["paddle_x_err"]) == 0.0
    with pytest.raises(ValueError, match="position_probe"):
        position_probe(real[:, 0], real[:, 0], CATCH32)


def test_controllability_is_zero_for_models_that_ignore_actions(
    episodes: list[dict[str, np.ndarray]],
) -> None:
    copy = controllability(CopyLast(), episodes, SPACE, catch=CATCH32)
    assert copy["pairwise_mse"] == 0.0 and copy["noise_mse"] == 0.0
    assert copy["paddle_x_spread"] == 0.0 and copy["actions"] == 3
    # a stochastic model that ignores actions: the same random numbers for every action
    noisy = controllability(NoisyCopy(), episodes, SPACE)
    assert noisy["pairwise_mse"] == 0.0 and noisy["noise_mse"] > 0.0
    # grey levels 0, 0.5, 1: pairwise squared differences 0.25, 1, 0.25
    painter = controllability(ActionPainter(), episodes, SPACE)
    assert painter["pairwise_mse"] == pytest.approx(0.5)
    box = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    assert controllability(ActionPainter(), episodes, box, continuous_actions=4)["actions"] == 4


def test_speed_and_the_whole_measure(episodes: list[dict[str, np.ndarray]]) -> None:
    speed = imagination_speed(CopyLast(), episodes[0]["obs"][:2], SPACE, batch_size=8, steps=5)
    assert speed["steps_per_s"] > 0 and len(speed["seconds"]) == 3
    cfg = FidelityConfig(context=3, horizon=20, speed_batch=8, speed_steps=3)
    result = measure_fidelity(Oracle(episodes), episodes, SPACE, cfg, catch=CATCH32)
    data = json.loads(json.dumps(result.to_json()))  # JSON-ready, no NaN
    assert data["open_loop"]["mse"]["at"] == {"1": 0.0, "5": 0.0, "10": 0.0, "20": 0.0}
    assert len(data["open_loop"]["psnr"]["curve"]) == 20
    assert data["copy_last"]["mse"]["at"]["20"] > data["copy_last"]["mse"]["at"]["1"] > 0
    assert data["probe"]["ball_x_err"]["at"]["5"] == 0.0
    assert data["recall"]["reward_balanced"] == 1.0
    assert result.notes == []
    skipped = measure_fidelity(CopyLast(), episodes, SPACE, cfg, catch=None)
    assert skipped.probe is None and "not a Catch env" in skipped.notes[0]
    with pytest.raises(ValueError, match="steps"):
        measure_fidelity(CopyLast(), episodes, SPACE, FidelityConfig(context=5, horizon=900))


def test_catch_config_for_reads_the_preset() -> None:
    cfg = catch_config_for("catch-32", {"discrete": True})
    assert cfg is not None and cfg.frame_size == 32 and cfg.paddle_width == 6 and cfg.discrete
    assert catch_config_for("CarRacing-v3") is None


def test_on_a_small_trained_v_and_m(tmp_path: Path, one_thread: None) -> None:
    """The measures run on a real V+M (continuous catch-32, briefly trained)."""
    from dreamlab.generations.vmc.run import Run
    from dreamlab.generations.vmc.stages import (
        stage_collect,
        stage_encode,
        stage_mdnrnn,
        stage_vae,
    )
    from dreamlab.models.mdnrnn import MDNRNNConfig
    from dreamlab.train.fit import TrainConfig

    quiet = {"progress": False, "tensorboard": False, "log_every": 50, "checkpoint_every": 500}
    run = Run.open(tmp_path / "vm", "catch-test")
    run.config.collect_episodes = 12
    run.config.vae_train = TrainConfig(steps=120, batch_size=32, lr=2e-3, **quiet)
    run.config.mdnrnn = MDNRNNConfig(hidden_size=32)
    run.config.mdnrnn_train = TrainConfig(steps=120, batch_size=8, lr=3e-3, **quiet)
    run.save_config()
    stage_collect(run, progress=False)
    stage_vae(run)
    stage_encode(run, progress=False)
    stage_mdnrnn(run)
    held = [run.data().episode(i) for i in run.data().indices[:6]]
    cfg = FidelityConfig(context=4, horizon=10, speed_batch=16, speed_steps=5)
    result = measure_fidelity(
        run.world_model(), held, run.action_space(), cfg, catch=catch_config_for("catch-32")
    )
    data = result.to_json()
    assert set(data["open_loop"]["mse"]["at"]) == {"1", "5", "10"}
    assert 0.0 < data["open_loop"]["mse"]["at"]["1"] < 0.2
    assert data["probe"] is not None and data["probe_copy_last"] is not None
    assert data["control"]["actions"] == 5 and data["control"]["pairwise_mse"] >= 0.0
    assert np.isfinite(data["control"]["paddle_x_spread"])
    assert 0.0 <= data["recall"]["terminated"]["false"]["recall"] <= 1.0
    assert data["speed"]["steps_per_s"] > 0
