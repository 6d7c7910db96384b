"""The diffusion model (``dreamlab.models.diffusion``) as a :class:`~dreamlab.worldmodel.WorldModel`.

State (batch-first):

- ``frames (B, L, 3, H, W)`` the last L frames in ``[0, 1]``, oldest first;
- ``actions (B, L, A)`` the encoded action taken after each of those frames; the newest slot is
  zero until :meth:`DiffusionWorldModel.step` (or :meth:`~DiffusionWorldModel.advance`) fills it;
- ``filled (B,)`` 1.0 once the state holds a real frame.

- ``observe``: on a fresh row (``filled == 0``) the frame is written into every slot and the
  actions are zero (what training shows at an episode's start); otherwise it replaces the newest
  slot (the imagined frame, or the placeholder left by ``advance``).
- ``step``: the denoiser samples the next frame from the L frames and actions (Euler / Heun /
  DDPM per the model's config), the reward/termination model reads ``(last frame, action, next
  frame)``, and the buffers shift by one.
- ``features``: the newest ``feature_frames`` frames, average-pooled by ``feature_pool`` and
  flattened: ``(B, feature_frames * 3 * (H / pool)^2)``. Two frames carry the ball's velocity;
  pooling 2x keeps a 3x3 ball visible while making the agent's input four times smaller.
- ``temperature`` scales the sampler's initial noise (0: start from the zero frame).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from dreamlab.checkpoint import register_model
from dreamlab.models import frames_to_tensor
from dreamlab.models.diffusion import DiffusionConfig, DiffusionModel
from dreamlab.worldmodel import ActionSpec, StartLatents, State

__all__ = ["DiffusionWorldModel", "diffusion_start_states"]

register_model("diffusion", DiffusionConfig, DiffusionModel)


class DiffusionWorldModel:
    """A :class:`~dreamlab.models.diffusion.DiffusionModel` behind the ``WorldModel`` protocol.

    Args:
        model: the trained model (put in eval mode).
        action_space: the env's action space (must match the model's action config).
        feature_frames: newest frames in the features (1..L).
        feature_pool: average-pooling factor of the features (must divide the frame size).
        sampler: override the model's sampler ('euler', 'heun', 'ddpm').
        num_steps: override the model's number of denoising steps.
    """

    def __init__(
        self,
        model: DiffusionModel,
        action_space: ActionSpec | Any,
        *,
        feature_frames: int = 2,
        feature_pool: int = 2,
        sampler: Literal["euler", "heun", "ddpm"] | None = None,
        num_steps: int | None = None,
    ) -> None:
        spec = ActionSpec.from_space(action_space)
        cfg = model.config
        if spec.kind != cfg.action_kind or spec.n != cfg.action_dim:
            raise ValueError(
                f"DiffusionWorldModel: action space {spec.kind}({spec.n}) does not fit the "
                f"model's {cfg.action_kind}({cfg.action_dim})"
            )
        if not 1 <= feature_frames <= cfg.context:
            raise ValueError(
                f"DiffusionWorldModel: feature_frames must be in [1, {cfg.context}], got "
                f"{feature_frames}"
            )
        if feature_pool < 1 or cfg.frame_size % feature_pool:
            raise ValueError(
                f"DiffusionWorldModel: feature_pool must divide the frame size {cfg.frame_size}, "
                f"got {feature_pool}"
            )
        if sampler is not None and sampler not in ("euler", "heun", "ddpm"):
            raise ValueError(f"DiffusionWorldModel: unknown sampler {sampler!r}")
        self.model = model.eval()
        self.action_spec = spec
        self.context = cfg.context
        self.frame_size = cfg.frame_size
        self.action_dim = cfg.action_dim
        self.feature_frames = feature_frames
        self.feature_pool = feature_pool
        self.sampler = sampler
        self.num_steps = num_steps
        side = cfg.frame_size // feature_pool
        self.feature_dim = feature_frames * 3 * side * side

    @property
    def device(self) -> torch.device:
        """Where the model (and every state tensor) lives."""
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> DiffusionWorldModel:
        """Move the model to ``device``; returns self."""
        self.model.to(device)
        return self

    # ------------------------------------------------------------------ protocol
    def initial_state(self, batch_size: int) -> State:
        """Empty buffers (``filled = 0``): the first :meth:`observe` fills every slot."""
        dev, s = self.device, self.frame_size
        return {
            "frames": torch.zeros(batch_size, self.context, 3, s, s, device=dev),
            "actions": torch.zeros(batch_size, self.context, self.action_dim, device=dev),
            "filled": torch.zeros(batch_size, device=dev),
        }

    @torch.inference_mode()
    def observe(self, state: State, frames: torch.Tensor) -> State:
        """Write real frames ``(B, 3, H, W)`` in ``[0, 1]`` into the newest slot (every slot on
        a fresh row)."""
        self.model.check_frames(frames, "DiffusionWorldModel.observe")
        frames = frames.to(self.device, torch.float32)
        if frames.shape[0] != state["frames"].shape[0]:
            raise ValueError(
                f"DiffusionWorldModel.observe: {frames.shape[0]} frames for a state of "
                f"{state['frames'].shape[0]} rows"
            )
        fresh = state["filled"] < 0.5  # (B,)
        buf = state["frames"].clone()
        buf[:, -1] = frames
        all_slots = frames[:, None].expand_as(buf)  # (B, L, 3, H, W)
        buf = torch.where(fresh[:, None, None, None, None], all_slots, buf)
        actions = torch.where(
            fresh[:, None, None], torch.zeros_like(state["actions"]), state["actions"]
        )
        return {"frames": buf, "actions": actions, "filled": torch.ones_like(state["filled"])}

    def encode_action(self, action: torch.Tensor) -> torch.Tensor:
        """Env actions (``(B,)`` int indices or ``(B, A)`` floats) -> float ``(B, A)``."""
        return self.model.encode_action(action.to(self.device))

    @torch.inference_mode()
    def step(
        self,
        state: State,
        action: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        """Sample the next frame: ``(state', reward (B,) float32, terminated (B,) bool)``."""
        a = self.encode_action(action)  # (B, A)
        if a.shape[0] != state["frames"].shape[0]:
            raise ValueError(
                f"DiffusionWorldModel.step: {a.shape[0]} actions for a state of "
                f"{state['frames'].shape[0]} rows"
            )
        actions = torch.cat([state["actions"][:, :-1], a[:, None]], dim=1)  # (B, L, A)
        nxt = self.model.sample(
            state["frames"],
            actions,
            sampler=self.sampler,
            num_steps=self.num_steps,
            temperature=temperature,
            generator=generator,
        )  # (B, 3, H, W)
        reward, terminated = self.model.predict_reward_end(state["frames"][:, -1], a, nxt)
        return self._push(state, actions, nxt), reward.float(), terminated

    def _push(self, state: State, actions: torch.Tensor, frame: torch.Tensor) -> State:
        frames = torch.cat([state["frames"][:, 1:], frame[:, None]], dim=1)  # (B, L, 3, H, W)
        shifted = torch.cat([actions[:, 1:], torch.zeros_like(actions[:, :1])], dim=1)
        return {"frames": frames, "actions": shifted, "filled": state["filled"]}

    @torch.inference_mode()
    def advance(self, state: State, action: torch.Tensor) -> State:
        """Record ``action`` and shift the buffers *without* imagining the next frame (the newest
        slot repeats the current frame until :meth:`observe` overwrites it). The real-env agent
        uses this: the next real frame replaces any imagined one, so sampling it would be waste."""
        a = self.encode_action(action)  # (B, A)
        actions = torch.cat([state["actions"][:, :-1], a[:, None]], dim=1)
        return self._push(state, actions, state["frames"][:, -1])

    def decode(self, state: State) -> torch.Tensor:
        """The newest frame ``(B, 3, H, W)`` in ``[0, 1]``."""
        return state["frames"][:, -1]

    def features(self, state: State) -> torch.Tensor:
        """Newest ``feature_frames`` frames, pooled and flattened: ``(B, feature_dim)``."""
        x = state["frames"][:, -self.feature_frames :]  # (B, k, 3, H, W)
        if self.feature_pool > 1:
            x = F.avg_pool2d(x.flatten(0, 1), self.feature_pool).unflatten(0, x.shape[:2])
        return x.flatten(1)

    @torch.inference_mode()
    def start_state(self, start: StartLatents, generator: torch.Generator | None = None) -> State:
        """Begin dreams at rows ``{"frames": (B, L, H, W, 3) uint8, "actions": (B, L, A)}`` of a
        start bank (:func:`diffusion_start_states`)."""
        if "frames" not in start or "actions" not in start:
            raise ValueError(
                "DiffusionWorldModel.start_state: start states need keys 'frames' and 'actions', "
                f"got {sorted(start)} (build them with diffusion_start_states)"
            )
        frames = start["frames"]
        s, ctx = self.frame_size, self.context
        if frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != (ctx, s, s, 3):
            raise ValueError(
                f"DiffusionWorldModel.start_state: frames must be uint8 (B, {ctx}, {s}, {s}, 3), "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        actions = start["actions"].to(self.device, torch.float32)
        if tuple(actions.shape[1:]) != (ctx, self.action_dim):
            raise ValueError(
                f"DiffusionWorldModel.start_state: actions must be (B, {ctx}, {self.action_dim}), "
                f"got {tuple(actions.shape)}"
            )
        return {
            "frames": frames_to_tensor(frames.to(self.device)),  # (B, L, 3, H, W)
            "actions": actions.clone(),
            "filled": torch.ones(frames.shape[0], device=self.device),
        }


def diffusion_start_states(
    world_model: DiffusionWorldModel,
    store: Any,
    *,
    frames: Literal["first", "all"] = "first",
    max_episodes: int | None = None,
) -> StartLatents:
    """A bank of dream start states from real episodes.

    Args:
        world_model: the diffusion world model (gives L and the action encoding).
        store: an ``EpisodeStore`` of frames (``obs (T+1, H, W, 3)``, ``action (T, ...)``).
        frames: 'first' starts dreams where episodes start (the first frame in every slot, zero
            actions); 'all' adds every later step's real context too (the newest slot's action
            is zero: it is the action the agent is about to choose).
        max_episodes: use at most this many episodes (evenly spaced).

    Returns:
        ``{"frames": (N, L, H, W, 3) uint8, "actions": (N, L, A) float32}`` CPU tensors.
    """
    indices = list(store.indices)
    if not indices:
        raise ValueError(f"{getattr(store, 'path', 'store')}: holds no episodes")
    if max_episodes is not None and len(indices) > max_episodes:
        keep = np.linspace(0, len(indices) - 1, max_episodes).round().astype(np.int64)
        indices = [indices[i] for i in keep]
    ctx, adim = world_model.context, world_model.action_dim
    out_frames, out_actions = [], []
    for i in indices:
        ep: Mapping[str, np.ndarray] = store.episode(i)
        if "obs" not in ep:
            raise ValueError(f"episode {i}: a diffusion start bank needs frames 'obs'")
        obs = np.asarray(ep["obs"])  # (T+1, H, W, 3)
        last = 1 if frames == "first" else len(obs)
        enc = world_model.encode_action(torch.as_tensor(np.array(ep["action"]))).cpu()  # (T, A)
        for t in range(last):
            idx = np.maximum(np.arange(t - ctx + 1, t + 1), 0)  # (L,)
            out_frames.append(obs[idx])
            acts = torch.zeros(ctx, adim)
            for j, k in enumerate(range(t - ctx + 1, t)):  # actions before the newest frame
                if k >= 0:
                    acts[j] = enc[k]
            out_actions.append(acts)
    return {
        "frames": torch.from_numpy(np.stack(out_frames)),
        "actions": torch.stack(out_actions).float(),
    }
