"""Collection policies, batched and shaped like Stable-Baselines3's ``predict``.

Every policy here answers ``predict(obs, state, episode_start) -> (actions, state)`` for ``N``
environments at once: ``obs`` is ``(N, H, W, 3) uint8``, ``episode_start`` is ``(N,) bool`` (True
where that env was just reset, so its memory must be cleared), ``actions`` is
``(N, *action_shape)``. The recurrent state is passed in and out explicitly; ``None`` means "fresh".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces

from dreamlab.envs.catch import (
    BALL_COLOR,
    HUD_HEIGHT,
    PADDLE_COLOR,
    CatchConfig,
    fold_x,
)

POLICY_NAMES = ("random", "brownian", "expert")

CARRACING_DRIFT = (0.0, 0.05, -0.05)
"""per-step mean of the Brownian increments on CarRacing's (steer, gas, brake): gas drifts up and
brake down, so the car leaves the start instead of idling (a zero-mean walk brakes half the time)"""


class Policy(Protocol):
    """Anything that acts on a batch of frames (the SB3 ``predict`` shape)."""

    def predict(
        self, obs: np.ndarray, state: Any, episode_start: np.ndarray
    ) -> tuple[np.ndarray, Any]:
        """Actions ``(N, *action_shape)`` for frames ``(N, H, W, 3)``; returns the new state."""
        ...


def _check_action_space(action_space: spaces.Space[Any], who: str) -> None:
    if isinstance(action_space, spaces.Discrete):
        return
    if isinstance(action_space, spaces.Box):
        if len(action_space.shape) != 1 or not action_space.is_bounded("both"):
            raise ValueError(
                f"{who}: action space {action_space} must be a bounded 1-D Box or a Discrete"
            )
        return
    raise ValueError(
        f"{who}: unsupported action space {action_space}; expected Box (1-D) or Discrete"
    )


def _batch_size(obs: np.ndarray, episode_start: np.ndarray, who: str) -> int:
    obs = np.asarray(obs)
    if obs.ndim != 4 or obs.shape[-1] != 3:
        raise ValueError(f"{who}.predict: obs of shape {obs.shape}; expected (N, H, W, 3)")
    n = obs.shape[0]
    if np.shape(episode_start) != (n,):
        raise ValueError(
            f"{who}.predict: episode_start of shape {np.shape(episode_start)}; expected ({n},)"
        )
    return n


class RandomPolicy:
    """Uniformly random actions, ignoring the frames.

    Args:
        action_space: a bounded 1-D ``Box`` or a ``Discrete``.
        seed: seeds the policy's own generator (independent of the env's).
    """

    def __init__(self, action_space: spaces.Space[Any], seed: int = 0) -> None:
        _check_action_space(action_space, "RandomPolicy")
        self.action_space = action_space
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> np.ndarray:
        """``n`` uniform actions: ``(n, A)`` for a Box, ``(n,) int64`` for a Discrete."""
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return self.rng.integers(space.start, space.start + space.n, size=n, dtype=np.int64)
        assert isinstance(space, spaces.Box)
        return self.rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(space.dtype)

    def predict(
        self, obs: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None
    ) -> tuple[np.ndarray, None]:
        """Random actions ``(N, *action_shape)`` for frames ``(N, H, W, 3)`` (one action for one
        frame ``(H, W, 3)``, as every agent's ``predict``); the state stays ``None``."""
        if np.ndim(obs) == 3 and episode_start is None:
            return self.sample(1)[0], None
        n = np.asarray(obs).shape[0]
        if episode_start is not None:
            n = _batch_size(obs, episode_start, "RandomPolicy")
        return self.sample(n), None


class NoisyPolicy:
    """Another policy's actions with exploration noise: the agent's own play, a little wider.

    Box actions get Gaussian noise of ``noise`` times the half-range of each dimension, clipped
    to the bounds; Discrete actions are replaced by a uniform one with probability ``noise``.
    Used to collect the agent's own experience for the next round of world-model training (the
    paper's iterative procedure).

    Args:
        policy: any batched SB3-shaped policy.
        action_space: its action space (a bounded 1-D ``Box`` or a ``Discrete``).
        noise: noise scale (Box) or random-action probability (Discrete), in ``[0, 1]``.
        seed: seeds the noise.
    """

    def __init__(
        self, policy: Policy, action_space: spaces.Space[Any], noise: float, seed: int = 0
    ) -> None:
        _check_action_space(action_space, "NoisyPolicy")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"NoisyPolicy: noise must be in [0, 1], got {noise}")
        self.policy = policy
        self.noise = float(noise)
        self.random = RandomPolicy(action_space, seed)
        self.rng = np.random.default_rng([seed, 1])

    def predict(
        self, obs: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None
    ) -> tuple[np.ndarray, Any]:
        """The wrapped policy's actions ``(N, *action_shape)`` with noise; its state passes."""
        actions, state = self.policy.predict(obs, state, episode_start)
        space = self.random.action_space
        if isinstance(space, spaces.Discrete):
            n = len(actions)
            swap = self.rng.random(n) < self.noise  # (N,)
            return np.where(swap, self.random.sample(n), actions), state
        assert isinstance(space, spaces.Box)
        half = (space.high - space.low) / 2.0  # (A,)
        noisy = actions + self.noise * half * self.rng.standard_normal(np.shape(actions))
        return np.clip(noisy, space.low, space.high).astype(space.dtype), state


class BrownianPolicy:
    """A smoothed random walk: ``a_{t+1} = clip(a_t + drift + sigma * half_range * eps)``.

    This is the exploration World Models reimplementations use on CarRacing: white-noise actions
    jitter in place, while a random walk holds a steering angle long enough to leave the start
    and reach turns. On a ``Discrete`` space the walk becomes "sticky": the previous action is
    repeated with probability ``repeat_prob``, else a new one is drawn uniformly.

    Args:
        action_space: a bounded 1-D ``Box`` or a ``Discrete``.
        seed: seeds the policy's own generator.
        sigma: per-step noise std as a fraction of each dimension's half range.
        drift: per-step mean increment (action units), one per dimension; ``None`` is zero,
            except on CarRacing's space (steer, gas, brake) where :data:`CARRACING_DRIFT` keeps
            the gas up and the brake down.
        repeat_prob: Discrete only: probability of repeating the previous action.
    """

    def __init__(
        self,
        action_space: spaces.Space[Any],
        seed: int = 0,
        *,
        sigma: float = 0.15,
        drift: Sequence[float] | None = None,
        repeat_prob: float = 0.8,
    ) -> None:
        _check_action_space(action_space, "BrownianPolicy")
        if sigma < 0:
            raise ValueError(f"BrownianPolicy: sigma={sigma}; expected >= 0")
        if not 0.0 <= repeat_prob <= 1.0:
            raise ValueError(f"BrownianPolicy: repeat_prob={repeat_prob}; expected in [0, 1]")
        self.action_space = action_space
        self.sigma = sigma
        self.repeat_prob = repeat_prob
        self._random = RandomPolicy(action_space, seed)
        self.rng = self._random.rng
        self.drift = np.zeros(action_space.shape or (), np.float64)
        if isinstance(action_space, spaces.Box):
            if drift is None and is_carracing_space(action_space):
                drift = CARRACING_DRIFT
            if drift is not None:
                d = np.asarray(drift, np.float64)
                if d.shape != action_space.shape:
                    raise ValueError(
                        f"BrownianPolicy: drift of shape {d.shape}; expected {action_space.shape}"
                    )
                self.drift = d

    def predict(
        self, obs: np.ndarray, state: np.ndarray | None, episode_start: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Step the walk of each env; envs at an episode start restart from a uniform sample.

        Returns:
            ``(actions, state)`` where ``state`` is the previous actions ``(N, *action_shape)``.
        """
        n = _batch_size(obs, episode_start, "BrownianPolicy")
        fresh = self._random.sample(n)
        if state is None:
            return fresh, fresh.copy()
        prev = np.asarray(state)
        if prev.shape[0] != n:
            raise ValueError(f"BrownianPolicy.predict: state for {prev.shape[0]} envs, obs for {n}")
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            keep = self.rng.random(n) < self.repeat_prob
            actions = np.where(keep, prev, fresh)
        else:
            assert isinstance(space, spaces.Box)
            half_range = (space.high - space.low) / 2.0
            eps = self.rng.standard_normal(prev.shape)  # (N, A)
            actions = np.clip(
                prev + self.drift + self.sigma * half_range * eps, space.low, space.high
            )
            actions = actions.astype(space.dtype)
        start = np.asarray(episode_start, bool)
        actions[start] = fresh[start]
        return actions, actions.copy()


def is_carracing_space(space: spaces.Box) -> bool:
    """True for CarRacing's continuous action space: steer [-1, 1], gas [0, 1], brake [0, 1]."""
    return (
        space.shape == (3,)
        and np.allclose(space.low, (-1.0, 0.0, 0.0))
        and np.allclose(space.high, (1.0, 1.0, 1.0))
    )


@dataclass
class _ExpertState:
    """Per-env memory of the current ball's track, for a least-squares velocity estimate."""

    n: np.ndarray  # (N,) frames seen of the current ball
    sum_t: np.ndarray  # (N,)
    sum_tt: np.ndarray  # (N,)
    sum_u: np.ndarray  # (N,) unfolded x
    sum_tu: np.ndarray  # (N,)
    sum_y: np.ndarray  # (N,)
    sum_ty: np.ndarray  # (N,)
    last_u: np.ndarray  # (N,) last unfolded x
    last_y: np.ndarray  # (N,) last ball row, -1 when no ball

    @classmethod
    def empty(cls, n: int) -> _ExpertState:
        z = np.zeros(n)
        return cls(
            z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), z - 1
        )

    def clear(self, mask: np.ndarray) -> None:
        for name in ("n", "sum_t", "sum_tt", "sum_u", "sum_tu", "sum_y", "sum_ty", "last_u"):
            getattr(self, name)[mask] = 0.0
        self.last_y[mask] = -1.0


class CatchExpert:
    """A scripted Catch player that sees only pixels.

    Each step it finds the ball and the paddle by color, tracks the ball's position over the
    frames since it entered (unfolding wall bounces so the track is a straight line), fits the
    velocity by least squares, predicts where the ball lands (folding the line back between the
    walls), and moves the paddle's center there. The rounding of positions to pixels makes a
    two-frame velocity wrong by up to 1 px/step, which is why it fits the whole track.

    Args:
        discrete: emit ``Discrete(3)`` actions (0 left, 1 stay, 2 right) instead of ``(N, 1)``
            floats in [-1, 1].
        config: the env's geometry (ball size, paddle height and speed); the defaults match
            ``dreamlab/Catch-v0``. Only sizes and speeds are read, never the env's state.
    """

    def __init__(self, discrete: bool = False, config: CatchConfig | None = None) -> None:
        self.discrete = discrete
        self.config = config if config is not None else CatchConfig()
        self._ball_rgb = np.array(BALL_COLOR, np.uint8)
        self._paddle_rgb = np.array(PADDLE_COLOR, np.uint8)

    def predict(
        self, obs: np.ndarray, state: _ExpertState | None, episode_start: np.ndarray
    ) -> tuple[np.ndarray, _ExpertState]:
        """Actions that move each paddle towards its ball's predicted landing point.

        Args:
            obs: ``(N, S, S, 3) uint8`` Catch frames.
            state: the tracks returned by the previous call, or ``None``.
            episode_start: ``(N,) bool``.

        Returns:
            ``(actions, state)``: actions ``(N,) int64`` if discrete else ``(N, 1) float32``.
        """
        n = _batch_size(obs, episode_start, "CatchExpert")
        c = self.config
        size = obs.shape[2]
        span = float(size - c.ball_size)
        paddle_top = size - c.paddle_height
        landing_y = paddle_top - c.ball_size
        if state is None or state.n.shape[0] != n:
            state = _ExpertState.empty(n)
        state.clear(np.asarray(episode_start, bool))

        ball = np.all(obs == self._ball_rgb, axis=-1)  # (N, S, S)
        ball[:, :HUD_HEIGHT] = False
        has_ball = ball.any(axis=(1, 2))  # (N,)
        ball_y = np.argmax(ball.any(axis=2), axis=1).astype(np.float64)  # (N,) top row
        ball_x = np.argmax(ball.any(axis=1), axis=1).astype(np.float64)  # (N,) left column
        paddle_cols = np.all(obs[:, paddle_top] == self._paddle_rgb, axis=-1)  # (N, S)
        has_paddle = paddle_cols.any(axis=1)
        paddle_left = np.argmax(paddle_cols, axis=1).astype(np.float64)  # (N,)
        paddle_center = paddle_left + paddle_cols.sum(axis=1) / 2.0  # (N,)

        # A new ball enters at the top: its row jumps up. Forget the old track.
        new_ball = ~has_ball | (ball_y < state.last_y) | (state.last_y < 0)
        state.clear(new_ball)

        u = self._unfold(ball_x, state, span)  # (N,)
        t = state.n.copy()  # (N,) time index of this frame within the track
        tracking = has_ball
        state.n[tracking] += 1
        state.sum_t[tracking] += t[tracking]
        state.sum_tt[tracking] += t[tracking] ** 2
        state.sum_u[tracking] += u[tracking]
        state.sum_tu[tracking] += t[tracking] * u[tracking]
        state.sum_y[tracking] += ball_y[tracking]
        state.sum_ty[tracking] += t[tracking] * ball_y[tracking]
        state.last_u = np.where(tracking, u, state.last_u)
        state.last_y = np.where(tracking, ball_y, -1.0)

        u_now, vx = self._fit(state.sum_u, state.sum_tu, state, t)
        y_now, vy = self._fit(state.sum_y, state.sum_ty, state, t)
        vy = np.where(state.n >= 2, vy, c.ball_speed_y)
        vy = np.maximum(vy, 1e-3)
        steps_left = np.ceil(np.maximum(landing_y - y_now, 0.0) / vy)  # (N,)
        land_x = fold_x(u_now + vx * steps_left, span)  # (N,)
        target = np.where(has_ball, land_x + c.ball_size / 2.0, size / 2.0)  # (N,)
        diff = np.where(has_paddle, target - paddle_center, 0.0)  # (N,)

        actions: np.ndarray
        if self.discrete:
            dead = c.paddle_speed / 2.0
            actions = np.where(diff > dead, 2, np.where(diff < -dead, 0, 1)).astype(np.int64)
        else:
            actions = np.clip(diff / c.paddle_speed, -1.0, 1.0).astype(np.float32)[:, None]
        return actions, state

    @staticmethod
    def _unfold(x: np.ndarray, state: _ExpertState, span: float) -> np.ndarray:
        """The unfolded position whose fold is ``x`` and that is nearest the track's prediction."""
        have_track = state.n >= 1
        _, vx = CatchExpert._fit(state.sum_u, state.sum_tu, state, state.n - 1)  # 0 if n < 2
        predicted = np.where(have_track, state.last_u + vx, x)
        period = 2.0 * span
        k = np.round(predicted / period)
        candidates = np.stack(
            [
                x + k * period,
                -x + k * period,
                x + (k + 1) * period,
                -x + (k + 1) * period,
                x + (k - 1) * period,
                -x + (k - 1) * period,
            ],
            axis=0,
        )  # (6, N)
        best = np.argmin(np.abs(candidates - predicted[None]), axis=0)
        return np.where(have_track, candidates[best, np.arange(x.shape[0])], x)

    @staticmethod
    def _fit(
        sum_v: np.ndarray, sum_tv: np.ndarray, state: _ExpertState, t_now: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Least-squares line through the track; returns (value at ``t_now``, slope)."""
        n = np.maximum(state.n, 1.0)
        denom = n * state.sum_tt - state.sum_t**2
        ok = (state.n >= 2) & (denom > 0)
        slope = np.where(ok, (n * sum_tv - state.sum_t * sum_v) / np.where(ok, denom, 1.0), 0.0)
        intercept = (sum_v - slope * state.sum_t) / n
        return intercept + slope * t_now, slope


def make_policy(name: str, action_space: spaces.Space[Any], seed: int = 0, **kwargs: Any) -> Policy:
    """Build a collection policy by name.

    Args:
        name: ``"random"``, ``"brownian"`` or ``"expert"`` (Catch only).
        action_space: the env's action space; the expert infers ``discrete`` from it.
        seed: seeds the policy's generator (the expert is deterministic and ignores it).
        **kwargs: passed to the policy's constructor (e.g. ``sigma=0.1`` for brownian,
            ``config=CatchConfig(...)`` for expert).
    """
    if name == "random":
        return RandomPolicy(action_space, seed, **kwargs)
    if name == "brownian":
        return BrownianPolicy(action_space, seed, **kwargs)
    if name == "expert":
        if isinstance(action_space, spaces.Discrete) and action_space.n == 3:
            return CatchExpert(discrete=True, **kwargs)
        if isinstance(action_space, spaces.Box) and action_space.shape == (1,):
            return CatchExpert(discrete=False, **kwargs)
        raise ValueError(
            f"make_policy('expert'): the scripted expert plays Catch only (Box(-1, 1, (1,)) or "
            f"Discrete(3) actions); got {action_space}"
        )
    raise ValueError(f"make_policy: unknown policy {name!r}; expected one of {list(POLICY_NAMES)}")
