"""A Q-network over world-model features: ``(B, F) -> (B, n_actions)`` action values.

Used by the agent trained inside the diffusion dream (``dreamlab.generations.diffusion.agent``): an MLP with
layer norms, its last layer started at zero so every action begins with value 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["QNet", "QNetConfig"]


@dataclass
class QNetConfig:
    """Sizes of the Q-network."""

    feature_dim: int = 1536
    """size of the world model's features"""
    num_actions: int = 3
    """number of discrete actions"""
    hidden: int = 256
    """width of the hidden layers"""
    layers: int = 2
    """number of hidden layers"""

    def __post_init__(self) -> None:
        for name in ("feature_dim", "num_actions", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"QNetConfig.{name}={getattr(self, name)!r}: expected >= 1")


class QNet(nn.Module):
    """Action values ``Q(s, .)`` of features ``s (B, F)``."""

    def __init__(self, config: QNetConfig) -> None:
        super().__init__()
        self.config = c = config
        mods: list[nn.Module] = []
        width = c.feature_dim
        for _ in range(c.layers):
            mods += [nn.Linear(width, c.hidden), nn.LayerNorm(c.hidden), nn.SiLU()]
            width = c.hidden
        head = nn.Linear(width, c.num_actions)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.net = nn.Sequential(*mods, head)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F) -> (B, A)``."""
        return self.net(features)
