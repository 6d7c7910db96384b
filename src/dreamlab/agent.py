"""What every world-model agent shares in the real environment, with a Stable-Baselines3-shaped
``predict``: frames in, memory reset where an episode starts (``predict_inputs``), and
``ActorAgent`` (any world model + an actor trained in its imagination; the Dreamer and token
generations use it). The V+M+C agent is :mod:`dreamlab.generations.vmc.agent`.

The loop of each call: observe the frame, read features, act, then advance the world model's
memory with the action taken (the imagined next observation is discarded because the next real
frame replaces it). The recurrent state is returned to the caller and reset where
``episode_start`` is true, so one agent serves a single env or a batch of envs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dreamlab.models import frames_to_tensor
from dreamlab.models.actor_critic import ActorCritic
from dreamlab.worldmodel import ActionSpec, State, WorldModel, select_state

__all__ = ["ActorAgent", "action_spec_of", "frame_batch", "predict_inputs", "reset_mask"]


def frame_batch(obs: Any, who: str) -> tuple[np.ndarray, bool]:
    """``obs`` as uint8 frames ``(N, H, W, 3)``, and whether it was one frame ``(H, W, 3)``.

    Raises:
        ValueError: naming ``who`` (e.g. ``"PlannerAgent.predict"``), for any other shape.
    """
    arr = np.asarray(obs)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"{who}: obs must be uint8 (N, H, W, 3) or (H, W, 3), got shape {np.asarray(obs).shape}"
        )
    return arr, single


def reset_mask(
    state: State, episode_start: Any, num_envs: int, device: torch.device, who: str
) -> torch.Tensor | None:
    """The ``(N,)`` bool mask of envs whose memory must be reset, or ``None`` if there are none.

    Raises:
        ValueError: the state was made for another number of envs.
    """
    batch = next(iter(state.values())).shape[0]
    if batch != num_envs:
        raise ValueError(f"{who}: state holds {batch} envs but obs has {num_envs}")
    if episode_start is None:
        return None
    mask = torch.as_tensor(np.asarray(episode_start, dtype=bool), device=device)
    return mask if bool(mask.any()) else None


def predict_inputs(
    world_model: WorldModel, obs: Any, state: State | None, episode_start: Any, who: str
) -> tuple[torch.Tensor, State, bool]:
    """The start every world-model agent's ``predict`` shares.

    Returns:
        ``(frames (N, 3, H, W) in [0, 1] on the model's device, state, single)``: the state is
        fresh memory when ``state`` is None, else ``state`` with the memory of the envs where
        ``episode_start`` is true reset; ``single`` tells whether ``obs`` was one frame.
    """
    obs_arr, single = frame_batch(obs, who)
    num_envs = obs_arr.shape[0]
    frames = frames_to_tensor(obs_arr, device=world_model.device)  # (N, 3, H, W)
    if state is None:
        return frames, world_model.initial_state(num_envs), single
    mask = reset_mask(state, episode_start, num_envs, world_model.device, who)
    if mask is not None:
        state = select_state(mask, world_model.initial_state(num_envs), state)
    return frames, state, single


def action_spec_of(actor_critic: ActorCritic) -> ActionSpec:
    """The env action space an actor acts in."""
    c = actor_critic.config
    if c.action_kind == "discrete":
        return ActionSpec("discrete", c.action_dim)
    return ActionSpec("continuous", c.action_dim, list(c.action_low), list(c.action_high))


class ActorAgent:
    """Acts in real envs with a world model and an actor trained in its imagination.

    ``predict`` observes the real frame, acts on the features, then carries the memory past the
    action (``_after_action``: a world-model ``step`` by default). Subclasses change only how a
    frame is observed or how the memory moves on (the token model ``advance``s).

    Args:
        world_model: any ``WorldModel``.
        actor_critic: the actor (and critic) trained in imagination.
        seed: seeds the generator of sampled actions (and of the model's samples).
    """

    def __init__(self, world_model: Any, actor_critic: ActorCritic, seed: int = 0):
        who = type(self).__name__
        if world_model.feature_dim != actor_critic.config.feature_dim:
            raise ValueError(
                f"{who}: world model features have size {world_model.feature_dim}, the "
                f"actor reads {actor_critic.config.feature_dim}"
            )
        self.world_model = world_model
        self.actor_critic = actor_critic.to(world_model.device)
        self.discrete = actor_critic.config.action_kind == "discrete"
        self.generator = torch.Generator(device=world_model.device).manual_seed(seed)

    def _observe(self, state: State, frames: torch.Tensor) -> State:
        """Put the real frames into the memory."""
        return self.world_model.observe(state, frames)

    def _after_action(self, state: State, env_action: torch.Tensor) -> State:
        """Carry the memory past the action taken, ready for the next real frame."""
        state, _, _ = self.world_model.step(state, env_action, generator=self.generator)
        return state

    @torch.inference_mode()
    def predict(
        self,
        obs: np.ndarray,
        state: State | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, State]:
        """Act on frames ``(N, H, W, 3)`` uint8 (or one ``(H, W, 3)``); returns ``(actions, state)``.

        Actions are ``(N,)`` int64 (discrete) or ``(N, A)`` float32 (Box); memory is reset where
        ``episode_start`` is true.
        """
        wm = self.world_model
        frames, state, single = predict_inputs(
            wm, obs, state, episode_start, f"{type(self).__name__}.predict"
        )
        state = self._observe(state, frames)
        dist = self.actor_critic.policy(wm.features(state))
        action = dist.mode() if deterministic else dist.sample(self.generator)
        env_action = self.actor_critic.to_env(action)  # (N,) or (N, A)
        state = self._after_action(state, env_action)
        out = env_action.cpu().numpy()
        out = out.astype(np.int64) if self.discrete else out.astype(np.float32)
        return (out[0] if single else out), state
