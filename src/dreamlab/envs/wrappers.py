"""Turn any Gymnasium environment into one that emits ``(S, S, 3) uint8`` frames.

The stack, innermost first (see :func:`wrap_frames`)::

    env -> ActionRepeat -> FrameObservation -> CropFrame -> ResizeFrame

``ActionRepeat`` sits below the frame conversion so that skipped frames are never converted or
rendered. ``FrameObservation`` takes the image from wherever it lives: the observation itself
(``HxWx3``, ``HxWx4``, ``HxWx1``, ``HxW``, or channel-first ``3xHxW`` / ``1xHxW``), one entry of a
``Dict`` observation (VizDoom's ``"screen"``), or ``env.render()`` for state-based envs made
with ``render_mode="rgb_array"``. :func:`check_env_spaces` decides which, or says in one
sentence why the env cannot be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

from dreamlab.io import DreamlabError

MIN_IMAGE_SIDE = 8
"""a Box smaller than this on either side is a state vector, not a picture"""


class EnvSpecError(DreamlabError, ValueError):
    """The environment cannot be used (unknown id, unusable observation or action space)."""


@dataclass(frozen=True)
class ObsSource:
    """Where the frames of an env come from, as decided by :func:`check_env_spaces`."""

    kind: Literal["image", "dict", "render"]
    """image: the observation is the picture; dict: one entry of it is; render: env.render()"""
    key: str | None = None
    """the Dict entry holding the picture (kind "dict" only)"""
    layout: Literal["hwc", "chw", "hw"] = "hwc"
    """axis order of the picture (kind "image" and "dict"; render() is always HWC)"""


def image_layout(space: spaces.Space[Any]) -> Literal["hwc", "chw", "hw"] | None:
    """The axis layout of ``space`` if it is an image-like ``Box``, else ``None``.

    Image-like: uint8 (or float with bounds within [0, 1]), shape ``(H, W)``, ``(H, W, C)`` or
    ``(C, H, W)`` with ``C`` in {1, 3, 4} and ``H, W >= 8``.
    """
    if not isinstance(space, spaces.Box):
        return None
    if space.dtype == np.uint8:
        pass
    elif np.issubdtype(space.dtype, np.floating):
        if not (np.all(space.low >= 0.0) and np.all(space.high <= 1.0)):
            return None
    else:
        return None
    shape = space.shape
    if len(shape) == 2:
        return "hw" if min(shape) >= MIN_IMAGE_SIDE else None
    if len(shape) == 3:
        if shape[2] in (1, 3, 4) and min(shape[:2]) >= MIN_IMAGE_SIDE:
            return "hwc"
        if shape[0] in (1, 3, 4) and min(shape[1:]) >= MIN_IMAGE_SIDE:
            return "chw"
    return None


def _env_name(env: gym.Env[Any, Any]) -> str:
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return str(spec.id)
    return type(env.unwrapped).__name__


def check_action_space(env: gym.Env[Any, Any]) -> None:
    """Raise :class:`EnvSpecError` unless the action space is a bounded 1-D Box or a Discrete."""
    space = env.action_space
    name = _env_name(env)
    if isinstance(space, spaces.Discrete):
        return
    if isinstance(space, spaces.Box):
        if len(space.shape) != 1:
            raise EnvSpecError(
                f"{name}: action space {space} has shape {space.shape}; expected a 1-D Box"
            )
        if not space.is_bounded("both"):
            raise EnvSpecError(
                f"{name}: action space {space} is unbounded; controllers squash their outputs "
                "into [low, high], so every dimension needs finite bounds"
            )
        return
    raise EnvSpecError(
        f"{name}: action space {type(space).__name__} ({space}) is not supported; "
        "expected Box (1-D) or Discrete"
    )


def check_env_spaces(env: gym.Env[Any, Any], image_key: str | None = None) -> ObsSource:
    """Decide where ``env``'s frames come from, or raise one clear :class:`EnvSpecError`.

    Run this on the raw env before wrapping it. It checks the action space (Box 1-D bounded, or
    Discrete) and finds the picture: the observation itself, the ``Dict`` entry ``image_key``
    (auto-detected when exactly one entry is image-like), or ``render()`` when the observation
    is not a picture and the env was made with ``render_mode="rgb_array"``.

    Args:
        env: the env to check.
        image_key: the ``Dict`` observation entry holding the picture; ``None`` to auto-detect.

    Returns:
        The :class:`ObsSource` that :class:`FrameObservation` needs.
    """
    check_action_space(env)
    name = _env_name(env)
    space = env.observation_space
    can_render = getattr(env, "render_mode", None) == "rgb_array"

    if isinstance(space, spaces.Dict):
        if image_key is not None:
            if image_key not in space.spaces:
                raise EnvSpecError(
                    f"{name}: image_key {image_key!r} is not in the observation Dict; "
                    f"its keys are {list(space.spaces)}"
                )
            layout = image_layout(space.spaces[image_key])
            if layout is None:
                raise EnvSpecError(
                    f"{name}: observation[{image_key!r}] is {space.spaces[image_key]}, not an "
                    "image (expected uint8 HxW, HxWxC or CxHxW with C in 1, 3, 4)"
                )
            return ObsSource("dict", image_key, layout)
        found = {k: image_layout(s) for k, s in space.spaces.items()}
        images = {k: lay for k, lay in found.items() if lay is not None}
        if len(images) == 1:
            key, layout = next(iter(images.items()))
            return ObsSource("dict", key, layout)
        if len(images) > 1:
            raise EnvSpecError(
                f"{name}: the observation Dict has several image entries {sorted(images)}; "
                "choose one with image_key"
            )
    elif image_key is not None:
        raise EnvSpecError(
            f"{name}: image_key={image_key!r} was given but the observation space is "
            f"{type(space).__name__}, not a Dict"
        )
    else:
        layout = image_layout(space)
        if layout is not None:
            return ObsSource("image", None, layout)

    if can_render:
        return ObsSource("render")
    raise EnvSpecError(
        f"{name}: the observation space {space} holds no image and render_mode="
        f"{getattr(env, 'render_mode', None)!r}; make the env with render_mode='rgb_array' so "
        "frames can come from render()"
    )


def to_rgb_uint8(image: np.ndarray, layout: Literal["hwc", "chw", "hw"]) -> np.ndarray:
    """Convert one picture to ``(H, W, 3) uint8``.

    Grayscale is repeated to 3 channels, an alpha channel is dropped, floats in [0, 1] are
    scaled to [0, 255].
    """
    if layout == "chw":
        image = np.moveaxis(image, 0, -1)  # (H, W, C)
    elif layout == "hw":
        image = image[..., None]  # (H, W, 1)
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    channels = image.shape[-1]
    if channels == 1:
        image = np.repeat(image, 3, axis=-1)  # (H, W, 3)
    elif channels == 4:
        image = image[..., :3]
    return np.ascontiguousarray(image)


class FrameObservation(gym.ObservationWrapper[np.ndarray, Any, Any]):
    """Replace the observation by an ``(H, W, 3) uint8`` picture taken from ``source``.

    For ``source.kind == "render"`` the frame size is unknown until something is rendered, so
    the constructor resets the env once and renders (as Gymnasium's ``AddRenderObservation``
    does). Reset with a seed before use, as always.
    """

    def __init__(self, env: gym.Env[Any, Any], source: ObsSource) -> None:
        super().__init__(env)
        self.source = source
        if source.kind == "render":
            env.reset()
            frame = env.render()
            if (
                not isinstance(frame, np.ndarray)
                or frame.ndim != 3
                or frame.shape[-1] not in (3, 4)
            ):
                raise EnvSpecError(
                    f"{_env_name(env)}: render() returned "
                    f"{type(frame).__name__}{getattr(frame, 'shape', '')}; expected an "
                    "(H, W, 3) uint8 array (render_mode='rgb_array')"
                )
            shape = to_rgb_uint8(frame, "hwc").shape
        else:
            space = env.observation_space
            if source.kind == "dict":
                assert isinstance(space, spaces.Dict) and source.key is not None
                space = space.spaces[source.key]
            native = space.shape
            assert native is not None  # image_layout() accepted it, so it is a shaped Box
            h, w = native[1:3] if source.layout == "chw" else native[:2]
            shape = (h, w, 3)
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        """The picture ``(H, W, 3) uint8``."""
        kind = self.source.kind
        if kind == "render":
            frame = self.env.render()
            if not isinstance(frame, np.ndarray):
                raise EnvSpecError(
                    f"{_env_name(self.env)}: render() returned {type(frame).__name__}"
                )
            return to_rgb_uint8(frame, "hwc")
        image = observation[self.source.key] if kind == "dict" else observation
        image = np.asarray(image)
        if self.source.layout == "hwc" and image.dtype == np.uint8 and image.shape[-1] == 3:
            return image
        return to_rgb_uint8(image, self.source.layout)


def check_crop(crop: Any) -> tuple[int, int, int, int]:
    """Validate a crop (top, bottom, left, right) in pixels; returns it as a tuple of ints."""
    ok = (
        isinstance(crop, (tuple, list))
        and len(crop) == 4
        and all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in crop
        )
    )
    if not ok:
        raise EnvSpecError(
            f"crop={crop!r}: expected 4 non-negative ints (top, bottom, left, right)"
        )
    top, bottom, left, right = (int(c) for c in crop)
    return top, bottom, left, right


class CropFrame(gym.ObservationWrapper[np.ndarray, Any, np.ndarray]):
    """Cut ``top``, ``bottom``, ``left``, ``right`` pixels off an ``(H, W, 3)`` frame."""

    def __init__(self, env: gym.Env[np.ndarray, Any], crop: tuple[int, int, int, int]) -> None:
        super().__init__(env)
        native = env.observation_space.shape
        assert native is not None  # FrameObservation always sets an (H, W, 3) Box
        h, w = native[:2]
        top, bottom, left, right = check_crop(crop)
        if top + bottom >= h or left + right >= w:
            raise EnvSpecError(
                f"crop={tuple(crop)} (top, bottom, left, right) leaves nothing of a {h}x{w} frame"
            )
        self._rows = slice(top, h - bottom)
        self._cols = slice(left, w - right)
        self.observation_space = spaces.Box(
            0, 255, (h - top - bottom, w - left - right, 3), np.uint8
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The cropped frame ``(H - top - bottom, W - left - right, 3) uint8``."""
        return np.ascontiguousarray(observation[self._rows, self._cols])


class ResizeFrame(gym.ObservationWrapper[np.ndarray, Any, np.ndarray]):
    """Resize an ``(H, W, 3) uint8`` frame to ``(size, size, 3)`` with PIL's antialiased bilinear.

    Non-square frames are squashed, not padded: the whole view survives (as in World Models).
    """

    def __init__(self, env: gym.Env[np.ndarray, Any], size: int) -> None:
        super().__init__(env)
        if int(size) != size or size < MIN_IMAGE_SIDE:
            raise EnvSpecError(f"frame_size={size!r}: expected an int >= {MIN_IMAGE_SIDE}")
        self.size = int(size)
        self.observation_space = spaces.Box(0, 255, (self.size, self.size, 3), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The resized frame ``(size, size, 3) uint8``."""
        if observation.shape[:2] == (self.size, self.size):
            return observation
        image = Image.fromarray(observation).resize(
            (self.size, self.size), Image.Resampling.BILINEAR
        )
        return np.asarray(image, dtype=np.uint8)


class ActionRepeat(gym.Wrapper[Any, Any, Any, Any]):
    """Repeat each action ``repeat`` times, summing rewards; stop early at the episode's end.

    ``info`` is the last inner step's, plus ``"inner_steps"``: how many env steps were taken.
    """

    def __init__(self, env: gym.Env[Any, Any], repeat: int) -> None:
        super().__init__(env)
        if int(repeat) != repeat or repeat < 1:
            raise EnvSpecError(f"action_repeat={repeat!r}: expected an int >= 1")
        self.repeat = int(repeat)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Step ``repeat`` times (fewer if the episode ends) with the same action."""
        total = 0.0
        inner_steps = 0
        while True:
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            inner_steps += 1
            if terminated or truncated or inner_steps == self.repeat:
                break
        info = dict(info)
        info["inner_steps"] = inner_steps
        return obs, total, terminated, truncated, info


def wrap_frames(
    env: gym.Env[Any, Any],
    *,
    frame_size: int = 64,
    crop: tuple[int, int, int, int] = (0, 0, 0, 0),
    action_repeat: int = 1,
    image_key: str | None = None,
) -> gym.Env[np.ndarray, Any]:
    """Apply the frame stack to ``env``; its observations become ``(frame_size, frame_size, 3)``.

    Args:
        env: any env that :func:`check_env_spaces` accepts.
        frame_size: side ``S`` of the square output frames.
        crop: pixels cut off the native frame before resizing: (top, bottom, left, right).
        action_repeat: env steps per agent step (rewards summed).
        image_key: the ``Dict`` observation entry holding the picture; ``None`` to auto-detect.

    Returns:
        The wrapped env, observation space ``Box(0, 255, (S, S, 3), uint8)``.
    """
    crop = check_crop(crop)
    source = check_env_spaces(env, image_key)
    wrapped: gym.Env[Any, Any] = env
    if action_repeat != 1:
        wrapped = ActionRepeat(wrapped, action_repeat)
    wrapped = FrameObservation(wrapped, source)
    if any(crop):
        wrapped = CropFrame(wrapped, crop)
    return ResizeFrame(wrapped, frame_size)
