"""The Dreamer agent in the real environment: RSSM world model + actor, SB3-shaped ``predict``.

Each call runs the protocol's loop for a batch of envs: ``observe`` the frame (posterior),
read features ``[h, z]``, act with the actor (its mode when ``deterministic``, else a sample),
then ``step`` the world model with the action taken so the next call's memory is ready.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamlab.agent import ActorAgent, action_spec_of
from dreamlab.checkpoint import load_model
from dreamlab.generations.rssm.worldmodel import RSSMWorldModel
from dreamlab.models.actor_critic import ActorCritic
from dreamlab.models.rssm import RSSM
from dreamlab.worldmodel import State

__all__ = ["DreamerAgent"]


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
