"""What every world-model agent shares in the real environment, with a Stable-Baselines3-shaped
``predict``: frames in, memory reset where an episode starts (``predict_inputs``), and
``ActorAgent`` (any world model + an actor trained in its imagination; the Dreamer and token
generations use it), and ``BCPolicy`` (a behavioral-cloning network, on pixels or on a world
model's features; trained by :mod:`dreamlab.bc`). The V+M+C agent is
:mod:`dreamlab.generations.vmc.agent`.

The loop of each call: observe the frame, read features, act, then advance the world model's
memory with the action taken (the imagined next observation is discarded because the next real
frame replaces it). The recurrent state is returned to the caller and reset where
``episode_start`` is true, so one agent serves a single env or a batch of envs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.checkpoint import CheckpointError, load_model
from dreamlab.models import frames_to_tensor
from dreamlab.models.actor_critic import ActorCritic
from dreamlab.models.bc import BCNet
from dreamlab.worldmodel import ActionSpec, State, WorldModel, select_state

__all__ = [
    "BC_SOURCE_FILE",
    "ActorAgent",
    "BCPolicy",
    "action_spec_of",
    "frame_batch",
    "predict_inputs",
    "reset_mask",
]

BC_SOURCE_FILE = "bc.json"
"""written beside a BC checkpoint: what it was trained on (demos, world model run, frames)"""


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

    def dream_policy(self, features: torch.Tensor) -> torch.Tensor:
        """The same actor inside the dream: features ``(N, F)`` -> env actions (its mode)."""
        with torch.no_grad():
            return self.actor_critic.to_env(self.actor_critic.policy(features).mode())

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


# ------------------------------------------------------------------------------ BC policies


class BCPolicy:
    """A :class:`~dreamlab.models.bc.BCNet` acting in an env.

    Args:
        net: the trained network.
        world_model: required for ``inputs='features'`` (its ``feature_dim`` must match), unused
            for pixels.
    """

    def __init__(self, net: BCNet, world_model: WorldModel | None = None) -> None:
        c = net.config
        if c.inputs == "features":
            if world_model is None:
                raise ValueError("BCPolicy: a features BC network needs the world model it reads")
            if world_model.feature_dim != c.feature_dim:
                raise ValueError(
                    f"BCPolicy: the world model's features have size {world_model.feature_dim}, "
                    f"the network reads {c.feature_dim}"
                )
        self.net = net.eval()
        self.world_model = world_model if c.inputs == "features" else None

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.inference_mode()
    def predict(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Actions for a batch of frames.

        Args:
            obs: uint8 frames ``(N, H, W, 3)``.
            state: the state returned by the previous call (``None``: every env starts fresh).
            episode_start: ``(N,)`` bool; memory is reset where true.
            deterministic: accepted for SB3 compatibility; the policy is deterministic.

        Returns:
            ``(actions, state)``: ``(N, A)`` float32 (Box) or ``(N,)`` int64 (Discrete).
        """
        frames = np.asarray(obs)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"BCPolicy.predict: obs of shape {frames.shape} and dtype {frames.dtype}; "
                "expected uint8 (N, H, W, 3)"
            )
        n = frames.shape[0]
        start = (
            np.ones(n, dtype=bool)
            if episode_start is None
            else np.asarray(episode_start, dtype=bool)
        )
        if start.shape != (n,):
            raise ValueError(
                f"BCPolicy.predict: episode_start of shape {start.shape}; expected ({n},)"
            )
        if self.world_model is None:
            return self._predict_pixels(frames, state, start)
        return self._predict_features(frames, state, start)

    def _predict_pixels(
        self, frames: np.ndarray, state: np.ndarray | None, start: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        k = self.net.config.frame_stack
        n = frames.shape[0]
        if state is None or state.shape[0] != n:
            stack = np.repeat(frames[:, None], k, axis=1)  # (N, K, H, W, 3)
        else:
            stack = np.concatenate([state[:, 1:], frames[:, None]], axis=1)  # (N, K, H, W, 3)
            stack[start] = frames[start, None]
        actions = self.net.act(torch.as_tensor(stack, device=self.device))
        return self._to_numpy(actions), stack

    def _predict_features(
        self, frames: np.ndarray, state: State | None, start: np.ndarray
    ) -> tuple[np.ndarray, State]:
        wm = self.world_model
        assert wm is not None
        n = frames.shape[0]
        fresh = wm.initial_state(n)
        if state is None or next(iter(state.values())).shape[0] != n:
            state = fresh
        elif start.any():
            state = select_state(torch.as_tensor(start, device=wm.device), fresh, state)
        state = wm.observe(state, frames_to_tensor(frames, device=wm.device))
        actions = self.net.act(wm.features(state).to(self.device))  # (N, A) or (N,)
        state, _, _ = wm.step(state, actions.to(wm.device))
        return self._to_numpy(actions), state

    def _to_numpy(self, actions: torch.Tensor) -> np.ndarray:
        out = actions.cpu().numpy()
        if self.net.config.action_kind == "discrete":
            return out.astype(np.int64)
        return out.astype(np.float32)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        bc_dir: str | Path,
        world_model: WorldModel | None = None,
        *,
        device: torch.device | str = "cpu",
    ) -> BCPolicy:
        """Rebuild a policy from a directory written by :func:`dreamlab.bc.train.train_bc`.

        Args:
            bc_dir: holds ``config.json`` + ``model.safetensors`` (kind ``bc``).
            world_model: the world model a features network reads (its ``bc.json`` names the run
                it was trained with: ``world_model_run``).

        Raises:
            CheckpointError: missing or foreign checkpoint, or a features network without its
                world model.
        """
        bc_dir = Path(bc_dir)
        net = load_model(bc_dir, BCNet, device=device)
        assert isinstance(net, BCNet)
        if net.config.inputs == "features" and world_model is None:
            raise CheckpointError(
                f"{bc_dir}: this BC network reads a world model's features; load it with the "
                "world model of the run its bc.json names (world_model_run)"
            )
        return cls(net, world_model)
