"""Actor and critic of Dreamer, reading world-model features ``(B, F)``.

- Actor: an MLP to a distribution over env actions. Discrete: a categorical with a 1% uniform
  mix. Continuous: DreamerV3's bounded normal, mean ``tanh(.)`` and std in ``[min_std, max_std]``
  in a ``[-1, 1]`` box, samples clipped to the box and mapped affinely to the env's bounds.
- Critic: an MLP to two-hot logits over symlog bins (the value is their expectation), plus a
  slow copy (an exponential moving average of its weights) that regularises it.
- The return normaliser's running scale (the 5th-95th percentile range of lambda-returns) is a
  buffer, so it is checkpointed with the weights.

Training lives in :mod:`dreamlab.train.imagination`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from dreamlab.models.rssm import TwoHot

__all__ = ["ActorCritic", "ActorCriticConfig", "ActionDistribution"]


@dataclass
class ActorCriticConfig:
    """Sizes of the actor and critic and the action space they act in."""

    feature_dim: int = 256
    """size of the world model's features (RSSM: deter + stoch * classes)"""
    action_kind: Literal["discrete", "continuous"] = "continuous"
    """'discrete' (Discrete(n)) or 'continuous' (1-D Box)"""
    action_dim: int = 1
    """number of discrete actions, or size of the continuous action vector"""
    action_low: tuple[float, ...] = (-1.0,)
    """continuous: per-dimension lower bound of the env's Box"""
    action_high: tuple[float, ...] = (1.0,)
    """continuous: per-dimension upper bound of the env's Box"""
    hidden: int = 256
    """width of the actor's and critic's hidden layers"""
    layers: int = 2
    """hidden layers of each MLP"""
    value_bins: int = 255
    """bins of the two-hot critic"""
    unimix: float = 0.01
    """discrete: uniform probability mixed into the policy"""
    min_std: float = 0.1
    """continuous: smallest std of the policy (in the [-1, 1] box)"""
    max_std: float = 1.0
    """continuous: largest std of the policy"""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(
                    f"ActorCriticConfig.{name}={getattr(self, name)!r}: expected {expected}"
                )

        need(self.action_kind in ("discrete", "continuous"), "action_kind", "discrete|continuous")
        for name in ("feature_dim", "action_dim", "hidden", "layers"):
            need(getattr(self, name) >= 1, name, ">= 1")
        need(self.value_bins >= 3 and self.value_bins % 2 == 1, "value_bins", "odd and >= 3")
        need(0 < self.min_std <= self.max_std, "min_std", f"in (0, max_std={self.max_std}]")
        if self.action_kind == "continuous":
            self.action_low = tuple(float(v) for v in self.action_low)
            self.action_high = tuple(float(v) for v in self.action_high)
            need(len(self.action_low) == self.action_dim, "action_low", "one bound per dimension")
            need(
                len(self.action_high) == self.action_dim
                and all(h > lo for lo, h in zip(self.action_low, self.action_high, strict=True)),
                "action_high",
                "one bound per dimension, above action_low",
            )


def _mlp(inp: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.SiLU()]
        width = hidden
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


class ActionDistribution:
    """The policy at a batch of states: sampling, log-probabilities, entropy, mode.

    Actions here are in the *policy's* form: int64 indices ``(B,)`` (discrete) or floats
    ``(B, A)`` in ``[-1, 1]`` before clipping (continuous); :meth:`ActorCritic.to_env` maps them.
    """

    def __init__(self, config: ActorCriticConfig, out: torch.Tensor) -> None:
        self.config = config
        if config.action_kind == "discrete":
            probs = torch.softmax(out, -1) * (1.0 - config.unimix) + config.unimix / out.shape[-1]
            self.dist: torch.distributions.Distribution = torch.distributions.Categorical(
                probs=probs
            )
        else:
            mean, std_raw = out.chunk(2, -1)  # (B, A) each
            mean = torch.tanh(mean)
            std = (config.max_std - config.min_std) * torch.sigmoid(std_raw + 2.0) + config.min_std
            self.dist = torch.distributions.Normal(mean, std)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One action per row (see the class docstring for its form)."""
        if self.config.action_kind == "discrete":
            probs = self.dist.probs  # type: ignore[attr-defined]
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        mean, std = self.dist.mean, self.dist.stddev
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + std * eps

    def mode(self) -> torch.Tensor:
        """The most likely action (argmax, or the mean)."""
        if self.config.action_kind == "discrete":
            return self.dist.probs.argmax(-1)  # type: ignore[attr-defined]
        return self.dist.mean

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """``(B,)`` log-probability of actions in the policy's form."""
        lp = self.dist.log_prob(action)
        return lp if self.config.action_kind == "discrete" else lp.sum(-1)

    def entropy(self) -> torch.Tensor:
        """``(B,)`` entropy (nats)."""
        ent = self.dist.entropy()
        return ent if self.config.action_kind == "discrete" else ent.sum(-1)


class ActorCritic(nn.Module):
    """Actor, critic and slow critic over world-model features."""

    def __init__(self, config: ActorCriticConfig) -> None:
        super().__init__()
        self.config = c = config
        out = c.action_dim * (2 if c.action_kind == "continuous" else 1)
        self.actor = _mlp(c.feature_dim, c.hidden, out, c.layers)
        self.critic = _mlp(c.feature_dim, c.hidden, c.value_bins, c.layers)
        # A zero critic head starts at value 0 rather than at random large values (DreamerV3).
        nn.init.zeros_(self.critic[-1].weight)
        nn.init.zeros_(self.critic[-1].bias)
        self.slow_critic = _mlp(c.feature_dim, c.hidden, c.value_bins, c.layers)
        self.slow_critic.load_state_dict(self.critic.state_dict())
        self.slow_critic.requires_grad_(False)
        self.twohot = TwoHot(c.value_bins)
        self.register_buffer("return_scale", torch.ones(()))
        """EMA of the 95th - 5th percentile range of lambda-returns"""
        self.register_buffer("return_scale_init", torch.zeros(()))
        """1 once return_scale holds a measurement"""
        low = torch.tensor(c.action_low if c.action_kind == "continuous" else [0.0])
        high = torch.tensor(c.action_high if c.action_kind == "continuous" else [1.0])
        self.register_buffer("_low", low, persistent=False)
        self.register_buffer("_high", high, persistent=False)

    def policy(self, features: torch.Tensor) -> ActionDistribution:
        """The action distribution at features ``(B, F)``."""
        return ActionDistribution(self.config, self.actor(features))

    def value(self, features: torch.Tensor, slow: bool = False) -> torch.Tensor:
        """Value ``(...)`` at features ``(..., F)`` (critic or slow critic)."""
        net = self.slow_critic if slow else self.critic
        return self.twohot.mean(net(features))

    def to_env(self, action: torch.Tensor) -> torch.Tensor:
        """Policy-form actions -> env actions: indices ``(B,)`` or floats ``(B, A)`` in bounds."""
        if self.config.action_kind == "discrete":
            return action.long()
        unit = action.clamp(-1.0, 1.0)
        return self._low + (unit + 1.0) * 0.5 * (self._high - self._low)

    @torch.no_grad()
    def update_slow_critic(self, fraction: float) -> None:
        """Move the slow critic ``fraction`` of the way to the critic."""
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters(), strict=True):
            slow.lerp_(fast, fraction)

    @torch.no_grad()
    def update_return_scale(self, returns: torch.Tensor, decay: float) -> torch.Tensor:
        """Fold the 5-95 percentile range of ``returns`` into the EMA; return ``max(1, scale)``."""
        flat = returns.detach().flatten().float()
        if flat.numel() > 100_000:  # quantile() has an input-size limit; a strided subset suffices
            flat = flat[:: math.ceil(flat.numel() / 100_000)]
        spread = torch.quantile(flat, 0.95) - torch.quantile(flat, 0.05)
        if float(self.return_scale_init) == 0.0:
            self.return_scale.copy_(spread)
            self.return_scale_init.fill_(1.0)
        else:
            self.return_scale.mul_(decay).add_((1.0 - decay) * spread)
        return self.return_scale.clamp(min=1.0)
