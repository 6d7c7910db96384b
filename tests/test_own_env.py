"""A user's own pixel env, end to end from the command line (docs/envs.md): ``dreamlab pipeline
--env tests_module:Class --run R`` sizes a V/M/C run from the env and its episodes, C trains only
in the dream and beats random in the real env; bad input is one sentence and writes nothing.

``Reach`` is defined here, not in dreamlab: a blue block at the bottom moves left, stays or right
(``Discrete(3)``) under a red target at a random column; every step under the target pays 1
(rewards per step), and the episode ends on a time limit. ``ReachBox`` is the same with a 1-D
``Box`` action. Random play earns ~1/5 of the reward a tracker earns. ``Dodge`` ends on failure and
pays a sparse reward, as DoomTakeCover does: a rock falls, the block dodges it (+1) or is hit (the
episode ends).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from dreamlab import cli
from dreamlab.data.collect import CollectConfig, collect

SIZE, BLOCK, SPEED = 64, 8, 4
MODULE = Path(__file__).stem  # pytest puts tests/ on sys.path, so "test_own_env:Reach" imports


class Reach(gym.Env[np.ndarray, Any]):
    """Move under the target; +1 per step under it; 32 steps."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, steps: int = 32, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.action_space: gym.Space[Any] = gym.spaces.Discrete(3)
        self.steps, self.render_mode = steps, render_mode
        self.x = self.target = self.t = 0

    def _frame(self) -> np.ndarray:
        frame = np.zeros((SIZE, SIZE, 3), np.uint8)
        frame[4 : 4 + BLOCK, self.target : self.target + BLOCK, 0] = 255
        frame[SIZE - 4 - BLOCK : SIZE - 4, self.x : self.x + BLOCK, 2] = 255
        return frame

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.x = int(self.np_random.integers(0, SIZE - BLOCK + 1))
        self.target = int(self.np_random.integers(0, SIZE - BLOCK + 1))
        self.t = 0
        return self._frame(), {}

    def _move(self, action: Any) -> int:
        return int(action) - 1

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.x = int(np.clip(self.x + SPEED * self._move(action), 0, SIZE - BLOCK))
        self.t += 1
        reward = float(abs(self.x - self.target) < BLOCK // 2 + SPEED)
        return self._frame(), reward, False, self.t >= self.steps, {}

    def render(self) -> np.ndarray:
        return self._frame()


class ReachBox(Reach):
    """:class:`Reach` with a continuous action in [-1, 1] (its sign moves the block)."""

    def __init__(self, steps: int = 32, render_mode: str | None = None) -> None:
        super().__init__(steps, render_mode)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _move(self, action: Any) -> int:
        a = float(np.asarray(action).reshape(-1)[0])
        return 0 if abs(a) < 1 / 3 else int(np.sign(a))


class Dodge(gym.Env[np.ndarray, Any]):
    """Dodge falling rocks: a red rock falls from a random column; the blue block at the bottom
    moves left, stays or right (``Discrete(3)``). A rock that reaches the bottom beside the block
    pays +1 and the next one falls; one that lands on it ends the episode (``terminated``). A
    sparse reward (+1 every 11 steps at most) and an end on failure, as in DoomTakeCover; a time
    limit of ``steps``. Random play dodges ~3 rocks, a scripted dodger ~8 in 100 steps."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, steps: int = 100, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self.steps, self.render_mode = steps, render_mode
        self.x = self.rock_x = self.rock_y = self.t = 0

    def _frame(self) -> np.ndarray:
        frame = np.zeros((SIZE, SIZE, 3), np.uint8)
        frame[self.rock_y : self.rock_y + BLOCK, self.rock_x : self.rock_x + BLOCK, 0] = 255
        frame[SIZE - 4 - BLOCK : SIZE - 4, self.x : self.x + BLOCK, 2] = 255
        return frame

    def _drop(self) -> None:
        self.rock_x, self.rock_y = int(self.np_random.integers(0, SIZE - BLOCK + 1)), 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.x = int(self.np_random.integers(0, SIZE - BLOCK + 1))
        self.t = 0
        self._drop()
        return self._frame(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.x = int(np.clip(self.x + SPEED * (int(action) - 1), 0, SIZE - BLOCK))
        self.rock_y += SPEED
        self.t += 1
        reward, hit = 0.0, False
        if self.rock_y >= SIZE - 4 - 2 * BLOCK:  # the rock reaches the block's row
            hit = abs(self.x - self.rock_x) < BLOCK
            reward = 0.0 if hit else 1.0
            if not hit:
                self._drop()
        return self._frame(), reward, hit, self.t >= self.steps and not hit, {}

    def render(self) -> np.ndarray:
        return self._frame()


class NoImage(gym.Env[np.ndarray, Any]):
    """A state vector and no way to render it."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(2)


class WideBox(NoImage):
    """A Box observation that is not an image (H, W, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Box(0, 255, (64, 64, 5), np.uint8)


@pytest.mark.slow  # ~5 minutes per env on 2 cores: `make test-slow`
@pytest.mark.learning
@pytest.mark.parametrize(("env_class", "steps"), [("Reach", 32), ("ReachBox", 32), ("Dodge", 100)])
def test_generic_pipeline_on_an_own_env_beats_random_from_the_dream(
    env_class: str, steps: int, tmp_path: Path, seed: int, check: Any
) -> None:
    run = tmp_path / "run"
    env = f"{MODULE}:{env_class}"
    kwargs = json.dumps({"steps": steps})
    args = ["pipeline", "--env", env, "--env-kwargs", kwargs, "--run", str(run)]
    assert cli.main([*args, "--seed", str(seed), "--no-progress", "--until", "iterate"]) == 0
    saved = json.loads((run / "config.json").read_text())
    config = saved["config"]
    assert saved["kind"] == "vmc" and config["preset"] == "generic"
    assert config["env"] == env and config["env_kwargs"] == {"steps": steps}
    # sized from the data: 64x64 frames, the env's own action space, dreams as long as the
    # longest episodes (Reach: 32 steps + 20 %), deaths drawn in the dream where the env has them
    assert config["vae"]["frame_size"] == 64
    if env_class != "Dodge":
        assert config["evolve"]["max_episode_steps"] == 39
    assert config["dream_termination"] == ("sample" if env_class == "Dodge" else "threshold")
    # resumes from config.json alone, once told its module may be imported (a new process
    # needs the word again: the --env above said it for this one)
    trust = "--trust-env-code"
    assert (
        cli.main(["pipeline", "--run", str(run), "--no-progress", "--until", "iterate", trust]) == 0
    )
    assert (
        cli.main(["evaluate", "--run", str(run), "--episodes", "50", "--agent", "random", trust])
        == 0
    )
    assert cli.main(["evaluate", "--run", str(run), "--episodes", "50", trust]) == 0
    scores = json.loads((run / "eval.json").read_text())["agents"]
    random_return = scores["random"]["mean_return"]
    c_return = scores["controller"]["mean_return"]
    check("C's return / random's", c_return / max(random_return, 1e-6), ">", 1.5)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--env", f"{MODULE}:NoImage"], "NoImage"),
        (["--env", f"{MODULE}:WideBox"], "WideBox"),
        (["--env", "no_such_module_xyz:Env"], "no_such_module_xyz"),
        (["--env", f"{MODULE}:NoSuchClass"], "NoSuchClass"),
        (["--env", f"{MODULE}:Reach", "--env-kwargs", "{steps: 3}"], "--env-kwargs"),
        (["--env", f"{MODULE}:Reach", "--preset", "catch"], "not both"),
        (["--data", "/nonexistent/store"], "not an episode store"),
        # what a generation cannot take (Q-learning needs Discrete actions)
        (["--generation", "diffusion", "--env", f"{MODULE}:ReachBox"], "Discrete"),
        (["--generation", "rssm"], "--env or --data"),
        (["--generation", "rssm", "--preset", "catch"], "not a rssm preset"),
        (["--scale", "0.1", "--preset", "catch"], "--scale"),
        (["--scale", "0", "--env", f"{MODULE}:Reach"], "--scale"),
    ],
)
def test_bad_own_env_input_is_one_sentence_and_writes_nothing(
    args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert cli.main(["pipeline", "--run", str(run), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dreamlab: error:") and "\n" not in err and says in err, err
    assert not run.exists()


def test_data_of_another_env_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "catch-data"
    collect(CollectConfig(env="catch", out=data, episodes=2, workers=1, progress=False))
    run = tmp_path / "run"
    args = ["pipeline", "--run", str(run), "--env", f"{MODULE}:Reach", "--data", str(data)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "catch" in err and "not" in err and "\n" not in err
    assert not run.exists()


def test_a_vmc_run_is_sized_from_the_env_and_its_episodes(tmp_path: Path) -> None:
    from dreamlab.data.store import EpisodeStore
    from dreamlab.generations.own import failure_share, foreground_share, store_facts
    from dreamlab.generations.vmc.generic import DREAM_STEP_BUDGET, own_config

    for env_class, steps in (("Reach", 20), ("ReachBox", 50)):
        out = tmp_path / env_class
        env = f"{MODULE}:{env_class}"
        collect(
            CollectConfig(
                env=env, out=out, episodes=6, workers=1, progress=False, env_kwargs={"steps": steps}
            )
        )
        store = EpisodeStore.open(out)
        cfg = own_config(store_facts(store), env, {"steps": steps}, seed=3)
        assert cfg.env == env and cfg.env_kwargs == {"steps": steps} and cfg.seed == 3
        assert cfg.vae.frame_size == 64
        # two 8x8 blocks on 64x64: 3.1 % of the pixels, weighted to ~60 % of V's loss
        assert foreground_share(store) == pytest.approx(128 / 4096, rel=0.05)
        assert cfg.vae.foreground_weight == pytest.approx(0.6 / (128 / 4096), rel=0.05)
        assert cfg.vae_train.steps == 1000
        assert cfg.evolve.max_episode_steps == int(np.ceil(steps * 1.2))
        assert cfg.seq_len == min(steps, 32)
        generations = DREAM_STEP_BUDGET // (32 * 8 * cfg.evolve.max_episode_steps)
        assert cfg.evolve.generations == min(200, max(30, generations))
        # an env that ends on a time limit: dreams end at M's threshold, no death checks
        assert failure_share(store) == 0.0 and cfg.dream_termination == "threshold"
        assert not cfg.dream_checks and cfg.mdnrnn.termination_pos_weight == 10.0


def test_an_env_that_ends_on_failure_gets_the_doom_lessons(tmp_path: Path) -> None:
    from dreamlab.data.store import EpisodeStore
    from dreamlab.generations.own import failure_share, store_facts
    from dreamlab.generations.vmc.generic import own_config

    env = f"{MODULE}:Dodge"
    collect(CollectConfig(env=env, out=tmp_path / "d", episodes=8, workers=1, progress=False))
    store = EpisodeStore.open(tmp_path / "d")
    ends = [bool(store.episode(i)["terminated"][-1]) for i in store.indices]
    assert 0 < sum(ends) and failure_share(store) == pytest.approx(np.mean(ends))
    cfg = own_config(store_facts(store), env, {}, seed=0)
    # M's death probability calibrated and drawn in the dream, only live dreams stepped, and
    # the checks of the dream (M's deaths on held-out episodes, survival dream vs reality)
    assert cfg.mdnrnn.termination_pos_weight == 1.0 and cfg.dream_termination == "sample"
    assert cfg.evolve.compact_dreams and cfg.dream_checks and cfg.controller_normalize
    assert cfg.iterations == 1 and cfg.iterate_keep_best


def test_a_run_from_recorded_data_links_the_store_and_records_its_env(tmp_path: Path) -> None:
    data = tmp_path / "recorded"
    env = f"{MODULE}:Reach"
    collect(
        CollectConfig(
            env=env, out=data, episodes=4, workers=1, progress=False, env_kwargs={"steps": 12}
        )
    )
    run = tmp_path / "run"
    argv = ["pipeline", "--data", str(data), "--run", str(run), "--until", "collect"]
    # the store's metadata names a module: a file does not get to import it on its own
    assert cli.main(argv) == 2 and not run.exists()
    assert cli.main([*argv, "--trust-env-code"]) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["preset"] == "generic" and config["env"] == env
    assert config["env_kwargs"] == {"steps": 12} and config["collect_episodes"] == 4
    assert config["evolve"]["max_episode_steps"] == 15  # 12 steps + 20 %
    assert sorted(p.name for p in (run / "data" / "episodes").iterdir()) == sorted(
        p.name for p in (data / "episodes").iterdir()
    )
    # the same --data again resumes (the env given again is consent); another env is refused
    assert cli.main([*argv, "--env", env]) == 0
    assert cli.main(["pipeline", "--run", str(run), "--env", f"{MODULE}:ReachBox"]) == 2
