"""The one open-loop runner: observe real frames, then imagine with given actions and decode.

Every picture and measure of a world model's imagination runs the same loop, through the
:class:`~dreamlab.worldmodel.WorldModel` protocol only (``initial_state``, ``observe``, ``step``,
``decode``), so it works for every generation:

1. observe the ``C`` context frames, stepping the actions taken between them (memory is warmed on
   the real context);
2. decode what the model sees after the last context frame (index 0);
3. step ``H`` actions without seeing another real frame, decoding after every step (1..H).

:func:`imagine` takes context frames and actions as tensors (a batch of dreams, e.g. K samples of
one future in :mod:`dreamlab.eval.futures`); :func:`imagine_episodes` replays held-out real
episodes with their own actions and compares every decoded frame with the real one
(:mod:`dreamlab.eval.fidelity`, :mod:`dreamlab.eval.dream_vs_real`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dreamlab.dream import frames_to_uint8
from dreamlab.models import frames_to_tensor
from dreamlab.worldmodel import WorldModel

__all__ = [
    "Episode",
    "Imagination",
    "check_episodes",
    "episode_actions",
    "frame_mse",
    "imagine",
    "imagine_episodes",
]

Episode = dict[str, np.ndarray]
"""one real episode in the store's layout: ``obs (T+1, h, w, 3)`` uint8, ``action (T, ...)``, ..."""


@dataclass
class Imagination:
    """``B`` dreams imagined open loop for ``H`` steps after their real context."""

    frames: np.ndarray
    """``(B, H+1, h, w, 3)`` uint8 decoded frames: index 0 is the model's view of the last context
    frame, index k the frame after k imagined steps"""
    reward: np.ndarray
    """``(B, H)`` float32 reward of every imagined step (as ``step`` returned it)"""
    terminated: np.ndarray
    """``(B, H)`` bool termination of every imagined step"""
    real: np.ndarray | None = None
    """``(B, H+1, h, w, 3)`` uint8 real frames aligned with :attr:`frames`, when known"""
    pixel_mse: np.ndarray | None = None
    """``(B, H+1)`` float64 pixel MSE (frames in [0, 1]) of the decoded frames against
    :attr:`real`, computed before the frames are rounded to uint8"""
    states: dict[str, np.ndarray] = field(default_factory=dict)
    """``key -> (B, H+1, ...)`` float32: the state entries asked for with ``record`` (those the
    model's state has), after the context and after every step"""


def episode_actions(rows: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Stored actions ``(B, ...)`` -> int64 indices (discrete) or float32 (boxes) on ``device``."""
    a = torch.as_tensor(np.ascontiguousarray(rows) if isinstance(rows, np.ndarray) else rows)
    a = a.long() if not a.is_floating_point() else a.float()
    return a.to(device).contiguous()


def check_episodes(episodes: Sequence[Episode], need_actions: int, who: str) -> None:
    """Raise a ValueError naming ``who`` unless every episode has ``obs``, ``action`` and at
    least ``need_actions`` steps."""
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


def frame_mse(frames: torch.Tensor, real: np.ndarray) -> np.ndarray:
    """Per-frame pixel MSE ``(N,)`` float64 of float frames ``(N, 3, h, w)`` in [0, 1] against
    uint8 real frames ``(N, h, w, 3)``."""
    target = frames_to_tensor(real, frames.device)  # (N, 3, h, w)
    return (frames - target).pow(2).mean((1, 2, 3)).double().cpu().numpy()


@torch.inference_mode()
def imagine(
    world_model: WorldModel,
    context_frames: torch.Tensor,
    actions: np.ndarray | torch.Tensor,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    real: np.ndarray | None = None,
    record: Sequence[str] = (),
) -> Imagination:
    """Observe ``C`` context frames, then imagine ``H`` steps open loop.

    Args:
        world_model: any :class:`~dreamlab.worldmodel.WorldModel`.
        context_frames: ``(B, C, 3, h, w)`` float in [0, 1], ``C >= 1``.
        actions: ``(B, C-1+H, ...)``: the ``C-1`` actions taken between the context frames, then
            the ``H >= 1`` actions to imagine (int for discrete, float for boxes).
        temperature: sampling temperature of every step.
        seed: seed of the sampling noise (one generator for the whole run).
        real: ``(B, H+1, h, w, 3)`` uint8 real frames from the last context frame on; given,
            every decoded frame is compared with its real one (:attr:`Imagination.pixel_mse`).
        record: state keys to keep after the context and after every step (e.g. ``"z"``).

    Returns:
        :class:`Imagination`.
    """
    if context_frames.dim() != 5 or context_frames.shape[1] < 1:
        raise ValueError(
            f"imagine: context frames must be (B, C, 3, h, w) with C >= 1, got "
            f"{tuple(context_frames.shape)}"
        )
    batch, context = context_frames.shape[:2]
    horizon = actions.shape[1] - (context - 1)
    if actions.shape[0] != batch or horizon < 1:
        raise ValueError(
            f"imagine: {batch} dreams with {context} context frames need actions (B={batch}, "
            f"{context - 1} + H >= 1, ...), got {tuple(actions.shape)}"
        )
    if real is not None and real.shape[:2] != (batch, horizon + 1):
        raise ValueError(
            f"imagine: real frames {real.shape} must be (B={batch}, H+1={horizon + 1}, h, w, 3)"
        )
    dev = torch.device(world_model.device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    state = world_model.initial_state(batch)
    for t in range(context):
        state = world_model.observe(state, context_frames[:, t].to(dev))
        if t < context - 1:
            state, _, _ = world_model.step(
                state, episode_actions(actions[:, t], dev), temperature, gen
            )
    frames: list[np.ndarray] = []
    errors: list[np.ndarray] = []
    rewards: list[np.ndarray] = []
    terms: list[np.ndarray] = []
    kept: dict[str, list[np.ndarray]] = {key: [] for key in record if key in state}

    def look(k: int) -> None:
        """Decode (and compare, and record) the state after k imagined steps."""
        decoded = world_model.decode(state).float().clamp(0.0, 1.0)  # (B, 3, h, w)
        frames.append(frames_to_uint8(decoded))
        if real is not None:
            errors.append(frame_mse(decoded, real[:, k]))
        for key, values in kept.items():
            values.append(state[key].float().cpu().numpy())

    look(0)
    for k in range(horizon):
        action = episode_actions(actions[:, context - 1 + k], dev)
        state, reward, terminated = world_model.step(state, action, temperature, gen)
        rewards.append(reward.float().cpu().numpy())
        terms.append(terminated.bool().cpu().numpy())
        look(k + 1)
    return Imagination(
        frames=np.stack(frames, axis=1),
        reward=np.stack(rewards, axis=1).astype(np.float32),
        terminated=np.stack(terms, axis=1),
        real=real,
        pixel_mse=np.stack(errors, axis=1) if real is not None else None,
        states={key: np.stack(values, axis=1) for key, values in kept.items()},
    )


def imagine_episodes(
    world_model: WorldModel,
    episodes: Sequence[Episode],
    context: int,
    horizon: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    record: Sequence[str] = (),
) -> Imagination:
    """Replay real episodes open loop: observe their first ``context`` frames (their real actions
    in between), then imagine ``horizon`` steps with their next real actions.

    Every episode needs ``context + horizon - 1`` steps. Decoded frame k is compared with real
    frame ``context - 1 + k`` (:attr:`Imagination.real`, :attr:`Imagination.pixel_mse`).

    Raises:
        ValueError: ``context`` or ``horizon`` < 1, or an episode too short.
    """
    if context < 1 or horizon < 1:
        raise ValueError(f"open loop: context and horizon must be >= 1, got {context}, {horizon}")
    check_episodes(episodes, context + horizon - 1, "open loop")
    obs = np.stack([ep["obs"][: context + horizon] for ep in episodes])  # (B, C+H, h, w, 3)
    act = np.stack([ep["action"][: context + horizon - 1] for ep in episodes])  # (B, C+H-1, ...)
    return imagine(
        world_model,
        frames_to_tensor(obs[:, :context], world_model.device),  # (B, C, 3, h, w)
        act,
        temperature=temperature,
        seed=seed,
        real=obs[:, context - 1 :],
        record=record,
    )
