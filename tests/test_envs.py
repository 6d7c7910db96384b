"""make_env, the frame wrapper stack, presets and the clear errors for envs dreamlab cannot use."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit

from dreamlab.envs import (
    PRESETS,
    EnvPreset,
    EnvSpecError,
    MissingExtraError,
    ObsSource,
    check_env_spaces,
    get_preset,
    make_env,
    preset_from_dict,
    preset_to_dict,
    resolve_preset,
    wrap_frames,
)

FRAME_64 = spaces.Box(0, 255, (64, 64, 3), np.uint8)


class TinyEnv(gym.Env[Any, Any]):
    """A configurable test env: observation built by ``make_obs(t)``, reward 1 per step."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        make_obs: Any,
        action_space: spaces.Space[Any] | None = None,
        episode_length: int = 100,
        render_mode: str | None = None,
    ) -> None:
        self.observation_space = observation_space
        self.action_space = action_space if action_space is not None else spaces.Discrete(2)
        self.make_obs = make_obs
        self.episode_length = episode_length
        self.render_mode = render_mode
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return self.make_obs(self.t), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.t += 1
        return self.make_obs(self.t), 1.0, self.t >= self.episode_length, False, {"t": self.t}

    def render(self) -> np.ndarray:
        return np.full((30, 40, 3), self.t, np.uint8)


def wrapper_chain(env: gym.Env[Any, Any]) -> list[gym.Env[Any, Any]]:
    """The env and everything it wraps, outermost first."""
    chain = [env]
    while isinstance(chain[-1], gym.Wrapper):
        chain.append(chain[-1].env)
    return chain


def index_image(h: int, w: int) -> np.ndarray:
    """Pixel (r, c) = (r, c, 7): crops can be read back from the values."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)  # (H, W, 3)


def test_catch_presets_and_ids_give_64x64_uint8_frames() -> None:
    for env_id in ("catch", "catch-discrete", "catch-hard", "dreamlab/Catch-v0"):
        env = make_env(env_id)
        obs, _ = env.reset(seed=0)
        assert env.observation_space == FRAME_64
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        obs, *_ = env.step(env.action_space.sample())
        assert obs in env.observation_space
    hard = make_env("catch-hard", num_balls=2)
    assert hard.unwrapped.config.paddle_width == 8 and hard.unwrapped.config.num_balls == 2


@pytest.mark.parametrize(
    "code",
    [
        "import gymnasium as gym, dreamlab\nenv = gym.make('dreamlab/Catch-v0')",
        "import gymnasium as gym\nenv = gym.make('dreamlab:dreamlab/CatchDiscrete-v0')",
    ],
    ids=["import-dreamlab", "module-prefix"],
)
def test_import_dreamlab_registers_its_envs_with_gymnasium_without_torch(code: str) -> None:
    """Gymnasium's convention (``import ale_py``), in a fresh interpreter: ``import dreamlab``
    registers the built-in ids, and imports neither torch nor the env classes on the way."""
    check = textwrap.dedent(
        """
        import sys
        {code}
        obs, _ = env.reset(seed=0)
        assert obs.ndim == 3 and obs.shape[-1] == 3 and obs.dtype.name == "uint8", obs.shape
        assert "torch" not in sys.modules, "import dreamlab pulled in torch"
        print(env.spec.id, type(env.action_space).__name__)
        """
    ).format(code=code)
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] in ("dreamlab/Catch-v0", "dreamlab/CatchDiscrete-v0")


def test_carracing_is_cropped_and_resized() -> None:
    env = make_env("carracing")
    obs, _ = env.reset(seed=0)
    assert env.observation_space == FRAME_64
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(np.array([0.0, 1.0, 0.0], np.float32))
    assert obs.shape == (64, 64, 3) and not terminated
    limits = [w for w in wrapper_chain(env) if isinstance(w, TimeLimit)]
    assert [w._max_episode_steps for w in limits] == [1000]
    assert [type(w).__name__ for w in wrapper_chain(env)[:3]] == [
        "ResizeFrame",
        "CropFrame",
        "FrameObservation",
    ]


def test_state_based_env_frames_come_from_render() -> None:
    env = make_env("CartPole-v1")  # render_mode None: dreamlab asks for rgb_array itself
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.render_mode == "rgb_array"
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert obs.std() > 0  # a real picture, not a blank
    with pytest.raises(EnvSpecError, match="render_mode='rgb_array'"):
        check_env_spaces(gym.make("CartPole-v1"))


def test_render_source_reads_render_not_obs() -> None:
    env = TinyEnv(
        spaces.Box(-1, 1, (4,)), lambda t: np.zeros(4, np.float32), render_mode="rgb_array"
    )
    assert check_env_spaces(env) == ObsSource("render")
    wrapped = wrap_frames(env, frame_size=16)
    obs, _ = wrapped.reset(seed=0)
    assert obs.shape == (16, 16, 3) and np.all(obs == 0)
    obs, *_ = wrapped.step(0)
    assert np.all(obs == 1)  # render() paints the step count


def test_dict_observation_with_image_key() -> None:
    space = spaces.Dict(
        {
            "screen": spaces.Box(0, 255, (24, 32, 3), np.uint8),
            "health": spaces.Box(0, 100, (1,), np.float32),
        }
    )
    env = TinyEnv(
        space, lambda t: {"screen": index_image(24, 32), "health": np.ones(1, np.float32)}
    )
    assert check_env_spaces(env) == ObsSource("dict", "screen", "hwc")  # auto-detected
    assert check_env_spaces(env, "screen") == ObsSource("dict", "screen", "hwc")
    wrapped = wrap_frames(env, frame_size=16, image_key="screen")
    obs, _ = wrapped.reset(seed=0)
    assert obs.shape == (16, 16, 3) and np.all(obs[..., 2] == 7)
    with pytest.raises(EnvSpecError, match="'screen', 'health'|keys are"):
        check_env_spaces(env, "pixels")
    with pytest.raises(EnvSpecError, match="not an image"):
        check_env_spaces(env, "health")
    two = spaces.Dict(
        {"left": space["screen"], "right": space["screen"]},
    )
    with pytest.raises(EnvSpecError, match="several image entries.*image_key"):
        check_env_spaces(TinyEnv(two, lambda t: None))


@pytest.mark.parametrize(
    ("shape", "layout"), [((20, 20), "hw"), ((20, 20, 1), "hwc"), ((1, 20, 20), "chw")]
)
def test_grayscale_becomes_three_equal_channels(shape: tuple[int, ...], layout: str) -> None:
    image = (np.arange(400).reshape(20, 20) % 256).astype(np.uint8).reshape(shape)
    env = TinyEnv(spaces.Box(0, 255, shape, np.uint8), lambda t: image)
    assert check_env_spaces(env).layout == layout
    obs, _ = wrap_frames(env, frame_size=20).reset(seed=0)
    assert obs.shape == (20, 20, 3)
    np.testing.assert_array_equal(obs[..., 0], image.reshape(20, 20))
    np.testing.assert_array_equal(obs[..., 0], obs[..., 2])


def test_float_images_in_unit_range_are_scaled() -> None:
    env = TinyEnv(spaces.Box(0.0, 1.0, (3, 16, 16), np.float32), lambda t: np.ones((3, 16, 16)))
    obs, _ = wrap_frames(env, frame_size=16).reset(seed=0)
    assert obs.dtype == np.uint8 and np.all(obs == 255)


def test_crop_cuts_the_right_pixels() -> None:
    env = TinyEnv(spaces.Box(0, 255, (21, 25, 3), np.uint8), lambda t: index_image(21, 25))
    obs, _ = wrap_frames(env, frame_size=16, crop=(2, 3, 4, 5)).reset(seed=0)
    assert obs.shape == (16, 16, 3)  # 21-2-3 x 25-4-5: no resize needed
    np.testing.assert_array_equal(obs, index_image(21, 25)[2:18, 4:20])
    with pytest.raises(EnvSpecError, match="leaves nothing"):
        wrap_frames(env, crop=(10, 11, 0, 0))
    with pytest.raises(EnvSpecError, match="4 non-negative ints"):
        wrap_frames(env, crop=(1, 2))
    with pytest.raises(EnvSpecError, match="4 non-negative ints"):
        wrap_frames(env, crop=(-1, 0, 0, 0))


def test_resize_keeps_a_flat_color_and_squashes_aspect() -> None:
    image = np.zeros((96, 128, 3), np.uint8)
    image[..., 1] = 200
    image[:, 64:, 0] = 255  # right half red: stays the right half after resizing
    env = TinyEnv(spaces.Box(0, 255, (96, 128, 3), np.uint8), lambda t: image)
    obs, _ = wrap_frames(env).reset(seed=0)
    assert obs.shape == (64, 64, 3)
    assert np.all(obs[..., 1] == 200)
    assert np.all(obs[:, :30, 0] == 0) and np.all(obs[:, 34:, 0] == 255)


def test_action_repeat_sums_rewards_and_stops_at_the_end() -> None:
    env = TinyEnv(spaces.Box(0, 255, (8, 8, 3), np.uint8), index_image_8, episode_length=5)
    wrapped = wrap_frames(env, frame_size=8, action_repeat=3)
    wrapped.reset(seed=0)
    _, reward, terminated, _, info = wrapped.step(0)
    assert (reward, terminated, info["inner_steps"], info["t"]) == (3.0, False, 3, 3)
    _, reward, terminated, _, info = wrapped.step(0)
    assert (reward, terminated, info["inner_steps"], info["t"]) == (2.0, True, 2, 5)
    with pytest.raises(EnvSpecError, match="action_repeat"):
        wrap_frames(env, action_repeat=0)


def index_image_8(t: int) -> np.ndarray:
    return index_image(8, 8)


@pytest.mark.parametrize(
    ("action_space", "match"),
    [
        (spaces.MultiBinary(3), "MultiBinary.*not supported"),
        (spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2))), "Tuple.*not supported"),
        (spaces.Box(-1, 1, (2, 2)), "expected a 1-D Box"),
        (spaces.Box(-np.inf, np.inf, (2,)), "unbounded"),
    ],
)
def test_unsupported_action_spaces_are_refused(action_space: spaces.Space, match: str) -> None:
    env = TinyEnv(spaces.Box(0, 255, (8, 8, 3), np.uint8), index_image_8, action_space)
    with pytest.raises(EnvSpecError, match=match):
        check_env_spaces(env)


def test_state_obs_without_render_mode_is_refused() -> None:
    env = TinyEnv(spaces.Box(-1, 1, (4,)), lambda t: np.zeros(4, np.float32))
    with pytest.raises(EnvSpecError, match="holds no image and render_mode=None"):
        check_env_spaces(env)
    image_env = TinyEnv(spaces.Box(0, 255, (8, 8, 3), np.uint8), index_image_8)
    with pytest.raises(EnvSpecError, match="not a Dict"):
        check_env_spaces(image_env, image_key="screen")


def test_unknown_ids_and_preset_mismatch_fail_clearly() -> None:
    with pytest.raises(EnvSpecError, match=r"unknown environment 'NoSuchEnv-v0'.*catch"):
        make_env("NoSuchEnv-v0")
    with pytest.raises(EnvSpecError, match=r"Did you mean \['CarRacing-v3'"):
        make_env("CarRacin-v3")
    with pytest.raises(EnvSpecError, match="could not import module 'no_such_pkg.envs'"):
        make_env("no_such_pkg.envs:MyEnv")
    with pytest.raises(EnvSpecError, match="does not match preset 'catch'"):
        make_env("CarRacing-v3", get_preset("catch"))
    with pytest.raises(EnvSpecError, match=r"unknown preset 'pong'.*atari-pong"):
        get_preset("pong")


def test_missing_extra_names_the_pip_command() -> None:
    preset = EnvPreset(
        name="needs-doom",
        env_id="VizdoomTakeCover-v1",
        import_modules=("dreamlab_test_no_such_module",),
        extra="doom",
    )
    with pytest.raises(MissingExtraError, match=r"pip install 'dreamlab\[doom\]'") as info:
        make_env("needs-doom", preset)
    assert isinstance(info.value, EnvSpecError) and isinstance(info.value, ImportError)


def test_user_env_from_module_and_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dreamlab_user_envs.py").write_text(
        textwrap.dedent(
            """
            import gymnasium as gym
            import numpy as np
            from gymnasium import spaces

            class Blink(gym.Env):
                metadata = {"render_modes": ["rgb_array"]}

                def __init__(self, size=32, render_mode=None):
                    self.size = size
                    self.render_mode = render_mode
                    self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
                    self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

                def reset(self, *, seed=None, options=None):
                    super().reset(seed=seed)
                    return np.zeros((self.size, self.size, 3), np.uint8), {}

                def step(self, action):
                    obs = np.full((self.size, self.size, 3), 255, np.uint8)
                    return obs, 0.0, False, False, {}

            class NotAnEnv:
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env("dreamlab_user_envs:Blink", size=48)
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.size == 48
    assert obs.shape == (64, 64, 3) and np.all(obs == 0)
    assert resolve_preset("dreamlab_user_envs:Blink").env_id == "dreamlab_user_envs:Blink"

    preset = EnvPreset(
        name="blink", env_id="dreamlab_user_envs:Blink", max_episode_steps=3, frame_size=32
    )
    env = make_env("blink", preset)
    env.reset(seed=0)
    results = [env.step(env.action_space.sample()) for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True]  # truncated by the preset's limit
    assert results[0][0].shape == (32, 32, 3) and np.all(results[0][0] == 255)

    with pytest.raises(EnvSpecError, match="not a gymnasium.Env subclass"):
        make_env("dreamlab_user_envs:NotAnEnv")
    with pytest.raises(EnvSpecError, match="no attribute 'Nope'"):
        make_env("dreamlab_user_envs:Nope")
    with pytest.raises(EnvSpecError, match="could not be constructed"):
        make_env("dreamlab_user_envs:Blink", colour="red")


def test_resolve_preset() -> None:
    assert resolve_preset("catch") is PRESETS["catch"]
    assert resolve_preset("dreamlab/Catch-v0") is PRESETS["catch"]
    assert resolve_preset("CarRacing-v3").crop == (0, 12, 0, 0)
    generic = resolve_preset("Acrobot-v1")
    assert (generic.name, generic.env_id, generic.frame_size, generic.crop) == (
        "Acrobot-v1",
        "Acrobot-v1",
        64,
        (0, 0, 0, 0),
    )


def test_required_presets_exist_with_paper_settings() -> None:
    assert {
        "catch",
        "catch-discrete",
        "carracing",
        "doom-takecover",
        "atari-pong",
        "atari-breakout",
    } <= set(PRESETS)
    doom = PRESETS["doom-takecover"]
    assert (doom.image_key, doom.max_episode_steps, doom.extra) == ("screen", 2100, "doom")
    assert PRESETS["carracing"].collect_policy == "brownian"
    assert PRESETS["atari-pong"].extra == "atari"


def test_presets_round_trip_through_json() -> None:
    for preset in PRESETS.values():
        data = json.loads(json.dumps(preset_to_dict(preset)))
        assert preset_from_dict(data) == preset
    assert dataclasses.asdict(PRESETS["catch-hard"])["env_kwargs"]["paddle_width"] == 8


def test_bad_preset_data_names_the_source_and_field() -> None:
    good = preset_to_dict(PRESETS["catch"])
    with pytest.raises(ValueError, match=r"store.json: .*unknown fields \['colour'\]"):
        preset_from_dict({**good, "colour": 1}, where="store.json")
    with pytest.raises(ValueError, match=r"store.json: .*missing fields \['env_id'\]"):
        preset_from_dict({"name": "x"}, where="store.json")
    with pytest.raises(ValueError, match="store.json: .*collect_policy='greedy'"):
        preset_from_dict({**good, "collect_policy": "greedy"}, where="store.json")
    with pytest.raises(ValueError, match="crop"):
        EnvPreset(name="x", env_id="y", crop=(1, 2, 3))  # type: ignore[arg-type]
