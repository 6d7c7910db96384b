"""Measures of single imagined steps: reward and termination recall, controllability, speed.

- :func:`reward_termination_recall`: teacher-forced one-step predictions (observe the real frame,
  step the real action) scored by recall per reward class and per termination value; overall
  accuracy would hide the rare rewarding steps.
- :func:`controllability`: from the same states, step every action (or a few spread continuous
  ones) with the same random numbers and measure how different the imagined frames are; a model
  that ignores actions scores 0.
- :func:`imagination_speed`: imagined steps per second at a fixed batch size.

Every measure takes any :class:`~dreamlab.worldmodel.WorldModel` and held-out real episodes
(see :mod:`dreamlab.eval.fidelity`).
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

import numpy as np
import torch

from dreamlab.dream import frames_to_uint8
from dreamlab.envs.catch import CatchConfig, locate_objects
from dreamlab.eval.catch_probe import nanmean
from dreamlab.eval.openloop import Episode, check_episodes, episode_actions
from dreamlab.models import frames_to_tensor
from dreamlab.worldmodel import ActionSpec, State, WorldModel

__all__ = ["controllability", "imagination_speed", "reward_termination_recall"]


def _generator(world_model: WorldModel, seed: int) -> torch.Generator:
    return torch.Generator(device=world_model.device).manual_seed(seed)


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
    check_episodes(episodes, 1, "reward_termination_recall")
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
        state, reward, term = world_model.step(
            state, episode_actions(act[:, t], dev), temperature, gen
        )
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
        "reward_balanced": float(nanmean(np.array([v["recall"] for v in reward.values()]))),
        "terminated": term,
        "terminated_balanced": float(nanmean(np.array([v["recall"] for v in term.values()]))),
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
    check_episodes(episodes, context, "controllability")
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
            state, _, _ = world_model.step(state, episode_actions(act[:, t], dev), temperature, gen)
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
