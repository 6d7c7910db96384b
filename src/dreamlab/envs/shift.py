"""Distribution shift, graded by one number, for testing agents off the states they trained on.

Three kinds, each a knob ``strength`` where 0 is the unchanged env:

``actions`` (:class:`RandomActionsFirstK`, strength ``k`` steps)
    the agent's action is replaced by a uniformly random one for the first ``k`` steps of every
    ball (Catch: a ball starts at reset and on the step after each landing; other envs: of every
    episode). The agent still sees every frame; it has to recover from where the noise left it.
``start`` (:class:`PerturbedStart`, strength ``s`` in [0, 1])
    every ball starts perturbed: the paddle jumps to ``(1 - s) * x + s * U(0, span)`` and the ball
    is already ``s / 2`` of its fall down, so less time is left to reach it.
``harder`` (:func:`harder_catch_kwargs`, strength ``s`` in [0, 1])
    a harder Catch: balls fall and drift ``1 + s / 2`` times faster and the paddle is
    ``1 - s / 2`` times as wide (``s = 1``: 1.5x speed, half the paddle).

The wrappers draw their randomness from a generator seeded by the env's reset seed, so every agent
evaluated with the same episode seeds meets the same perturbations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dreamlab.envs.catch import HUD_HEIGHT, CatchConfig

__all__ = [
    "SHIFT_KINDS",
    "PerturbedStart",
    "RandomActionsFirstK",
    "ShiftKind",
    "harder_catch_kwargs",
    "make_shifted_env",
]

ShiftKind = Literal["actions", "start", "harder"]
SHIFT_KINDS: tuple[str, ...] = ("actions", "start", "harder")

_SALT = 0x5EED5
"""mixed into the reset seed so the wrapper's draws differ from the env's own"""


def _balls_done(info: dict[str, Any]) -> int | None:
    """Balls landed so far (Catch's ``caught + missed``), or None for envs without them."""
    if "caught" in info and "missed" in info:
        return int(info["caught"]) + int(info["missed"])
    return None


class _PerBall(gym.Wrapper[Any, Any, Any, Any]):
    """Tracks where each ball (Catch) or episode (other envs) starts; seeds a generator on reset."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.rng = np.random.default_rng(_SALT)
        self.steps_into_ball = 0
        self._landed = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self.rng = np.random.default_rng([seed, _SALT])
        obs, info = self.env.reset(seed=seed, options=options)
        self.steps_into_ball = 0
        self._landed = _balls_done(info) or 0
        return obs, info

    def _advance(self, info: dict[str, Any]) -> bool:
        """Count one step; True when that step landed a ball (the next step starts a new one)."""
        self.steps_into_ball += 1
        done = _balls_done(info)
        if done is not None and done > self._landed:
            self._landed = done
            return True
        return False


class RandomActionsFirstK(_PerBall):
    """Replace the agent's action by a uniformly random one for the first ``k`` steps of each ball.

    ``info["injected"]`` says whether the step just taken used a random action.

    Args:
        env: any env with a Box or Discrete action space.
        k: steps of random actions at the start of every ball (Catch) or episode (other envs).
    """

    def __init__(self, env: gym.Env[Any, Any], k: int) -> None:
        if not isinstance(k, int | np.integer) or k < 0:
            raise ValueError(f"RandomActionsFirstK: k={k!r}; expected an int >= 0")
        if not isinstance(env.action_space, spaces.Box | spaces.Discrete):
            raise ValueError(
                f"RandomActionsFirstK: action space {env.action_space}; expected Box or Discrete"
            )
        super().__init__(env)
        self.k = int(k)
        self._new_ball_next = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._new_ball_next = False
        return super().reset(seed=seed, options=options)

    def _random_action(self) -> Any:
        space = self.env.action_space
        if isinstance(space, spaces.Discrete):
            return int(self.rng.integers(space.start, space.start + space.n))
        assert isinstance(space, spaces.Box)
        return self.rng.uniform(space.low, space.high).astype(space.dtype)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._new_ball_next:
            self.steps_into_ball = 0
            self._new_ball_next = False
        injected = self.steps_into_ball < self.k
        if injected:
            action = self._random_action()
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._new_ball_next = self._advance(info)
        return obs, float(reward), terminated, truncated, {**info, "injected": injected}


class PerturbedStart(_PerBall):
    """Start every Catch ball from a perturbed state (see the module docstring).

    Args:
        env: a Catch env (its unwrapped env must have ``place(paddle_x, ball_y)``).
        strength: in [0, 1]; 0 leaves the env unchanged.
    """

    def __init__(self, env: gym.Env[Any, Any], strength: float) -> None:
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"PerturbedStart: strength={strength!r}; expected a number in [0, 1]")
        if not callable(getattr(env.unwrapped, "place", None)):
            raise ValueError(
                f"PerturbedStart: {type(env.unwrapped).__name__} cannot place its paddle and "
                "ball; perturbed starts are defined for Catch only"
            )
        super().__init__(env)
        self.strength = float(strength)
        self._new_ball_next = False

    def _perturb(self, obs: np.ndarray) -> np.ndarray:
        if self.strength == 0.0:
            return obs
        base = self.env.unwrapped
        c: CatchConfig = base.config  # type: ignore[attr-defined]
        span = float(c.frame_size - c.paddle_width)
        paddle_x = (1.0 - self.strength) * base._paddle_x + self.strength * self.rng.uniform(  # type: ignore[attr-defined]
            0.0, span
        )
        fall = c.landing_y - HUD_HEIGHT
        return base.place(paddle_x=paddle_x, ball_y=HUD_HEIGHT + self.strength * fall / 2.0)  # type: ignore[attr-defined]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        self._new_ball_next = False
        return self._perturb(obs), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._new_ball_next and not (terminated or truncated):
            obs = self._perturb(obs)  # this step spawned the next ball
            self.steps_into_ball = 0
        self._new_ball_next = self._advance(info)
        return obs, float(reward), terminated, truncated, info


def harder_catch_kwargs(strength: float, base: CatchConfig | None = None) -> dict[str, Any]:
    """CatchConfig overrides for the ``harder`` shift of ``base`` (default: the default Catch).

    Args:
        strength: in [0, 1]; speeds scale by ``1 + strength / 2``, the paddle width by
            ``1 - strength / 2`` (rounded, at least 1 px).

    Returns:
        ``{"ball_speed_y", "ball_speed_x", "paddle_width"}``, valid ``CatchConfig`` keywords.
    """
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"harder_catch_kwargs: strength={strength!r}; expected a number in [0, 1]")
    b = base if base is not None else CatchConfig()
    scale = 1.0 + strength / 2.0
    return {
        "ball_speed_y": b.ball_speed_y * scale,
        "ball_speed_x": b.ball_speed_x * scale,
        "paddle_width": max(1, round(b.paddle_width * (1.0 - strength / 2.0))),
    }


def make_shifted_env(
    env: str, kind: ShiftKind | Literal["none"], strength: float, **env_kwargs: Any
) -> gym.Env[np.ndarray, Any]:
    """``make_env(env)`` under one shift at one strength.

    Args:
        env: preset name or env id (``"catch"``); ``start`` and ``harder`` need Catch.
        kind: ``"actions"``, ``"start"``, ``"harder"`` or ``"none"``.
        strength: ``k`` steps for ``actions``, a number in [0, 1] for the others.
        **env_kwargs: constructor keywords merged over the preset's.
    """
    from dreamlab.envs import make_env, resolve_preset

    if kind not in (*SHIFT_KINDS, "none"):
        raise ValueError(
            f"make_shifted_env: kind={kind!r}; expected one of {[*SHIFT_KINDS, 'none']}"
        )
    if kind == "harder":
        preset = resolve_preset(env)
        merged = {**preset.env_kwargs, **env_kwargs}
        fields = {f.name for f in dataclasses.fields(CatchConfig)}
        base = CatchConfig(**{k: v for k, v in merged.items() if k in fields})
        env_kwargs = {**env_kwargs, **harder_catch_kwargs(strength, base)}
    made = make_env(env, **env_kwargs)
    if kind == "actions":
        if float(strength) != int(strength):
            made.close()
            raise ValueError(
                f"make_shifted_env: actions strength={strength!r}; expected whole steps"
            )
        return RandomActionsFirstK(made, int(strength))
    if kind == "start":
        return PerturbedStart(made, strength)
    return made
