"""How faithful a world model's imagination is, measured the same way for every model family.

Every measure takes any :class:`~dreamlab.worldmodel.WorldModel` (V+M, RSSM, diffusion, tokens)
and held-out real episodes (dicts with ``obs (T+1, H, W, 3) uint8``, ``action (T, ...)``,
``reward (T,)``, ``terminated (T,)``), so that models compared on the same episodes are compared
on the same footing:

- :func:`open_loop`: observe ``context`` real frames, then imagine ``horizon`` steps with the real
  actions; pixel MSE and PSNR per step, against the *copy-last-frame* baseline (the last observed
  frame held still). A model that does not beat the baseline has learned nothing about motion.
- :func:`position_probe`: :func:`dreamlab.envs.locate_objects` on imagined vs real Catch frames:
  ball and paddle position errors and ball-visible agreement per step. Pixel MSE barely notices a
  3x3 ball drawn in the wrong place; the probe does.
- :func:`reward_termination_recall`: teacher-forced one-step predictions (observe the real frame,
  step the real action) scored by recall per reward class and per termination value; overall
  accuracy would hide the rare rewarding steps.
- :func:`controllability`: from the same states, step every action (or a few spread continuous
  ones) with the same random numbers and measure how different the imagined frames are; a model
  that ignores actions scores 0.
- :func:`imagination_speed`: imagined steps per second at a fixed batch size.

:func:`measure_fidelity` runs them all (``docs/compare.md``).
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dreamlab.dream import frames_to_uint8
from dreamlab.envs.catch import CatchConfig, locate_objects
from dreamlab.models import frames_to_tensor
from dreamlab.worldmodel import ActionSpec, State, WorldModel

__all__ = [
    "FidelityConfig",
    "FidelityResult",
    "OpenLoop",
    "catch_config_for",
    "controllability",
    "imagination_speed",
    "measure_fidelity",
    "open_loop",
    "position_probe",
    "psnr",
    "reward_termination_recall",
]

Episode = dict[str, np.ndarray]


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


# ----------------------------------------------------------------------------------- helpers
def _generator(world_model: WorldModel, seed: int) -> torch.Generator:
    return torch.Generator(device=world_model.device).manual_seed(seed)


def _actions(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Stored actions ``(B, ...)`` -> int64 indices for discrete, float32 for boxes."""
    a = torch.as_tensor(np.ascontiguousarray(rows))
    a = a.long() if not a.is_floating_point() else a.float()
    return a.to(device)


def _nanmean(x: np.ndarray, axis: int | None = None) -> Any:
    """Mean ignoring NaN; NaN (no warning) where every value is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(x, axis=axis)


def psnr(mse: np.ndarray, cap: float = 60.0) -> np.ndarray:
    """PSNR in dB of frames in ``[0, 1]`` from their MSE, ``cap`` where the MSE is 0."""
    mse = np.asarray(mse, np.float64)
    with np.errstate(divide="ignore"):
        value = 10.0 * np.log10(1.0 / mse)
    return np.minimum(value, cap)


def _check_episodes(episodes: list[Episode], need_actions: int, who: str) -> None:
    if not episodes:
        raise ValueError(f"{who}: no episodes")
    for i, ep in enumerate(episodes):
        missing = [k for k in ("obs", "action") if k not in ep]
        if missing:
            raise ValueError(f"{who}: episode {i} lacks {missing}")
        if len(ep["action"]) < need_actions:
            raise ValueError(
                f"{who}: episode {i} has {len(ep['action'])} steps, {need_actions} are needed"
            )


def catch_config_for(env: str, env_kwargs: dict[str, Any] | None = None) -> CatchConfig | None:
    """The Catch geometry of ``env`` (a preset name or env id), or None when it is not Catch."""
    from dreamlab.envs import CATCH_IDS
    from dreamlab.envs.presets import resolve_preset

    preset = resolve_preset(env)
    if preset.env_id not in CATCH_IDS:
        return None
    names = {f.name for f in dataclasses.fields(CatchConfig)}
    kwargs = {**preset.env_kwargs, **(env_kwargs or {})}
    return CatchConfig(**{k: v for k, v in kwargs.items() if k in names})


# ----------------------------------------------------------------------------------- open loop
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


@torch.inference_mode()
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
    if context < 1 or horizon < 1:
        raise ValueError(f"open_loop: context and horizon must be >= 1, got {context}, {horizon}")
    _check_episodes(episodes, context + horizon - 1, "open_loop")
    dev = world_model.device
    gen = _generator(world_model, seed)
    obs = np.stack([ep["obs"][: context + horizon] for ep in episodes])  # (B, C+H, h, w, 3)
    act = np.stack([ep["action"][: context + horizon - 1] for ep in episodes])  # (B, C+H-1, ...)
    has_reward = all("reward" in ep for ep in episodes)
    rew = (
        np.stack([ep["reward"][: context + horizon - 1] for ep in episodes]) if has_reward else None
    )

    state = world_model.initial_state(len(episodes))
    for t in range(context):
        state = world_model.observe(state, frames_to_tensor(obs[:, t], dev))
        if t < context - 1:
            state, _, _ = world_model.step(state, _actions(act[:, t], dev), temperature, gen)
    last = frames_to_tensor(obs[:, context - 1], dev)  # (B, 3, h, w)
    mse, base, rew_err, imagined = [], [], [], []
    for k in range(horizon):
        t = context - 1 + k
        state, reward, _ = world_model.step(state, _actions(act[:, t], dev), temperature, gen)
        frames = world_model.decode(state).float().clamp(0.0, 1.0)  # (B, 3, h, w)
        real = frames_to_tensor(obs[:, t + 1], dev)  # (B, 3, h, w)
        mse.append((frames - real).pow(2).mean((1, 2, 3)).double().cpu().numpy())
        base.append((last - real).pow(2).mean((1, 2, 3)).double().cpu().numpy())
        imagined.append(frames_to_uint8(frames))
        if rew is not None:
            rew_err.append(np.abs(reward.float().cpu().numpy() - rew[:, t]))
    mse_a, base_a = np.stack(mse, 1), np.stack(base, 1)  # (B, H)
    return OpenLoop(
        mse=mse_a,
        psnr=psnr(mse_a, psnr_cap),
        baseline_mse=base_a,
        baseline_psnr=psnr(base_a, psnr_cap),
        reward_abs=np.stack(rew_err, 1) if rew_err else np.full_like(mse_a, np.nan),
        imagined=np.stack(imagined, 1),
        real=obs[:, context:],
        last_observed=obs[:, context - 1],
    )


# ----------------------------------------------------------------------------------- probe
def position_probe(
    imagined: np.ndarray, real: np.ndarray, catch: CatchConfig | None = None
) -> dict[str, np.ndarray]:
    """Catch object positions read from imagined vs real frames, per step.

    Args:
        imagined: ``(B, H, S, S, 3)`` uint8 generated frames (or any prediction, e.g. the
            copy-last baseline broadcast to ``(B, H, ...)``).
        real: ``(B, H, S, S, 3)`` uint8 real frames.
        catch: the env's geometry (paddle height); default ``CatchConfig()``.

    Returns:
        ``(H,)`` arrays: ``ball_x_err``, ``ball_y_err`` (mean absolute pixels over the frames where
        both show a ball; NaN where none does), ``paddle_x_err`` (where both show a paddle) and
        ``ball_visible_agreement`` (fraction of frames where both agree on whether a ball is seen).
    """
    if imagined.shape != real.shape or imagined.ndim != 5:
        raise ValueError(
            f"position_probe: imagined {imagined.shape} and real {real.shape} must both be "
            "(B, H, S, S, 3)"
        )
    a, b = locate_objects(imagined, catch), locate_objects(real, catch)
    out = {
        key: _nanmean(np.abs(a[key] - b[key]), axis=0)  # (H,)
        for key in ("ball_x", "ball_y", "paddle_x")
    }
    return {
        "ball_x_err": np.asarray(out["ball_x"], np.float64),
        "ball_y_err": np.asarray(out["ball_y"], np.float64),
        "paddle_x_err": np.asarray(out["paddle_x"], np.float64),
        "ball_visible_agreement": (a["ball_visible"] == b["ball_visible"]).mean(0),
    }


# ----------------------------------------------------------------------------------- recall
@torch.inference_mode()
def reward_termination_recall(
    world_model: WorldModel,
    episodes: list[Episode],
    *,
    reward_classes: list[float] | None = None,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Teacher-forced one-step reward and termination predictions, scored by recall per class.

    At every real step t the model observes the real frame t and steps the real action t; its
    reward is rounded to the nearest class and its termination compared with the real one.

    Args:
        reward_classes: the reward values to tell apart; default the distinct rounded real
            rewards (Catch: -1, 0, 1).

    Returns:
        ``reward``: ``{class: {"recall", "count"}}``, ``reward_balanced`` (mean recall over the
        classes that occur), ``terminated``: ``{"true": {...}, "false": {...}}``,
        ``terminated_balanced``, ``steps``.
    """
    _check_episodes(episodes, 1, "reward_termination_recall")
    for i, ep in enumerate(episodes):
        if "reward" not in ep or "terminated" not in ep:
            raise ValueError(f"reward_termination_recall: episode {i} lacks reward or terminated")
    dev = world_model.device
    gen = _generator(world_model, seed)
    lengths = np.array([len(ep["action"]) for ep in episodes])
    steps_max = int(lengths.max())

    def padded(key: str, rows: int) -> np.ndarray:
        out = []
        for ep in episodes:
            x = np.asarray(ep[key])
            pad = rows - len(x)
            out.append(np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad > 0 else x[:rows])
        return np.stack(out)

    obs = padded("obs", steps_max + 1)  # (B, T+1, h, w, 3)
    act = padded("action", steps_max)  # (B, T, ...)
    real_r = np.concatenate([np.asarray(ep["reward"], np.float64) for ep in episodes])
    real_t = np.concatenate([np.asarray(ep["terminated"], bool) for ep in episodes])
    pred_r_rows, pred_t_rows = [], []
    state = world_model.initial_state(len(episodes))
    for t in range(steps_max):
        state = world_model.observe(state, frames_to_tensor(obs[:, t], dev))
        state, reward, term = world_model.step(state, _actions(act[:, t], dev), temperature, gen)
        pred_r_rows.append(reward.float().cpu().numpy())
        pred_t_rows.append(term.bool().cpu().numpy())
    pred_r_all, pred_t_all = np.stack(pred_r_rows, 1), np.stack(pred_t_rows, 1)  # (B, T)
    pred_r = np.concatenate([pred_r_all[i, :n] for i, n in enumerate(lengths)])
    pred_t = np.concatenate([pred_t_all[i, :n] for i, n in enumerate(lengths)])

    classes = np.asarray(
        sorted(set(np.round(real_r).tolist())) if reward_classes is None else reward_classes,
        np.float64,
    )
    nearest = np.abs(pred_r[:, None] - classes[None]).argmin(1)  # (N,)
    truth = np.abs(real_r[:, None] - classes[None]).argmin(1)  # (N,)
    reward: dict[str, dict[str, float]] = {}
    for i, c in enumerate(classes):
        mask = truth == i
        n = int(mask.sum())
        reward[f"{c:g}"] = {
            "recall": float((nearest[mask] == i).mean()) if n else float("nan"),
            "count": n,
        }
    term: dict[str, dict[str, float]] = {}
    for name, value in (("true", True), ("false", False)):
        mask = real_t == value
        n = int(mask.sum())
        term[name] = {
            "recall": float((pred_t[mask] == value).mean()) if n else float("nan"),
            "count": n,
        }
    return {
        "reward": reward,
        "reward_balanced": float(_nanmean(np.array([v["recall"] for v in reward.values()]))),
        "terminated": term,
        "terminated_balanced": float(_nanmean(np.array([v["recall"] for v in term.values()]))),
        "steps": int(len(real_r)),
    }


# ----------------------------------------------------------------------------------- control
def _clone(state: State) -> State:
    return {k: v.clone() for k, v in state.items()}


def _action_set(spec: ActionSpec, count: int, n_states: int, device: torch.device) -> list[Any]:
    """One ``(N,)`` / ``(N, A)`` action batch per tried action, ordered from low to high."""
    if spec.kind == "discrete":
        return [torch.full((n_states,), i, dtype=torch.long, device=device) for i in range(spec.n)]
    low = torch.tensor(spec.low, dtype=torch.float32, device=device)  # (A,)
    high = torch.tensor(spec.high, dtype=torch.float32, device=device)  # (A,)
    fracs = torch.linspace(0.0, 1.0, count).tolist()
    return [(low + f * (high - low)).expand(n_states, -1).clone() for f in fracs]


@torch.inference_mode()
def controllability(
    world_model: WorldModel,
    episodes: list[Episode],
    action_space: Any,
    *,
    context: int = 5,
    max_states: int = 64,
    continuous_actions: int = 5,
    catch: CatchConfig | None = None,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """How much the imagined next frame depends on the action.

    States: the model filters each episode's real frames (real actions in between) and a state is
    kept after frames ``context-1``, ``context+4``, ... (every 5 steps), up to ``max_states``.
    From each state every action (discrete) or ``continuous_actions`` actions evenly spread over
    the box are stepped, each with the **same** random numbers, so a model that ignores the action
    produces identical frames.

    Returns:
        ``pairwise_mse``: mean over states and action pairs of the pixel MSE between the imagined
        frames; ``noise_mse``: the same action stepped with two different seeds (the model's own
        sampling spread, for scale); ``paddle_x_spread`` (Catch only): mean over states of the
        range of the paddle's x (pixels) across actions, read by :func:`position_probe`'s
        locator; ``actions``, ``states``.
    """
    spec = ActionSpec.from_space(action_space)
    _check_episodes(episodes, context, "controllability")
    dev = world_model.device
    gen = _generator(world_model, seed)
    length = min(len(ep["action"]) for ep in episodes)  # steps every episode has
    times = list(range(context - 1, length, 5))
    obs = np.stack([ep["obs"][: length + 1] for ep in episodes])
    act = np.stack([ep["action"][:length] for ep in episodes])
    snapshots: list[State] = []
    state = world_model.initial_state(len(episodes))
    for t in range(times[-1] + 1):
        state = world_model.observe(state, frames_to_tensor(obs[:, t], dev))
        if t in times:
            snapshots.append(_clone(state))
        if t < times[-1]:
            state, _, _ = world_model.step(state, _actions(act[:, t], dev), temperature, gen)
    start = {k: torch.cat([s[k] for s in snapshots])[:max_states] for k in snapshots[0]}
    n = next(iter(start.values())).shape[0]
    actions = _action_set(spec, continuous_actions, n, dev)

    def imagine(action: torch.Tensor, step_seed: int) -> torch.Tensor:
        g = _generator(world_model, step_seed)
        nxt, _, _ = world_model.step(_clone(start), action, temperature, g)
        return world_model.decode(nxt).float().clamp(0.0, 1.0)  # (N, 3, h, w)

    frames = [imagine(a, seed) for a in actions]
    pair = [
        float((frames[i] - frames[j]).pow(2).mean())
        for i, j in itertools.combinations(range(len(frames)), 2)
    ]
    middle = actions[len(actions) // 2]
    noise = float((imagine(middle, seed) - imagine(middle, seed + 1)).pow(2).mean())
    out: dict[str, Any] = {
        "pairwise_mse": float(np.mean(pair)),
        "noise_mse": noise,
        "actions": len(actions),
        "states": n,
    }
    if catch is not None:
        paddle = np.stack(
            [locate_objects(frames_to_uint8(f), catch)["paddle_x"] for f in frames]
        )  # (K, N)
        seen = np.isfinite(paddle).all(0)  # (N,)
        spread = paddle.max(0) - paddle.min(0) if bool(seen.any()) else np.array([np.nan])
        out["paddle_x_spread"] = float(spread[seen].mean()) if bool(seen.any()) else float("nan")
    return out


# ----------------------------------------------------------------------------------- speed
@torch.inference_mode()
def imagination_speed(
    world_model: WorldModel,
    frames: np.ndarray,
    action_space: Any,
    *,
    batch_size: int = 64,
    steps: int = 20,
    repeats: int = 3,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Imagined steps per second of ``batch_size`` dreams, median of ``repeats`` timed runs.

    Each run starts from the same states (``frames`` observed, tiled to the batch) and calls
    ``step`` and ``features`` ``steps`` times with random actions, as a dream env does; frames are
    not decoded (a dream needs only features). One untimed step warms up.

    Args:
        frames: ``(N, h, w, 3)`` uint8 real frames to start from.

    Returns:
        ``steps_per_s`` (imagined transitions per second, all dreams together),
        ``batch_size``, ``steps``, ``seconds`` (every repeat).
    """
    spec = ActionSpec.from_space(action_space)
    dev = world_model.device
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"imagination_speed: frames of shape {frames.shape}; need (N, h, w, 3)")
    rows = np.resize(np.arange(len(frames)), batch_size)
    start = world_model.observe(
        world_model.initial_state(batch_size), frames_to_tensor(frames[rows], dev)
    )
    gen = _generator(world_model, seed)
    cpu = torch.Generator().manual_seed(seed)

    def random_action() -> torch.Tensor:
        if spec.kind == "discrete":
            return torch.randint(spec.n, (batch_size,), generator=cpu).to(dev)
        low, high = torch.tensor(spec.low), torch.tensor(spec.high)
        return (low + torch.rand(batch_size, spec.n, generator=cpu) * (high - low)).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    world_model.step(_clone(start), random_action(), temperature, gen)
    seconds = []
    for _ in range(repeats):
        state = _clone(start)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            state, _, _ = world_model.step(state, random_action(), temperature, gen)
            world_model.features(state)
        sync()
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return {
        "steps_per_s": batch_size * steps / max(median, 1e-9),
        "batch_size": batch_size,
        "steps": steps,
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------------- all
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

        def at(curve: np.ndarray) -> dict[str, float]:
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
        catch: Catch geometry for the position probe (see :func:`catch_config_for`); None skips
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
