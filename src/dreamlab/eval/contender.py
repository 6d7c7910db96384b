"""What each world-model generation hands to ``dreamlab compare-models``.

A generation (V/M/C, RSSM + actor-critic, diffusion, tokens) provides one *builder*: a function
``build(ctx: CompareContext) -> Contender`` that trains its world model and the agent that acts
inside it on ``ctx.data`` (the same episodes for every generation), resumably in ``ctx.out``, and
returns the trained pieces. ``compare-models`` then measures every contender the same way:
open-loop fidelity, the real-env score of its agent, the dream-vs-real gap, size and speed.

Each generation registers its builder as ``build_contender`` (and the name ``--models`` knows it
by as ``contender_name``) in its :class:`~dreamlab.generations.Generation`, so this layer does not
import the generations' code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dreamlab.worldmodel import StartLatents, WorldModel

__all__ = ["CompareContext", "Contender", "ContenderBuilder", "num_params"]


@dataclass
class CompareContext:
    """Everything a builder may use. Training data and env are fixed by ``compare-models``."""

    data: Any
    """the training episodes, an ``EpisodeStore`` (the same for every generation)"""
    env: str
    """env preset name the episodes come from, e.g. ``catch-32``"""
    env_kwargs: dict[str, Any]
    """keyword arguments of that env (e.g. ``{"discrete": True}``)"""
    out: Path
    """this contender's own directory: checkpoints live here, so a killed build resumes"""
    seed: int = 0
    """seed of everything"""
    scale: float = 1.0
    """fraction of the generation's default training budget (tests use ~0.02)"""
    progress: bool = True
    """show progress bars"""


@dataclass
class Contender:
    """A trained world model and the agent trained inside it."""

    name: str
    """row label, e.g. ``"diffusion (EDM) + actor-critic"``"""
    generation: int
    """1 V/M/C, 2 RSSM, 3 diffusion, 4 tokens"""
    world_model: WorldModel
    """the model, behind the ``WorldModel`` protocol"""
    policy: Any
    """the agent for the real env: SB3-shaped ``predict(obs, state, episode_start)``"""
    dream_policy: Callable[[torch.Tensor], torch.Tensor]
    """the same agent inside the dream: ``features (N, F) -> env actions`` (a ``DreamVecEnv``'s
    observations are the world model's features)"""
    dream_start: StartLatents
    """start bank for ``DreamVecEnv`` over ``world_model`` (real starting points)"""
    params_world_model: int
    """trainable parameters of the world model"""
    params_agent: int
    """trainable parameters of the agent"""
    train_seconds: float
    """wall seconds spent training the world model and the agent (summed over resumes)"""
    notes: dict[str, Any] = field(default_factory=dict)
    """anything else worth a column or a footnote (sampler steps, updates, ...)"""


ContenderBuilder = Callable[[CompareContext], Contender]
"""``build(ctx) -> Contender``."""


def num_params(*modules: torch.nn.Module) -> int:
    """Trainable parameters of ``modules`` together (a contender's ``params_*``)."""
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
