"""Catch: the built-in world-model benchmark. A ball falls, bounces off the side walls, and a paddle
at the bottom must catch it. Pure numpy, 64x64 RGB uint8 frames, thousands of steps per second.

Two things make it a fair test of a world model rather than of a frame classifier:

- the ball's horizontal velocity cannot be read from one frame (the memory M must infer it from
  two or more), and
- the episode's end is visible in the frame (a HUD of pips counts the balls still in play), so a
  model can learn to predict ``terminated`` from pixels alone.

Geometry (default config, in pixels, y grows downwards)::

    rows 0..3    HUD: one 2x2 pip per ball still to play (the one in flight included)
    rows 4..57   the ball (3x3) falls 2 px/step and drifts -2..2 px/step, bouncing off the walls
    rows 61..63  the paddle (12x3), moved by the action, at most 3 px/step

A ball lands when its bottom edge reaches the paddle's top row: it is caught (+1) when it overlaps
the paddle horizontally, else missed (-1). The landing frame shows the ball resting on the paddle
line with the pip already removed; the next ball enters on the following step. After
``num_balls`` landings the episode terminates, and the final frame shows no pips.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

BACKGROUND_COLOR = (12, 12, 28)
BALL_COLOR = (250, 210, 60)
PADDLE_COLOR = (70, 170, 250)
PIP_COLOR = (200, 200, 200)

HUD_HEIGHT = 4
"""rows at the top reserved for the pips; the ball never enters them"""
PIP_SIZE = 2
PIP_STRIDE = 3


@dataclass
class CatchConfig:
    """Rules and geometry of Catch. Every field can be given as a keyword to ``gymnasium.make``."""

    num_balls: int = 5
    """balls per episode; the episode terminates after the last one lands"""
    discrete: bool = False
    """action space Discrete(3) (left, stay, right) instead of Box(-1, 1, (1,))"""
    frame_size: int = 64
    """side of the square frame in pixels"""
    ball_size: int = 3
    """side of the square ball in pixels"""
    ball_speed_y: float = 2.0
    """vertical (falling) speed of the ball in px/step"""
    ball_speed_x: float = 2.0
    """horizontal speed is drawn uniformly in [-ball_speed_x, ball_speed_x] px/step per ball"""
    paddle_width: int = 12
    """paddle width in pixels"""
    paddle_height: int = 3
    """paddle height in pixels (the paddle sits on the bottom rows)"""
    paddle_speed: float = 3.0
    """paddle speed in px/step at action +-1"""

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, expected: str) -> None:
            if not ok:
                raise ValueError(
                    f"CatchConfig.{field}={getattr(self, field)!r}: expected {expected}"
                )

        need(
            isinstance(self.frame_size, int) and self.frame_size >= 16, "frame_size", "an int >= 16"
        )
        need(isinstance(self.num_balls, int) and self.num_balls >= 1, "num_balls", "an int >= 1")
        max_pips = (self.frame_size - 1) // PIP_STRIDE
        need(self.num_balls <= max_pips, "num_balls", f"at most {max_pips} (pips must fit the HUD)")
        need(
            isinstance(self.ball_size, int) and 1 <= self.ball_size <= self.frame_size // 4,
            "ball_size",
            f"an int in [1, {self.frame_size // 4}]",
        )
        need(
            isinstance(self.paddle_width, int) and 1 <= self.paddle_width < self.frame_size,
            "paddle_width",
            f"an int in [1, {self.frame_size - 1}]",
        )
        need(
            isinstance(self.paddle_height, int) and 1 <= self.paddle_height <= self.frame_size // 8,
            "paddle_height",
            f"an int in [1, {self.frame_size // 8}]",
        )
        need(self.ball_speed_y > 0, "ball_speed_y", "> 0")
        need(
            0 <= self.ball_speed_x < self.frame_size - self.ball_size,
            "ball_speed_x",
            f">= 0 and < {self.frame_size - self.ball_size} (the width the ball can move in)",
        )
        need(self.paddle_speed > 0, "paddle_speed", "> 0")
        travel = self.frame_size - self.paddle_height - self.ball_size - HUD_HEIGHT
        need(self.ball_speed_y <= travel, "ball_speed_y", f"<= {travel} (the free fall height)")

    @property
    def paddle_top(self) -> int:
        """First row of the paddle."""
        return self.frame_size - self.paddle_height

    @property
    def landing_y(self) -> int:
        """Top row of a ball resting on the paddle line."""
        return self.paddle_top - self.ball_size

    @property
    def steps_per_ball(self) -> int:
        """Steps from a ball's entry to its landing (the entry step excluded)."""
        return math.ceil((self.landing_y - HUD_HEIGHT) / self.ball_speed_y)


def fold_x(x: np.ndarray, span: float) -> np.ndarray:
    """Map unfolded horizontal positions onto ``[0, span]`` by reflecting off both walls.

    A ball moving at constant speed between two walls is a straight line in "unfolded" space;
    folding it gives the bouncing trajectory. The scripted expert predicts landings with it.

    Args:
        x: unfolded positions, any shape.
        span: the width the ball's left edge can move in (``frame_size - ball_size``), > 0.

    Returns:
        Folded positions, same shape as ``x``.
    """
    period = 2.0 * span
    r = np.mod(x, period)
    return np.where(r > span, period - r, r)


class CatchEnv(gym.Env[np.ndarray, Any]):
    """Catch a sequence of falling, bouncing balls with a paddle.

    Observation: ``Box(0, 255, (S, S, 3), uint8)``, S = ``frame_size``.
    Action: ``Box(-1, 1, (1,), float32)`` paddle velocity command, or ``Discrete(3)`` (0 left,
    1 stay, 2 right) when ``discrete``.
    Reward: +1 when a ball is caught, -1 when missed, 0 otherwise.
    Info: ``{"caught": int, "missed": int, "balls_left": int}`` (episode totals so far).

    Args:
        config: the rules; ``None`` for the defaults.
        render_mode: ``None`` or ``"rgb_array"`` (``render()`` returns the current frame).
        **overrides: fields of :class:`CatchConfig` replacing those of ``config`` (this is how
            ``gymnasium.make("dreamlab/Catch-v0", num_balls=3)`` reaches the config).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        config: CatchConfig | None = None,
        *,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        config = config if config is not None else CatchConfig()
        known = {f.name for f in dataclasses.fields(CatchConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(
                f"CatchEnv: unknown option(s) {unknown}; known options: {sorted(known)}"
            )
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"CatchEnv: render_mode={render_mode!r}; expected None or 'rgb_array'")
        self.render_mode = render_mode

        c = self.config
        s = c.frame_size
        self.observation_space = spaces.Box(0, 255, (s, s, 3), np.uint8)
        self.action_space: spaces.Space[Any] = (
            spaces.Discrete(3) if c.discrete else spaces.Box(-1.0, 1.0, (1,), np.float32)
        )
        self._ball_span = float(s - c.ball_size)
        self._paddle_span = float(s - c.paddle_width)
        self._background = np.empty((s, s, 3), np.uint8)  # (S, S, 3)
        self._background[:] = BACKGROUND_COLOR

        self._paddle_x = 0.0
        self._ball_x = 0.0
        self._ball_y = 0.0
        self._ball_vx = 0.0
        self._ball_landed = False
        self._balls_left = 0
        self._caught = 0
        self._missed = 0
        self._frame = self._background.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: paddle centered, first ball entering, all pips shown."""
        super().reset(seed=seed)
        self._paddle_x = self._paddle_span / 2.0
        self._balls_left = self.config.num_balls
        self._caught = 0
        self._missed = 0
        self._spawn_ball()
        self._frame = self._draw()
        return self._frame.copy(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move the paddle, then the ball; resolve a landing. Returns the Gymnasium 5-tuple."""
        if self._balls_left <= 0:
            raise RuntimeError("CatchEnv.step() called after the episode terminated; call reset()")
        c = self.config
        velocity = self._action_to_velocity(action)
        self._paddle_x = min(
            max(self._paddle_x + velocity * c.paddle_speed, 0.0), self._paddle_span
        )

        reward = 0.0
        terminated = False
        if self._ball_landed:
            self._spawn_ball()
        else:
            # |vx| < span, so at most one wall is hit per step: reflect once.
            x = self._ball_x + self._ball_vx
            if x < 0.0 or x > self._ball_span:
                x = -x if x < 0.0 else 2.0 * self._ball_span - x
                self._ball_vx = -self._ball_vx
            self._ball_x = x
            self._ball_y += c.ball_speed_y
            if self._ball_y >= c.landing_y:
                self._ball_y = float(c.landing_y)
                self._ball_landed = True
                ball_left = round(self._ball_x)
                paddle_left = round(self._paddle_x)
                overlap = (
                    ball_left < paddle_left + c.paddle_width
                    and paddle_left < ball_left + c.ball_size
                )
                if overlap:
                    self._caught += 1
                    reward = 1.0
                else:
                    self._missed += 1
                    reward = -1.0
                self._balls_left -= 1
                terminated = self._balls_left == 0
        self._frame = self._draw()
        return self._frame.copy(), reward, terminated, False, self._info()

    def render(self) -> np.ndarray | None:
        """The current frame ``(S, S, 3) uint8`` in ``rgb_array`` mode, else ``None``."""
        if self.render_mode is None:
            gym.logger.warn(
                "CatchEnv.render() called with render_mode=None; make the env with "
                "render_mode='rgb_array' (observations are frames already)"
            )
            return None
        return self._frame.copy()

    def place(self, paddle_x: float | None = None, ball_y: float | None = None) -> np.ndarray:
        """Move the paddle and/or the ball in flight, for perturbed starts (``envs.shift``).

        Args:
            paddle_x: new left edge of the paddle in pixels, clipped to the field.
            ball_y: new top row of the ball in flight, clipped between the HUD and one step above
                the landing row (ignored while a ball rests on the paddle line).

        Returns:
            The new frame ``(S, S, 3) uint8`` (what the next observation would have shown).
        """
        c = self.config
        if paddle_x is not None:
            self._paddle_x = min(max(float(paddle_x), 0.0), self._paddle_span)
        if ball_y is not None and not self._ball_landed:
            top = max(float(HUD_HEIGHT), c.landing_y - c.ball_speed_y)
            self._ball_y = min(max(float(ball_y), float(HUD_HEIGHT)), top)
        self._frame = self._draw()
        return self._frame.copy()

    def _action_to_velocity(self, action: Any) -> float:
        if self.config.discrete:
            index = int(np.asarray(action).reshape(()))
            if not 0 <= index <= 2:
                raise ValueError(
                    f"CatchEnv: discrete action {index} out of range; expected 0, 1 or 2"
                )
            return float(index - 1)
        command = np.asarray(action, dtype=np.float64).reshape(-1)  # (1,)
        if command.size != 1:
            raise ValueError(f"CatchEnv: action of shape {np.shape(action)}; expected (1,)")
        return float(np.clip(command[0], -1.0, 1.0))

    def _spawn_ball(self) -> None:
        c = self.config
        rng = self.np_random
        self._ball_x = float(rng.uniform(0.0, self._ball_span))
        self._ball_y = float(HUD_HEIGHT)
        self._ball_vx = float(rng.uniform(-c.ball_speed_x, c.ball_speed_x))
        self._ball_landed = False

    def _draw(self) -> np.ndarray:
        c = self.config
        frame = self._background.copy()  # (S, S, 3)
        for i in range(self._balls_left):
            x0 = 1 + i * PIP_STRIDE
            frame[1 : 1 + PIP_SIZE, x0 : x0 + PIP_SIZE] = PIP_COLOR
        px = round(self._paddle_x)
        frame[c.paddle_top :, px : px + c.paddle_width] = PADDLE_COLOR
        bx, by = round(self._ball_x), round(self._ball_y)
        frame[by : by + c.ball_size, bx : bx + c.ball_size] = BALL_COLOR
        return frame

    def _info(self) -> dict[str, Any]:
        return {"caught": self._caught, "missed": self._missed, "balls_left": self._balls_left}


def locate_objects(frames: np.ndarray, config: CatchConfig | None = None) -> dict[str, np.ndarray]:
    """Find the ball and the paddle in Catch frames, real or imagined, by nearest palette colour.

    Each pixel is assigned to the closest of the four Catch colours (background, ball, paddle,
    pip), so a blurred or slightly off-colour imagined frame is read the way a person would read
    it. Positions are the centroids of the ball's and the paddle's pixels: a probe of what a
    frame shows, used to score generated frames (fidelity, prompt following) without a learned
    classifier.

    Args:
        frames: ``(..., S, S, 3)`` uint8 or float in ``[0, 1]`` frames.
        config: the env's geometry (paddle height); default ``CatchConfig()``.

    Returns:
        ``ball_x``, ``ball_y`` (centroid in pixels, NaN where no ball is seen), ``ball_visible``
        (bool), ``paddle_x`` (centroid column, NaN where no paddle is seen), each of shape
        ``frames.shape[:-3]``.
    """
    c = config if config is not None else CatchConfig()
    x = np.asarray(frames)
    if x.ndim < 3 or x.shape[-1] != 3 or x.shape[-2] != x.shape[-3]:
        raise ValueError(f"locate_objects: frames of shape {x.shape}; expected (..., S, S, 3)")
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    palette = np.array([BACKGROUND_COLOR, BALL_COLOR, PADDLE_COLOR, PIP_COLOR], np.float32) / 255.0
    dist = ((x[..., None, :] - palette) ** 2).sum(-1)  # (..., S, S, 4)
    label = dist.argmin(-1)  # (..., S, S)
    size = x.shape[-2]
    rows = np.arange(size, dtype=np.float32)

    ball = label == 1
    ball[..., :HUD_HEIGHT, :] = False
    n_ball = ball.sum((-2, -1)).astype(np.float32)
    visible = n_ball > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ball_x = (ball * rows).sum((-2, -1)) / n_ball
        ball_y = (ball * rows[:, None]).sum((-2, -1)) / n_ball
        paddle = label[..., size - c.paddle_height :, :] == 2  # (..., ph, S)
        n_paddle = paddle.sum((-2, -1)).astype(np.float32)
        paddle_x = (paddle * rows).sum((-2, -1)) / n_paddle
    nan = np.float32(np.nan)
    return {
        "ball_x": np.where(visible, ball_x, nan),
        "ball_y": np.where(visible, ball_y, nan),
        "ball_visible": visible,
        "paddle_x": np.where(n_paddle > 0, paddle_x, nan),
    }
