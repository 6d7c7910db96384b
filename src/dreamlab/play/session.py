"""One person's dream: keys -> env actions, a world model stepped one frame at a time, and
optionally the real env beside it under the same actions.

A :class:`PlaySession` is plain synchronous Python (no server, no asyncio), so it is tested and
reused directly; the server runs each session's calls on its compute thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dreamlab.dream import frames_to_uint8
from dreamlab.models import frames_to_tensor
from dreamlab.play.model import PlayModel, model_frame_shape

__all__ = ["ARROWS", "KeyMap", "PlaySession", "Tick"]

ARROWS = ("ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown")
"""Keys that act (digits 0-9 also pick a discrete action by its index)."""
_DIGITS = tuple(str(d) for d in range(10))


@dataclass
class KeyMap:
    """Held keys -> one env action.

    - ``Discrete(3)``: left / stay / right as Catch orders them (0, 1, 2): ← = 0, no key = 1,
      → = 2. VizDoom envs put their no-op first (0 = no-op, 1 = left, 2 = right).
    - other ``Discrete(n)``: no key = 0; ← → ↑ ↓ = 1, 2, 3, 4 (where < n); digit keys pick any
      action by index.
    - 1-D ``Box``: dimension 0 = → minus ← scaled to the bounds (no key = 0, clipped into the
      bounds). A second dimension whose low bound is >= 0 (CarRacing's gas) is ↑ at its high
      bound, a third (brake) is ↓ at 0.8 of its high bound; a two-sided second dimension is
      ↑ minus ↓. Remaining dimensions stay 0.
    """

    space: Any
    """the env's action space"""
    env_id: str | None = None
    """env id (picks the Discrete(3) layout)"""
    discrete_layout: dict[str, int] = field(default_factory=dict)
    """Discrete only: key ('' = no key) -> action index"""

    @classmethod
    def for_space(cls, space: Any, env_id: str | None = None) -> KeyMap:
        """The key map of a Gymnasium ``Discrete`` or 1-D ``Box`` space."""
        if hasattr(space, "n"):
            n = int(space.n)
            if n == 3 and "vizdoom" not in (env_id or "").lower():
                layout = {"": 1, "ArrowLeft": 0, "ArrowRight": 2}
            else:
                layout = {"": 0}
                for key, index in zip(ARROWS, (1, 2, 3, 4), strict=True):
                    if index < n:
                        layout[key] = index
            return cls(space, env_id, layout)
        shape = tuple(getattr(space, "shape", ()) or ())
        if len(shape) != 1:
            raise ValueError(f"play: action space {space} is neither Discrete nor a 1-D Box")
        return cls(space, env_id)

    @property
    def discrete(self) -> bool:
        """Whether the space is Discrete."""
        return hasattr(self.space, "n")

    def action(self, keys: Iterable[str]) -> Any:
        """The action for the held ``keys`` (an int, or a float32 ``(A,)`` array)."""
        held = set(keys)
        if self.discrete:
            n = int(self.space.n)
            start = int(getattr(self.space, "start", 0))
            for key in sorted(held & set(_DIGITS)):
                if int(key) < n:
                    return start + int(key)
            for key in ARROWS:
                if key in held and key in self.discrete_layout:
                    return start + self.discrete_layout[key]
            return start + self.discrete_layout[""]
        low = np.asarray(self.space.low, dtype=np.float32)
        high = np.asarray(self.space.high, dtype=np.float32)
        value = np.zeros(low.shape, dtype=np.float32)  # (A,)
        steer = float("ArrowRight" in held) - float("ArrowLeft" in held)
        value[0] = steer * (high[0] if steer > 0 else -low[0])
        up, down = "ArrowUp" in held, "ArrowDown" in held
        if value.shape[0] >= 2:
            if low[1] >= 0:
                value[1] = high[1] if up else 0.0
                if value.shape[0] >= 3 and low[2] >= 0:
                    value[2] = 0.8 * high[2] if down else 0.0
            else:
                lift = float(up) - float(down)
                value[1] = lift * (high[1] if lift > 0 else -low[1])
        return np.clip(value, low, high)

    def describe(self) -> list[str]:
        """One line per key for the page's help."""
        if self.discrete:
            names = {"ArrowLeft": "←", "ArrowRight": "→", "ArrowUp": "↑", "ArrowDown": "↓"}
            lines = [f"no key: action {self.discrete_layout['']}"]
            lines += [f"{names[k]}: action {v}" for k, v in self.discrete_layout.items() if k]
            lines.append(f"0-{min(int(self.space.n), 10) - 1}: pick an action by number")
            return lines
        size = int(self.space.shape[0])
        lines = ["← →: action[0] from low to high (no key: 0)"]
        if size >= 2:
            if float(np.asarray(self.space.low)[1]) >= 0:
                lines.append("↑: action[1] at its high bound (gas)")
                if size >= 3 and float(np.asarray(self.space.low)[2]) >= 0:
                    lines.append("↓: action[2] at 0.8 of its high bound (brake)")
            else:
                lines.append("↑ ↓: action[1] up / down")
        return lines


def _jsonable_action(action: Any) -> Any:
    return np.asarray(action).round(3).tolist()


@dataclass
class Tick:
    """What one step (or reset) produced for the page."""

    dream: np.ndarray
    """what the model imagines, uint8 (H, W, 3)"""
    real: np.ndarray | None
    """the real env's frame under the same actions, uint8 (H, W, 3), or None"""
    header: dict[str, Any]
    """step, action, rewards, returns, done flags, temperature, compute time"""


class PlaySession:
    """One dream (and optionally the real env) stepped by a person's keys.

    Args:
        model: what to dream with (from :func:`dreamlab.play.load_play_model`).
        temperature: sampling temperature tau of the dream.
        real: show the real env beside the dream (when the model names an env).
        seed: seeds start-frame choices, the dream's sampling and the real env.
    """

    def __init__(
        self,
        model: PlayModel,
        *,
        temperature: float = 1.0,
        real: bool = False,
        seed: int | None = None,
    ) -> None:
        self.model = model
        self.world_model = model.world_model
        self.keymap = KeyMap.for_space(model.action_space, model.env_id)
        self.frame_shape = model_frame_shape(self.world_model)
        self.rng = np.random.default_rng(seed)
        self.temperature = temperature
        self.real_enabled = False
        self.real_env: Any = None
        self.state: dict[str, torch.Tensor] | None = None
        self.generator = torch.Generator(device=self.world_model.device)
        self.step_count = 0
        self.episode = 0
        self.dream_return = 0.0
        self.real_return = 0.0
        self.dream_done = False
        self.real_done = False
        self.last: Tick | None = None
        if real:
            self.set_real(True)

    # ------------------------------------------------------------------ settings
    @property
    def temperature(self) -> float:
        """Sampling temperature tau (0 = the model's most likely next state)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        value = float(value)
        if not np.isfinite(value) or not 0.0 <= value <= 5.0:
            raise ValueError(f"temperature must be in [0, 5], got {value}")
        self._temperature = value

    @property
    def real_available(self) -> bool:
        """Whether the run names an env to show beside the dream."""
        return self.model.env_id is not None

    def set_real(self, on: bool) -> None:
        """Show (and make) or hide (and close) the real env; takes effect at the next reset."""
        if on and not self.real_available:
            raise ValueError("this run names no env to show beside the dream")
        if on and self.real_env is None:
            self.real_env = self.model.make_real_env()
            self.real_done = True  # not stepped before the reset that starts its episode
        if not on and self.real_env is not None:
            self.real_env.close()
            self.real_env = None
        self.real_enabled = on

    @property
    def finished(self) -> bool:
        """Whether every shown side has ended (the page waits for a reset)."""
        return self.dream_done and (self.real_env is None or self.real_done)

    # ------------------------------------------------------------------ stepping
    def _real_frame(self, obs: np.ndarray) -> np.ndarray:
        from dreamlab.data.frames import resize_frame

        frame = np.asarray(obs, dtype=np.uint8)
        if frame.shape[:2] != self.frame_shape:
            frame = resize_frame(frame, self.frame_shape[0])
        return frame

    def _decode(self) -> np.ndarray:
        assert self.state is not None
        return frames_to_uint8(self.world_model.decode(self.state))[0]  # (H, W, 3)

    @torch.inference_mode()
    def reset(self, seed: int | None = None) -> Tick:
        """Start a new dream (and real episode) from a real frame."""
        t0 = time.perf_counter()
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.generator.manual_seed(int(self.rng.integers(0, 2**62)))
        real_frame = None
        if self.real_env is not None:
            obs, _ = self.real_env.reset(seed=int(self.rng.integers(0, 2**31 - 1)))
            real_frame = self._real_frame(obs)
            start = real_frame
        else:
            start = self.model.start_frames[int(self.rng.integers(len(self.model.start_frames)))]
        frames = frames_to_tensor(start[None], self.world_model.device)  # (1, 3, H, W)
        self.state = self.world_model.observe(self.world_model.initial_state(1), frames)
        self.step_count = 0
        self.episode += 1
        self.dream_return = self.real_return = 0.0
        self.dream_done = self.real_done = False
        tick = Tick(self._decode(), real_frame, {})
        tick.header = self._header(None, 0.0, None, time.perf_counter() - t0)
        self.last = tick
        return tick

    @torch.inference_mode()
    def step(self, keys: Iterable[str] = (), action: Any = None) -> Tick:
        """Advance every side that has not ended by one step.

        Args:
            keys: the keys held (mapped by :attr:`keymap`).
            action: an env action to take instead of the keys' (scripts, random dreams).
        """
        if self.state is None or self.last is None:
            return self.reset()
        t0 = time.perf_counter()
        if action is None:
            action = self.keymap.action(keys)
        dream_frame, real_frame = self.last.dream, self.last.real
        dream_reward, real_reward = 0.0, None
        if not self.dream_done:
            if self.keymap.discrete:
                a = torch.tensor([int(action)], dtype=torch.long)  # (1,)
            else:
                a = torch.from_numpy(np.asarray(action, np.float32))[None]  # (1, A)
            self.state, reward, terminated = self.world_model.step(
                self.state, a.to(self.world_model.device), self.temperature, self.generator
            )
            dream_reward = float(reward[0])
            self.dream_return += dream_reward
            dream_frame = self._decode()
            self.dream_done = bool(terminated[0]) or (
                self.step_count + 1 >= self.model.max_episode_steps
            )
        if self.real_env is not None and not self.real_done:
            obs, r, term, trunc, _ = self.real_env.step(action)
            real_reward = float(r)
            self.real_return += real_reward
            real_frame = self._real_frame(obs)
            self.real_done = bool(term or trunc)
        self.step_count += 1
        tick = Tick(dream_frame, real_frame, {})
        tick.header = self._header(action, dream_reward, real_reward, time.perf_counter() - t0)
        self.last = tick
        return tick

    def _header(
        self, action: Any, dream_reward: float, real_reward: float | None, seconds: float
    ) -> dict[str, Any]:
        real = None
        if self.real_env is not None:
            real = {"reward": real_reward, "return": self.real_return, "done": self.real_done}
        return {
            "type": "frame",
            "episode": self.episode,
            "step": self.step_count,
            "action": None if action is None else _jsonable_action(action),
            "dream": {"reward": dream_reward, "return": self.dream_return, "done": self.dream_done},
            "real": real,
            "finished": self.finished,
            "temperature": self.temperature,
            "compute_ms": round(seconds * 1000.0, 2),
            "height": self.frame_shape[0],
            "width": self.frame_shape[1],
        }

    def close(self) -> None:
        """Close the real env (if any) and drop the dream state."""
        if self.real_env is not None:
            self.real_env.close()
            self.real_env = None
        self.state = None
