"""The CEM / MPPI planner on a world model whose best plan is known exactly.

``LineWorld`` is a tiny hand-written world model: a point on a line moved by the action, rewarded
for being near a target that the frame encodes. Its optimum is known (head for the target and
stay), so the tests check that each search method finds it, for continuous and discrete actions,
through the same ``WorldModel`` protocol every learned model implements. Learning on real Catch
with a trained V+M is tested in ``tests/test_catch_learning.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamlab.eval.evaluate import evaluate_policy
from dreamlab.plan.mpc import Planner, PlannerAgent, PlannerConfig
from dreamlab.worldmodel import State, WorldModel

Check = Callable[..., None]  # the check fixture (conftest.py)


class LineWorld:
    """x in [-1, 1]; the action moves x by ``0.2 * a``; reward ``-|x - target|`` per step.

    The frame's red channel mean encodes the target (``(target + 1) / 2``) and its green channel
    mean encodes x, so ``observe`` reads both from pixels like a real world model would.
    Discrete actions (0, 1, 2) mean a = -1, 0, +1.
    """

    feature_dim = 2
    action_dim = 1

    def __init__(self, discrete: bool = False) -> None:
        self.discrete = discrete
        self.steps = 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def initial_state(self, batch_size: int) -> State:
        return {"x": torch.zeros(batch_size), "target": torch.zeros(batch_size)}

    def observe(self, state: State, frames: torch.Tensor) -> State:
        return {
            "target": frames[:, 0].mean((1, 2)) * 2 - 1,
            "x": frames[:, 1].mean((1, 2)) * 2 - 1,
        }

    def step(
        self,
        state: State,
        action: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        self.steps += action.shape[0]
        a = action.float() - 1 if self.discrete else action[:, 0]
        x = (state["x"] + 0.2 * a).clamp(-1, 1)
        reward = -(x - state["target"]).abs()
        return {"x": x, "target": state["target"]}, reward, torch.zeros_like(x, dtype=torch.bool)

    def decode(self, state: State) -> torch.Tensor:
        return frame_for(state["x"], state["target"])

    def features(self, state: State) -> torch.Tensor:
        return torch.stack([state["x"], state["target"]], -1)

    def start_state(self, start: dict[str, torch.Tensor], generator=None) -> State:
        return dict(start)


def frame_for(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Frames ``(B, 3, 8, 8)`` encoding target (red) and x (green)."""
    frames = torch.zeros(x.shape[0], 3, 8, 8)
    frames[:, 0] = ((target + 1) / 2)[:, None, None]
    frames[:, 1] = ((x + 1) / 2)[:, None, None]
    return frames


class LineEnv(gym.Env[np.ndarray, np.ndarray]):
    """The real env behind ``LineWorld`` (uint8 frames), for the evaluation round trip."""

    def __init__(self, discrete: bool = False) -> None:
        self.discrete = discrete
        self.observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
        self.action_space = (
            gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (1,), np.float32)
        )

    def _obs(self) -> np.ndarray:
        frame = frame_for(torch.tensor([self.x]), torch.tensor([self.target]))[0]
        return (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        self.x, self.t = 0.0, 0
        self.target = float(self.np_random.choice([-0.8, 0.8]))
        return self._obs(), {}

    def step(self, action):
        a = float(action) - 1 if self.discrete else float(np.asarray(action).reshape(-1)[0])
        self.x = float(np.clip(self.x + 0.2 * np.clip(a, -1, 1), -1, 1))
        self.t += 1
        return self._obs(), -abs(self.x - self.target), False, self.t >= 12, {}


def state_at(x: float, target: float, n: int = 1) -> State:
    return {"x": torch.full((n,), x), "target": torch.full((n,), target)}


@pytest.mark.parametrize("method", ["cem", "mppi"])
@pytest.mark.parametrize("discrete", [False, True])
def test_planner_finds_the_known_best_first_action(method: str, discrete: bool) -> None:
    space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (1,), np.float32)
    cfg = PlannerConfig(method=method, horizon=8, population=64, iterations=3, seed=1)
    planner = Planner(LineWorld(discrete), space, cfg)
    # Two envs at once: one must go right, the other left.
    state = {"x": torch.tensor([-0.6, 0.6]), "target": torch.tensor([0.6, -0.6])}
    first, plan, best = planner.plan(state)
    if discrete:
        assert first.tolist() == [2, 0]
        assert plan["probs"].shape == (2, 8, 3)
    else:
        assert first[0, 0] > 0.5 and first[1, 0] < -0.5
        assert plan["mean"].shape == (2, 8, 1)
    # The optimum: 6 steps at full speed (regret from the distance), then stay on the target.
    optimum = -sum(abs(1.2 - 0.2 * k) for k in range(1, 7))
    assert torch.all(best > optimum - 0.5)


@pytest.mark.learning
def test_search_beats_its_own_first_random_guess(seed: int, check: Check) -> None:
    """Refining the distribution finds better sequences than sampling it once."""
    wm = LineWorld()
    space = gym.spaces.Box(-1, 1, (1,), np.float32)
    state = state_at(-0.8, 0.8, n=16)
    white = {"population": 32, "horizon": 10, "noise_correlation": 0.0, "seed": seed}
    once = Planner(wm, space, PlannerConfig(iterations=1, **white))
    refined = Planner(wm, space, PlannerConfig(iterations=4, **white))
    found, guessed = float(refined.plan(state)[2].mean()), float(once.plan(state)[2].mean())
    check("refined - once", found - guessed, ">", 0.5)


def test_correlated_noise_searches_committed_sequences() -> None:
    """AR(1) noise keeps consecutive actions alike; white noise does not."""
    space = gym.spaces.Box(-1, 1, (1,), np.float32)
    for rho, expect_high in ((0.0, False), (0.9, True)):
        planner = Planner(LineWorld(), space, PlannerConfig(noise_correlation=rho, seed=0))
        actions, _ = planner._sample(planner.initial_plan(4))  # (N, P, H, A)
        a = actions[:, 1:, :, 0]  # skip candidate 0 (the mean)
        corr = torch.corrcoef(torch.stack([a[..., :-1].reshape(-1), a[..., 1:].reshape(-1)]))
        assert (float(corr[0, 1]) > 0.6) == expect_high
    discrete = Planner(
        LineWorld(True), gym.spaces.Discrete(3), PlannerConfig(noise_correlation=0.9)
    )
    idx, _ = discrete._sample(discrete.initial_plan(2))  # (N, P, H)
    repeats = (idx[:, 1:, 1:] == idx[:, 1:, :-1]).float().mean()
    assert float(repeats) > 0.85  # 0.9 + 0.1 / 3 expected; 1/3 without correlation


def test_warm_start_shifts_the_plan_by_one_step() -> None:
    planner = Planner(
        LineWorld(), gym.spaces.Box(-1, 1, (1,), np.float32), PlannerConfig(horizon=4)
    )
    plan = {"mean": torch.arange(4.0).view(1, 4, 1), "std": torch.full((1, 4, 1), 0.1)}
    shifted = planner.shift_plan(plan)
    assert shifted["mean"].view(-1).tolist() == [1.0, 2.0, 3.0, 0.0]
    assert torch.allclose(shifted["std"], torch.ones(1, 4, 1))  # exploration width restored


@pytest.mark.parametrize("discrete", [False, True])
def test_planner_agent_acts_well_in_the_real_env(discrete: bool) -> None:
    cfg = PlannerConfig(horizon=8, population=32, iterations=2, seed=0)
    env = LineEnv(discrete)
    agent = PlannerAgent(LineWorld(discrete), env.action_space, cfg)
    result = evaluate_policy(lambda: LineEnv(discrete), agent, 6, num_envs=3, progress=False)
    # Heading straight for the target from x=0 (distance 0.8) costs ~2.8 over 12 steps; a
    # policy that stays at 0 loses 9.6, a random one about as much.
    assert max(result.returns) > -3.5 and np.mean(result.returns) > -3.5
    timing = agent.timing()
    assert timing["decisions"] == agent.calls * 3 and timing["decisions_per_s"] > 0


def test_predict_single_frame_state_and_reset() -> None:
    env = LineEnv()
    agent = PlannerAgent(LineWorld(), env.action_space, PlannerConfig(population=16, horizon=4))
    obs, _ = env.reset(seed=0)
    action, state = agent.predict(obs)
    assert action.shape == (1,) and action.dtype == np.float32
    assert state.plan["mean"].shape == (1, 4, 1)
    batch = np.stack([obs, obs])
    with pytest.raises(ValueError, match="state holds 1 envs but obs has 2"):
        agent.predict(batch, state)
    with pytest.raises(ValueError, match="obs must be uint8"):
        agent.predict(obs[..., 0])
    actions, state = agent.predict(batch, None, np.array([True, True]))
    _, reset = agent.predict(batch, state, np.array([True, False]))
    assert reset.plan["mean"].shape == (2, 4, 1)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("method", "pso", "'cem' or 'mppi'"),
        ("horizon", 0, ">= 1"),
        ("elites", 256, "population"),
        ("noise_correlation", 1.0, r"\[0, 1\)"),
        ("temperature", -1.0, ">= 0"),
    ],
)
def test_bad_config_is_a_clear_error(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=f"PlannerConfig.{field}=.*{match}"):
        PlannerConfig(**{field: value})


def test_unbounded_box_is_refused() -> None:
    space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    with pytest.raises(ValueError, match="finite bounds"):
        Planner(LineWorld(), space)


def test_line_world_is_a_world_model() -> None:
    assert isinstance(LineWorld(), WorldModel)
