"""The behavioral-cloning policy network: expert actions from pixels or from world-model features.

Two input kinds share one head::

    pixels    frames (B, K, H, W, 3) uint8, the last K observations (K = frame_stack)
              -> float (B, 3K + 2, H, W): the stacked frames plus two coordinate maps
              -> conv4s2 x len(channels) -> flatten -> MLP(hidden) -> head
    features  (B, F) float: a world model's features (V+M: [z, h]) -> MLP(hidden) -> head

    head      continuous: (B, A) in [low, high] = low + (tanh(x) + 1) / 2 * (high - low)
              discrete:   (B, A) logits over A actions

A single frame cannot tell which way the ball moves, so the pixel network reads a short stack
of frames; the coordinate maps (CoordConv) give the convolutions where in the frame they are,
which is what the action depends on. The loss is the mean squared error to the expert's action
(continuous) or the cross-entropy to its choice (discrete).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dreamlab.models import frames_to_tensor

__all__ = ["BCConfig", "BCNet"]


@dataclass
class BCConfig:
    """Architecture of the behavioral-cloning policy network."""

    inputs: Literal["pixels", "features"] = "pixels"
    """what the network reads: stacked uint8 frames, or a world model's feature vector"""
    action_kind: Literal["continuous", "discrete"] = "continuous"
    """regression onto a bounded Box action, or classification over Discrete choices"""
    action_dim: int = 1
    """size of the Box action, or number of Discrete choices"""
    action_low: tuple[float, ...] = (-1.0,)
    """lower bound of each Box dimension (continuous only)"""
    action_high: tuple[float, ...] = (1.0,)
    """upper bound of each Box dimension (continuous only)"""
    frame_size: int = 64
    """side of the square input frames in pixels (pixels only)"""
    frame_stack: int = 3
    """number of most recent frames the network sees (pixels only; >= 2 to see motion)"""
    channels: tuple[int, ...] = (16, 32, 64, 64)
    """filters of each 4x4 stride-2 conv (pixels only)"""
    feature_dim: int = 0
    """size of the feature vector (features only)"""
    hidden: tuple[int, ...] = (256,)
    """sizes of the hidden layers of the MLP head"""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"BCConfig.{name}={getattr(self, name)!r}: expected {expected}")

        self.action_low = tuple(float(v) for v in self.action_low)
        self.action_high = tuple(float(v) for v in self.action_high)
        self.channels = tuple(int(c) for c in self.channels)
        self.hidden = tuple(int(h) for h in self.hidden)
        need(self.inputs in ("pixels", "features"), "inputs", "'pixels' or 'features'")
        need(
            self.action_kind in ("continuous", "discrete"),
            "action_kind",
            "'continuous' or 'discrete'",
        )
        need(self.action_dim >= 1, "action_dim", ">= 1")
        if self.action_kind == "continuous":
            need(len(self.action_low) == self.action_dim, "action_low", "one bound per dimension")
            need(
                len(self.action_high) == self.action_dim
                and all(h > lo for lo, h in zip(self.action_low, self.action_high, strict=True)),
                "action_high",
                "one bound per dimension, each above action_low",
            )
        if self.inputs == "pixels":
            need(self.frame_size >= 8, "frame_size", ">= 8")
            need(self.frame_stack >= 1, "frame_stack", ">= 1")
            need(
                len(self.channels) >= 1 and self.frame_size >> len(self.channels) >= 1,
                "channels",
                f"1 to {self.frame_size.bit_length() - 1} positive conv widths",
            )
        else:
            need(self.feature_dim >= 1, "feature_dim", ">= 1 for inputs='features'")
        need(all(h >= 1 for h in self.hidden), "hidden", "positive layer sizes")


class BCNet(nn.Module):
    """Maps observations (stacked frames or features) to actions; see the module docstring."""

    def __init__(self, config: BCConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.inputs == "pixels":
            layers: list[nn.Module] = []
            in_ch = 3 * c.frame_stack + 2  # + the two coordinate maps
            size = c.frame_size
            for out_ch in c.channels:
                layers += [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1), nn.ReLU()]
                in_ch, size = out_ch, size // 2
            self.encoder: nn.Module = nn.Sequential(*layers, nn.Flatten())
            in_dim = in_ch * size * size
            ys, xs = torch.meshgrid(
                torch.linspace(-1.0, 1.0, c.frame_size),
                torch.linspace(-1.0, 1.0, c.frame_size),
                indexing="ij",
            )
            self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)
        else:
            self.encoder = nn.Identity()
            in_dim = c.feature_dim
        mlp: list[nn.Module] = []
        for width in c.hidden:
            mlp += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        mlp.append(nn.Linear(in_dim, c.action_dim))
        self.head = nn.Sequential(*mlp)
        low = torch.tensor(c.action_low if c.action_kind == "continuous" else [0.0])
        high = torch.tensor(c.action_high if c.action_kind == "continuous" else [1.0])
        self.register_buffer("action_low", low, persistent=False)
        self.register_buffer("action_high", high, persistent=False)

    def prepare(self, obs: torch.Tensor) -> torch.Tensor:
        """Network input from raw observations.

        Args:
            obs: pixels: uint8 ``(B, K, H, W, 3)``; features: float ``(B, F)``.

        Returns:
            pixels: float ``(B, 3K + 2, H, W)`` in [0, 1] with the coordinate maps; features:
            float ``(B, F)``.

        Raises:
            ValueError: naming the expected shape when ``obs`` does not match the config.
        """
        c = self.config
        if c.inputs == "features":
            if obs.dim() != 2 or obs.shape[1] != c.feature_dim:
                raise ValueError(
                    f"BCNet: features of shape {tuple(obs.shape)}; expected (B, {c.feature_dim})"
                )
            return obs.float()
        expected = (c.frame_stack, c.frame_size, c.frame_size, 3)
        if obs.dim() != 5 or tuple(obs.shape[1:]) != expected:
            raise ValueError(
                f"BCNet: frames of shape {tuple(obs.shape)}; expected (B, {', '.join(map(str, expected))})"
            )
        x = frames_to_tensor(obs)  # (B, K, 3, H, W)
        x = x.flatten(1, 2)  # (B, 3K, H, W)
        coords = self.coords.expand(x.shape[0], -1, -1, -1)  # (B, 2, H, W)
        return torch.cat([x, coords], dim=1)  # (B, 3K + 2, H, W)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(B, A)``: pre-tanh values (continuous) or logits (discrete)."""
        return self.head(self.encoder(self.prepare(obs)))  # (B, A)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Env actions: ``(B, A)`` float in the Box bounds, or ``(B,)`` int64 choices."""
        out = self(obs)  # (B, A)
        if self.config.action_kind == "discrete":
            return out.argmax(dim=-1)  # (B,)
        return self._squash(out)

    def _squash(self, out: torch.Tensor) -> torch.Tensor:
        return self.action_low + (torch.tanh(out) + 1.0) / 2.0 * (
            self.action_high - self.action_low
        )

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Imitation loss on ``{"obs": ..., "action": ...}``.

        Args:
            batch: ``obs`` as for :meth:`prepare`; ``action`` ``(B, A)`` float (continuous) or
                ``(B,)`` int (discrete), the expert's action.

        Returns:
            ``(loss, metrics)``: MSE to the expert action (continuous, metric ``mse``) or
            cross-entropy (discrete, metrics ``ce`` and ``accuracy``).
        """
        out = self(batch["obs"])  # (B, A)
        target = batch["action"]
        if self.config.action_kind == "discrete":
            labels = target.reshape(-1).long()  # (B,)
            loss = F.cross_entropy(out, labels)
            accuracy = (out.argmax(dim=-1) == labels).float().mean()
            value = float(loss.detach())
            return loss, {"loss": value, "ce": value, "accuracy": float(accuracy)}
        action = self._squash(out)  # (B, A)
        loss = F.mse_loss(action, target.float().reshape(action.shape))
        value = float(loss.detach())
        return loss, {"loss": value, "mse": value}
