"""Model-predictive control: plan by searching imagined action sequences in any world model.

No controller is trained. At every real step the planner

1. puts the real frame into the world model's state (``observe``),
2. searches action sequences of length ``horizon`` by imagining all ``population`` candidates of
   every env as one batch (``WorldModel.step`` only, so V+M, an ensemble or an RSSM all work),
3. refines the sampling distribution ``iterations`` times — CEM keeps the top ``elites`` and
   refits; MPPI averages every candidate with weights ``softmax(return / mppi_temperature)``,
4. acts with the first action of the refined plan (receding horizon) and keeps the rest,
   shifted by one step, as the next step's starting distribution (warm start).

Continuous actions (1-D ``Box``) are searched with a diagonal Gaussian per step clipped to the
bounds; discrete actions with a categorical distribution per step (CEM refits the elites'
action frequencies, MPPI the weighted frequencies), so both action kinds use one code path.

A candidate's return is ``sum_t discount^t * r_t`` over its imagined steps, counting nothing
after the model imagines the episode's end. With ``particles > 1`` every candidate is imagined
that many times (different samples of the stochastic model) and its returns are averaged.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from dreamlab.agent import frame_batch, reset_mask
from dreamlab.models import frames_to_tensor
from dreamlab.worldmodel import ActionSpec, State, WorldModel, index_state, select_state

__all__ = ["Planner", "PlannerAgent", "PlannerConfig", "PlannerState"]


@dataclass
class PlannerConfig:
    """How the planner searches. The defaults catch 0.95 of balls in Catch with a V+M trained on
    random data, at 26 decisions/s on 2 CPU cores with M under bfloat16 (BENCHMARKS.md)."""

    method: Literal["cem", "mppi"] = "cem"
    """'cem' (refit to the elites) or 'mppi' (return-weighted average of every candidate)"""
    horizon: int = 20
    """imagined steps per candidate action sequence"""
    population: int = 128
    """candidate sequences per env and iteration (imagined as one batch)"""
    iterations: int = 2
    """refinements of the sampling distribution per real step"""
    elites: int | None = None
    """CEM: candidates the distribution is refit to (default: population // 8, at least 1)"""
    mppi_temperature: float = 0.5
    """MPPI: lambda of the weights softmax(return / lambda); smaller is greedier"""
    init_std: float = 1.0
    """continuous: initial std of each action dimension, as a fraction of half its range"""
    min_std: float = 0.05
    """continuous: floor of the std (fraction of half the range) so the search never freezes"""
    min_prob: float = 0.02
    """discrete: floor of each action's probability, so no action is ruled out for good"""
    noise_correlation: float = 0.9
    """correlation of a candidate's consecutive actions: AR(1) Gaussian noise (continuous) or the
    chance of repeating the previous step's action (discrete). High values search smooth,
    committed sequences (iCEM's point: white noise barely moves a system that integrates it)"""
    momentum: float = 0.0
    """weight of the previous distribution when refitting (0 = plain CEM/MPPI)"""
    discount: float = 1.0
    """discount of imagined rewards"""
    particles: int = 1
    """imagined samples per candidate; their returns are averaged"""
    temperature: float = 1.0
    """sampling temperature tau of the world model while imagining"""
    warm_start: bool = True
    """start each step from the previous plan shifted by one step"""
    seed: int = 0
    """seed of the planner's sampling"""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(
                    f"PlannerConfig.{name}={getattr(self, name)!r}: expected {expected}"
                )

        need(self.method in ("cem", "mppi"), "method", "'cem' or 'mppi'")
        need(self.horizon >= 1, "horizon", ">= 1")
        need(self.population >= 2, "population", ">= 2")
        need(self.iterations >= 1, "iterations", ">= 1")
        need(
            self.elites is None or 1 <= self.elites < self.population,
            "elites",
            f"None or in [1, population={self.population})",
        )
        need(self.mppi_temperature > 0, "mppi_temperature", "> 0")
        need(self.init_std > 0, "init_std", "> 0")
        need(0 <= self.min_std <= self.init_std, "min_std", "in [0, init_std]")
        need(0 <= self.min_prob < 1, "min_prob", "in [0, 1)")
        need(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(0 <= self.noise_correlation < 1, "noise_correlation", "in [0, 1)")
        need(0 < self.discount <= 1, "discount", "in (0, 1]")
        need(self.particles >= 1, "particles", ">= 1")
        need(self.temperature >= 0, "temperature", ">= 0")

    @property
    def num_elites(self) -> int:
        """CEM's elite count: ``elites`` or ``population // 8`` (at least 1)."""
        return self.elites if self.elites is not None else max(1, self.population // 8)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class PlannerState:
    """What the planner carries between real steps for a batch of N envs.

    ``model`` is the world model's state; ``plan`` the sampling distribution kept for the warm
    start: ``mean``/``std`` ``(N, H, A)`` for continuous actions or ``probs`` ``(N, H, n)``.
    """

    model: State
    plan: dict[str, torch.Tensor]


class Planner:
    """CEM / MPPI over action sequences imagined by a :class:`WorldModel`.

    Args:
        world_model: any world model (its ``step`` must accept a batch of candidate actions).
        action_space: the env's action space (``Discrete`` or 1-D ``Box``) or an ``ActionSpec``.
        config: search settings.
    """

    def __init__(
        self, world_model: WorldModel, action_space: Any, config: PlannerConfig | None = None
    ) -> None:
        self.world_model = world_model
        self.spec = ActionSpec.from_space(action_space)
        self.config = config or PlannerConfig()
        self.device = world_model.device
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        if self.spec.kind == "continuous":
            self.low = torch.tensor(self.spec.low, device=self.device)  # (A,)
            self.high = torch.tensor(self.spec.high, device=self.device)  # (A,)
            if not bool(torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
                raise ValueError(
                    f"Planner: a continuous action space needs finite bounds, got low="
                    f"{self.spec.low} high={self.spec.high}"
                )

    # ------------------------------------------------------------------ distributions
    def initial_plan(self, num_envs: int) -> dict[str, torch.Tensor]:
        """The broad distribution a search starts from: uniform over actions, or centred."""
        h, dev = self.config.horizon, self.device
        if self.spec.kind == "discrete":
            n = self.spec.n
            return {"probs": torch.full((num_envs, h, n), 1.0 / n, device=dev)}
        half = (self.high - self.low) / 2  # (A,)
        mid = (self.high + self.low) / 2  # (A,)
        mean = mid.expand(num_envs, h, -1).clone()  # (N, H, A)
        std = (half * self.config.init_std).expand(num_envs, h, -1).clone()  # (N, H, A)
        return {"mean": mean, "std": std}

    def shift_plan(self, plan: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the step just taken and append a fresh last step (the warm start)."""
        fresh = self.initial_plan(next(iter(plan.values())).shape[0])
        out = {}
        for key, value in plan.items():
            out[key] = torch.cat([value[:, 1:], fresh[key][:, -1:]], dim=1)
        if "std" in out:  # a shifted plan still explores: reset the std to its initial width
            out["std"] = fresh["std"]
        return out

    def _sample(self, plan: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw candidates: ``(env actions (N, P, H[, A]), encoded (N, P, H, A_enc))``.

        Candidate 0 of each env is the distribution's mode, so the current best guess is always
        evaluated.
        """
        cfg = self.config
        if self.spec.kind == "discrete":
            probs = plan["probs"]  # (N, H, n)
            n_env, h, n = probs.shape
            flat = probs.reshape(n_env * h, n)
            idx = torch.multinomial(
                flat, cfg.population, replacement=True, generator=self.generator
            )
            idx = idx.reshape(n_env, h, cfg.population).permute(0, 2, 1)  # (N, P, H)
            if cfg.noise_correlation > 0:
                repeat = (
                    torch.rand(idx.shape, generator=self.generator, device=self.device)
                    < cfg.noise_correlation
                )  # (N, P, H)
                for t in range(1, h):
                    idx[:, :, t] = torch.where(repeat[:, :, t], idx[:, :, t - 1], idx[:, :, t])
            idx[:, 0] = probs.argmax(-1)
            onehot = torch.nn.functional.one_hot(idx, n).float()  # (N, P, H, n)
            return idx, onehot
        mean, std = plan["mean"], plan["std"]  # (N, H, A)
        eps = torch.randn(
            (mean.shape[0], cfg.population, *mean.shape[1:]),
            generator=self.generator,
            device=self.device,
        )  # (N, P, H, A)
        rho = cfg.noise_correlation
        if rho > 0:  # AR(1): unit variance at every step, correlation rho between neighbours
            scale = (1 - rho**2) ** 0.5
            for t in range(1, eps.shape[2]):
                eps[:, :, t] = rho * eps[:, :, t - 1] + scale * eps[:, :, t]
        eps[:, 0] = 0.0
        actions = torch.maximum(
            torch.minimum(mean.unsqueeze(1) + std.unsqueeze(1) * eps, self.high), self.low
        )  # (N, P, H, A)
        return actions, actions

    def _refit(
        self,
        plan: dict[str, torch.Tensor],
        encoded: torch.Tensor,
        returns: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """New distribution from candidates ``encoded (N, P, H, A)`` and ``returns (N, P)``."""
        cfg = self.config
        if cfg.method == "cem":
            top = returns.topk(cfg.num_elites, dim=1).indices  # (N, E)
            weights = torch.zeros_like(returns).scatter_(1, top, 1.0 / cfg.num_elites)  # (N, P)
        else:
            centred = returns - returns.max(dim=1, keepdim=True).values
            weights = torch.softmax(centred / cfg.mppi_temperature, dim=1)  # (N, P)
        w = weights[:, :, None, None]  # (N, P, 1, 1)
        mean = (w * encoded).sum(1)  # (N, H, A)
        if self.spec.kind == "discrete":
            n = self.spec.n
            probs = mean * (1 - n * cfg.min_prob) + cfg.min_prob
            if cfg.momentum:
                probs = cfg.momentum * plan["probs"] + (1 - cfg.momentum) * probs
            return {"probs": probs / probs.sum(-1, keepdim=True)}
        std = (w * (encoded - mean.unsqueeze(1)) ** 2).sum(1).sqrt()  # (N, H, A)
        if cfg.momentum:
            mean = cfg.momentum * plan["mean"] + (1 - cfg.momentum) * mean
            std = cfg.momentum * plan["std"] + (1 - cfg.momentum) * std
        floor = (self.high - self.low) / 2 * cfg.min_std  # (A,)
        return {"mean": mean, "std": torch.maximum(std, floor)}

    # ------------------------------------------------------------------ imagination
    @torch.inference_mode()
    def imagine_returns(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        """Discounted imagined return of each candidate sequence.

        Args:
            state: the world model's state for N envs (each tensor ``(N, ...)``).
            actions: env actions ``(N, P, H)`` int64 (discrete) or ``(N, P, H, A)`` float.

        Returns:
            ``(N, P)`` returns, averaged over ``particles`` imagined samples.
        """
        cfg = self.config
        n_env, pop, horizon = actions.shape[:3]
        k = cfg.particles
        rows = torch.arange(n_env, device=self.device).repeat_interleave(pop * k)  # (N*P*K,)
        s = index_state(state, rows)
        flat = actions.repeat_interleave(k, dim=1).reshape(n_env * pop * k, horizon, -1)
        if self.spec.kind == "discrete":
            flat = flat[..., 0]  # (B, H)
        total = torch.zeros(n_env * pop * k, device=self.device)
        alive = torch.ones_like(total)
        for t in range(horizon):
            s, reward, terminated = self.world_model.step(
                s, flat[:, t], cfg.temperature, generator=self.generator
            )
            total += alive * (cfg.discount**t) * reward.float()
            alive = alive * (~terminated).float()
        return total.reshape(n_env, pop, k).mean(-1)

    @torch.inference_mode()
    def plan(
        self, state: State, plan: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Search from ``state`` (N envs that have already observed their frame).

        Returns:
            ``(first actions, refined plan, best imagined return (N,))``; the actions are
            ``(N,)`` int64 or ``(N, A)`` float32 env actions.
        """
        n_env = next(iter(state.values())).shape[0]
        if plan is None or not self.config.warm_start:
            plan = self.initial_plan(n_env)
        best = torch.full((n_env,), -torch.inf, device=self.device)
        for _ in range(self.config.iterations):
            actions, encoded = self._sample(plan)
            returns = self.imagine_returns(state, actions)  # (N, P)
            best = torch.maximum(best, returns.max(dim=1).values)
            plan = self._refit(plan, encoded, returns)
        if self.spec.kind == "discrete":
            first = plan["probs"][:, 0].argmax(-1)  # (N,)
        else:
            first = plan["mean"][:, 0].clamp(self.low, self.high)  # (N, A)
        return first, plan, best


class PlannerAgent:
    """The planner as a policy for real envs, with a Stable-Baselines3-shaped ``predict``.

    Each call observes the frames, plans for every env at once (one batched imagination),
    acts, and advances the world model's memory with the action taken. It keeps timings so a
    caller can check that planning runs in real time.

    Args:
        world_model: any :class:`WorldModel`.
        action_space: the env's action space.
        config: search settings.
    """

    def __init__(
        self, world_model: WorldModel, action_space: Any, config: PlannerConfig | None = None
    ) -> None:
        self.world_model = world_model
        self.planner = Planner(world_model, action_space, config)
        self.calls = 0
        self.decisions = 0
        self.seconds = 0.0
        self.call_seconds: list[float] = []

    @property
    def config(self) -> PlannerConfig:
        return self.planner.config

    def timing(self) -> dict[str, float]:
        """Planning speed so far: median ms per call, decisions (env-steps) per second."""
        if not self.calls:
            return {"calls": 0}
        return {
            "calls": self.calls,
            "decisions": self.decisions,
            "median_ms_per_call": 1000 * float(np.median(self.call_seconds)),
            "decisions_per_s": self.decisions / self.seconds,
        }

    @torch.inference_mode()
    def predict(
        self,
        obs: np.ndarray,
        state: PlannerState | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, PlannerState]:
        """Plan and act on frames ``(N, H, W, 3)`` uint8 (or one frame ``(H, W, 3)``).

        Returns:
            Actions ``(N,)`` int64 or ``(N, A)`` float32 (no batch axis for a single frame),
            and the new :class:`PlannerState`; memory and plans reset where ``episode_start``.
        """
        t0 = time.perf_counter()
        obs_arr, single = frame_batch(obs, "PlannerAgent.predict")
        wm, planner = self.world_model, self.planner
        n = obs_arr.shape[0]
        if state is None:
            state = PlannerState(wm.initial_state(n), planner.initial_plan(n))
        else:
            mask = reset_mask(state.model, episode_start, n, wm.device, "PlannerAgent.predict")
            if mask is not None:
                state = PlannerState(
                    select_state(mask, wm.initial_state(n), state.model),
                    select_state(mask, planner.initial_plan(n), state.plan),
                )
        model = wm.observe(state.model, frames_to_tensor(obs_arr, device=wm.device))
        action, plan, _ = planner.plan(model, state.plan)
        model, _, _ = wm.step(model, action, planner.config.temperature, planner.generator)
        out = action.cpu().numpy()
        out = out.astype(np.int64) if planner.spec.kind == "discrete" else out.astype(np.float32)
        new_state = PlannerState(model, planner.shift_plan(plan))
        dt = time.perf_counter() - t0
        self.calls += 1
        self.decisions += n
        self.seconds += dt
        self.call_seconds.append(dt)
        return (out[0] if single else out), new_state
