"""The Dreamer agent in the real environment: RSSM world model + actor, SB3-shaped ``predict``.

Each call runs the protocol's loop for a batch of envs: ``observe`` the frame (posterior),
read features ``[h, z]``, act with the actor (its mode when ``deterministic``, else a sample),
then ``step`` the world model with the action taken so the next call's memory is ready.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.agent import predict_inputs
from dreamlab.checkpoint import load_model
from dreamlab.models.actor_critic import ActorCritic
from dreamlab.models.rssm import RSSM
from dreamlab.rssm_worldmodel import RSSMWorldModel
from dreamlab.worldmodel import ActionSpec, State

__all__ = ["ActorAgent", "DreamerAgent", "action_spec_of"]


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


class DreamerAgent(ActorAgent):
    """Acts in real envs with an RSSM world model and a Dreamer actor.

    Args:
        world_model: the RSSM behind the ``WorldModel`` protocol.
        actor_critic: the actor (and critic) trained in imagination.
        seed: seeds the generator of sampled actions and posterior samples.
    """

    world_model: RSSMWorldModel

    def _observe(self, state: State, frames: torch.Tensor) -> State:
        """The RSSM samples its posterior with the agent's generator."""
        return self.world_model.observe(state, frames, generator=self.generator)

    @classmethod
    def load(cls, run_dir: str | Path, *, device: str = "cpu", seed: int = 0) -> DreamerAgent:
        """Rebuild from ``run_dir/world_model`` and ``run_dir/actor_critic``."""
        run = Path(run_dir)
        rssm = load_model(run / "world_model", RSSM, device=device)
        ac = load_model(run / "actor_critic", ActorCritic, device=device)
        assert isinstance(rssm, RSSM) and isinstance(ac, ActorCritic)
        return cls(RSSMWorldModel(rssm, action_spec_of(ac)), ac, seed=seed)

    def __repr__(self) -> str:
        return f"DreamerAgent({self.actor_critic.config.action_kind}, features={self.world_model.feature_dim})"
