"""How faithful a world model's imagination is, measured the same way for every model family.

Every measure takes any :class:`~dreamlab.worldmodel.WorldModel` (V+M, RSSM, diffusion, tokens)
and held-out real episodes (dicts with ``obs (T+1, H, W, 3) uint8``, ``action (T, ...)``,
``reward (T,)``, ``terminated (T,)``), so that models compared on the same episodes are compared
on the same footing:

- :func:`open_loop`: observe ``context`` real frames, then imagine ``horizon`` steps with the real
  actions (:func:`dreamlab.eval.openloop.imagine_episodes`); pixel MSE and PSNR per step, against
  the *copy-last-frame* baseline (the last observed frame held still). A model that does not beat
  the baseline has learned nothing about motion.
- :func:`~dreamlab.eval.catch_probe.position_probe`: ball and paddle position errors and
  ball-visible agreement per step on imagined vs real Catch frames.
- :mod:`dreamlab.eval.step_measures`: teacher-forced reward and termination recall per class,
  action controllability, imagination speed.

:func:`measure_fidelity` runs them all (``docs/compare.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dreamlab.envs.catch import CatchConfig
from dreamlab.eval.catch_probe import position_probe
from dreamlab.eval.openloop import Episode, frame_mse, imagine_episodes
from dreamlab.eval.step_measures import (
    controllability,
    imagination_speed,
    reward_termination_recall,
)
from dreamlab.models import frames_to_tensor
from dreamlab.worldmodel import WorldModel

__all__ = [
    "fitting_horizons",
    "FidelityConfig",
    "FidelityResult",
    "OpenLoop",
    "measure_fidelity",
    "open_loop",
    "psnr",
]


@dataclass
class FidelityConfig:
    """Settings of :func:`measure_fidelity`."""

    context: int = 5
    """real frames each model observes before it imagines open loop"""
    horizon: int = 20
    """open-loop steps"""
    report_horizons: tuple[int, ...] = (1, 5, 10, 20)
    """steps reported as single numbers (those <= horizon); the whole curve is kept too"""
    temperature: float = 1.0
    """sampling temperature of every imagined step"""
    continuous_actions: int = 5
    """actions tried per state for a continuous action space (evenly spread from low to high)"""
    control_states: int = 64
    """at most this many real states for the controllability measure"""
    speed_batch: int = 64
    """dreams stepped together when timing imagination"""
    speed_steps: int = 20
    """steps per timed repeat"""
    speed_repeats: int = 3
    """timed repeats (the median is reported)"""
    psnr_cap: float = 60.0
    """PSNR of a perfect frame (MSE 0), in dB; above the ~54 dB of one uint8 rounding step"""
    seed: int = 0
    """seed of every sampled step"""

    def __post_init__(self) -> None:
        for name in ("context", "horizon", "speed_batch", "speed_steps", "speed_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"FidelityConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if self.continuous_actions < 2 or self.control_states < 1:
            raise ValueError(
                "FidelityConfig: continuous_actions must be >= 2 and control_states >= 1, got "
                f"{self.continuous_actions}, {self.control_states}"
            )
        if self.temperature < 0 or self.psnr_cap <= 0:
            raise ValueError("FidelityConfig: temperature must be >= 0 and psnr_cap > 0")


def psnr(mse: np.ndarray, cap: float = 60.0) -> np.ndarray:
    """PSNR in dB of frames in ``[0, 1]`` from their MSE, ``cap`` where the MSE is 0."""
    mse = np.asarray(mse, np.float64)
    with np.errstate(divide="ignore"):
        value = 10.0 * np.log10(1.0 / mse)
    return np.minimum(value, cap)


@dataclass
class OpenLoop:
    """Open-loop imagination of B held-out episodes over H steps, and its errors."""

    mse: np.ndarray
    """``(B, H)`` pixel MSE of the imagined frame k+1 against the real one"""
    psnr: np.ndarray
    """``(B, H)`` PSNR in dB (capped for a perfect frame)"""
    baseline_mse: np.ndarray
    """``(B, H)`` MSE of the copy-last-frame baseline"""
    baseline_psnr: np.ndarray
    """``(B, H)`` PSNR of the baseline"""
    reward_abs: np.ndarray
    """``(B, H)`` absolute error of the imagined reward"""
    imagined: np.ndarray
    """``(B, H, h, w, 3)`` uint8 imagined frames"""
    real: np.ndarray
    """``(B, H, h, w, 3)`` uint8 real frames after the same actions"""
    last_observed: np.ndarray
    """``(B, h, w, 3)`` uint8 last real frame the model saw (the baseline's prediction)"""


def fitting_horizons(
    episodes: list[Episode], context: int, horizons: tuple[int, ...]
) -> tuple[int, ...]:
    """The ``horizons`` that at least one of ``episodes`` is long enough to measure after
    ``context`` real frames (an env whose episodes end early, say on failure, may allow only the
    short ones, or none)."""
    longest = max((len(ep["action"]) for ep in episodes), default=0)
    return tuple(h for h in horizons if context + h - 1 <= longest)


def open_loop(
    world_model: WorldModel,
    episodes: list[Episode],
    context: int,
    horizon: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    psnr_cap: float = 60.0,
) -> OpenLoop:
    """Observe ``context`` real frames, then imagine ``horizon`` steps with the real actions.

    Frames ``0..context-1`` are observed (the model steps the real action between them), then the
    model steps actions ``context-1 .. context+horizon-2`` without seeing another frame; imagined
    step k is compared with real frame ``context-1+k``. Every episode needs
    ``context + horizon - 1`` steps.
    """
    run = imagine_episodes(
        world_model, episodes, context, horizon, temperature=temperature, seed=seed
    )
    assert run.real is not None and run.pixel_mse is not None  # replayed real episodes
    last = run.real[:, 0]  # (B, h, w, 3): the copy-last-frame baseline's prediction
    held = frames_to_tensor(last)  # (B, 3, h, w)
    base = np.stack([frame_mse(held, run.real[:, k]) for k in range(1, horizon + 1)], 1)
    mse = run.pixel_mse[:, 1:]  # (B, H)
    if all("reward" in ep for ep in episodes):
        real_reward = np.stack(
            [ep["reward"][context - 1 : context + horizon - 1] for ep in episodes]
        )
        reward_abs = np.abs(run.reward - real_reward)
    else:
        reward_abs = np.full_like(mse, np.nan)
    return OpenLoop(
        mse=mse,
        psnr=psnr(mse, psnr_cap),
        baseline_mse=base,
        baseline_psnr=psnr(base, psnr_cap),
        reward_abs=reward_abs,
        imagined=run.frames[:, 1:],
        real=run.real[:, 1:],
        last_observed=last,
    )


@dataclass
class FidelityResult:
    """Everything :func:`measure_fidelity` measured on one world model."""

    config: FidelityConfig
    open_loop: OpenLoop
    probe: dict[str, np.ndarray] | None
    """per-step position errors of the model (Catch only)"""
    probe_baseline: dict[str, np.ndarray] | None
    """the same for the copy-last-frame baseline"""
    recall: dict[str, Any]
    control: dict[str, Any]
    speed: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def horizons(self) -> list[int]:
        """Reported steps (those of ``report_horizons`` within the horizon)."""
        return [h for h in self.config.report_horizons if 1 <= h <= self.config.horizon]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready numbers: values at the reported horizons and the whole curves."""
        ol = self.open_loop

        def at(curve: np.ndarray) -> dict[str, float | None]:
            return {str(h): _num(curve[h - 1]) for h in self.horizons()}

        def curves(values: dict[str, np.ndarray]) -> dict[str, Any]:
            return {k: {"at": at(v), "curve": [_num(x) for x in v]} for k, v in values.items()}

        out: dict[str, Any] = {
            "config": {**dataclasses.asdict(self.config)},
            "episodes": int(ol.mse.shape[0]),
            "open_loop": curves(
                {
                    "mse": ol.mse.mean(0),
                    "psnr": ol.psnr.mean(0),
                    "reward_abs": ol.reward_abs.mean(0),
                }
            ),
            "copy_last": curves({"mse": ol.baseline_mse.mean(0), "psnr": ol.baseline_psnr.mean(0)}),
            "probe": None if self.probe is None else curves(self.probe),
            "probe_copy_last": None if self.probe_baseline is None else curves(self.probe_baseline),
            "recall": self.recall,
            "control": self.control,
            "speed": self.speed,
            "notes": list(self.notes),
        }
        out["config"]["report_horizons"] = list(self.config.report_horizons)
        return out


def _num(x: Any) -> float | None:
    """A float for JSON; None for NaN or inf (JSON has neither)."""
    value = float(x)
    return value if np.isfinite(value) else None


def measure_fidelity(
    world_model: WorldModel,
    episodes: list[Episode],
    action_space: Any,
    config: FidelityConfig | None = None,
    *,
    catch: CatchConfig | None = None,
) -> FidelityResult:
    """Every fidelity measure of one world model on the same held-out episodes.

    Args:
        world_model: any ``WorldModel``.
        episodes: held-out real episodes; those shorter than ``context + horizon - 1`` steps are
            left out of the open-loop, probe and controllability measures (all of them count for
            reward and termination recall).
        action_space: the env's action space (gymnasium space or ``ActionSpec``).
        config: settings (default :class:`FidelityConfig`).
        catch: Catch geometry for the position probe (see :func:`~dreamlab.eval.catch_probe.catch_config_for`); None skips
            the probe with a note (not a Catch env).
    """
    cfg = config or FidelityConfig()
    need = cfg.context + cfg.horizon - 1
    long = [ep for ep in episodes if len(ep["action"]) >= need]
    if not long:
        raise ValueError(
            f"measure_fidelity: no held-out episode has the {need} steps that context "
            f"{cfg.context} + horizon {cfg.horizon} need"
        )
    notes = []
    if len(long) < len(episodes):
        notes.append(f"{len(episodes) - len(long)} held-out episodes shorter than {need} steps")
    ol = open_loop(
        world_model,
        long,
        cfg.context,
        cfg.horizon,
        temperature=cfg.temperature,
        seed=cfg.seed,
        psnr_cap=cfg.psnr_cap,
    )
    probe = probe_base = None
    if catch is None:
        notes.append("position probe skipped: not a Catch env")
    else:
        probe = position_probe(ol.imagined, ol.real, catch)
        held = np.broadcast_to(ol.last_observed[:, None], ol.real.shape)
        probe_base = position_probe(np.ascontiguousarray(held), ol.real, catch)
    recall = reward_termination_recall(
        world_model, episodes, temperature=cfg.temperature, seed=cfg.seed
    )
    control = controllability(
        world_model,
        long,
        action_space,
        context=cfg.context,
        max_states=cfg.control_states,
        continuous_actions=cfg.continuous_actions,
        catch=catch,
        temperature=cfg.temperature,
        seed=cfg.seed,
    )
    speed = imagination_speed(
        world_model,
        np.stack([ep["obs"][0] for ep in long]),
        action_space,
        batch_size=cfg.speed_batch,
        steps=cfg.speed_steps,
        repeats=cfg.speed_repeats,
        temperature=cfg.temperature,
        seed=cfg.seed,
    )
    return FidelityResult(cfg, ol, probe, probe_base, recall, control, speed, notes)
