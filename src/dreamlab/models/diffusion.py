"""A DIAMOND-style diffusion world model (Alonso et al. 2024) in the EDM formulation (Karras et al.
2022): a denoiser of the next frame conditioned on the last L frames and actions, plus a small
reward / termination classifier so that dreams have rewards and endings.

- Frames are scaled to ``[-1, 1]``; the noisy next frame ``x = y + sigma * n`` is denoised by the
  preconditioned ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise, context, actions)`` with
  ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
  ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = ln(sigma) / 4`` (sd = ``sigma_data``).
- Training noise levels are log-normal, ``ln sigma ~ N(p_mean, p_std^2)``; the loss is EDM's
  ``lambda(sigma) ||D - y||^2`` with ``lambda = 1 / c_out^2``, i.e. a plain MSE on F's target
  ``(y - c_skip x) / c_out``, optionally weighted up on foreground pixels.
- F is a small U-Net: the L context frames are stacked on channels next to the noisy frame; the
  noise level and the L actions enter every residual block through adaptive group norm.
- Sampling: a Karras sigma schedule with a few deterministic Euler (DIAMOND: 3) or Heun steps; a
  DDPM-style ancestral sampler (``sampler="ddpm"``) as the ablation.
- Rewards are classified by sign (-1, 0, +1) as in DIAMOND and terminations are a logit, both
  read from the last context frame, the action and the next frame.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from dreamlab.models import foreground_weights
from dreamlab.models.edm import (
    ddpm_sample,
    edm_precondition,
    euler_sample,
    heun_sample,
    karras_sigmas,
    sinusoidal_embedding,
)
from dreamlab.models.unet import UNet

__all__ = [
    "DIFFUSION_PRESETS",
    "DiffusionConfig",
    "DiffusionModel",
    "RewardEndModel",
    "diffusion_preset",
    "parameter_counts",
]

REWARD_VALUES = (-1.0, 0.0, 1.0)
"""the reward classes: the sign of the reward (DIAMOND clips rewards to their sign)"""


@dataclass
class DiffusionConfig:
    """Sizes and settings of the diffusion world model (denoiser + reward/termination model)."""

    frame_size: int = 32
    """side of the square frames in pixels (a multiple of 2^(levels - 1))"""
    context: int = 4
    """L: past frames and actions the denoiser is conditioned on (DIAMOND: 4)"""
    action_kind: Literal["discrete", "continuous"] = "discrete"
    """'discrete' (one-hot of Discrete(n)) or 'continuous' (a 1-D Box, passed through)"""
    action_dim: int = 3
    """number of discrete actions, or size of the continuous action vector"""
    channels: tuple[int, ...] = (32, 48, 64)
    """U-Net channels per resolution level (each level after the first halves the resolution)"""
    depths: tuple[int, ...] = (1, 1, 1)
    """residual blocks per level on the way down (the way up has the same number)"""
    patch: int = 2
    """pixel-unshuffle factor: the U-Net runs on (patch x patch)-pixel cells, patch^2 times
    cheaper at the top level (2 makes the CPU preset affordable; DIAMOND uses 1)"""
    cond_dim: int = 64
    """size of the conditioning vector (noise level + actions) fed to adaptive group norms"""
    groups: int = 8
    """groups of every group norm (must divide every level's channels)"""
    sigma_data: float = 0.5
    """standard deviation of the data (frames in [-1, 1]) used by the preconditioning"""
    p_mean: float = -0.4
    """mean of ln(sigma) for training noise levels (DIAMOND: -0.4)"""
    p_std: float = 1.2
    """standard deviation of ln(sigma) for training noise levels (DIAMOND: 1.2)"""
    sigma_min: float = 2e-3
    """smallest noise level of the sampling schedule"""
    sigma_max: float = 5.0
    """largest noise level of the sampling schedule (DIAMOND: 5)"""
    rho: float = 7.0
    """curvature of the Karras schedule"""
    sampler: Literal["euler", "heun", "ddpm"] = "euler"
    """sampler used by the world model: deterministic Euler or Heun, or DDPM-style ancestral"""
    num_steps: int = 3
    """denoising steps per generated frame for euler/heun (DIAMOND: 3 Euler steps)"""
    ddpm_steps: int = 20
    """denoising steps of the ancestral 'ddpm' sampler"""
    foreground_weight: float = 10.0
    """extra loss weight on foreground pixels (Catch's 3x3 ball is 0.9% of a 32x32 frame)"""
    foreground_threshold: float = 0.1
    """a pixel is foreground when a channel differs from the frame's median colour by this"""
    change_weight: float = 10.0
    """extra loss weight on pixels that change from the last context frame to the target (where
    the dynamics are: the ball's move, a pip going out, a new ball entering)"""
    reward_channels: int = 16
    """width of the reward/termination CNN (channels of its first conv; doubled once)"""
    reward_class_weight: float = 5.0
    """cross-entropy weight of the rare nonzero reward classes relative to 0"""
    end_pos_weight: float = 10.0
    """BCE weight of the rare terminated=True steps"""
    reward_loss_weight: float = 1.0
    """weight of the reward and termination losses in the total loss"""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(
                    f"DiffusionConfig.{name}={getattr(self, name)!r}: expected {expected}"
                )

        self.channels = tuple(int(c) for c in self.channels)
        self.depths = tuple(int(d) for d in self.depths)
        need(self.action_kind in ("discrete", "continuous"), "action_kind", "discrete|continuous")
        need(self.action_dim >= 1, "action_dim", ">= 1")
        need(self.context >= 1, "context", ">= 1")
        need(len(self.channels) >= 1, "channels", "at least one level")
        need(len(self.depths) == len(self.channels), "depths", "one entry per level of channels")
        need(all(d >= 1 for d in self.depths), "depths", "each >= 1")
        need(all(c % self.groups == 0 for c in self.channels), "groups", "to divide every channel")
        need(self.patch >= 1, "patch", ">= 1")
        scale = self.patch * 2 ** (len(self.channels) - 1)
        need(
            self.frame_size >= 8 and self.frame_size % scale == 0,
            "frame_size",
            f">= 8 and a multiple of {scale}",
        )
        need(self.sigma_data > 0, "sigma_data", "> 0")
        need(
            0 < self.sigma_min < self.sigma_max, "sigma_min", f"in (0, sigma_max={self.sigma_max})"
        )
        need(self.sampler in ("euler", "heun", "ddpm"), "sampler", "euler|heun|ddpm")
        need(self.num_steps >= 1, "num_steps", ">= 1")
        need(self.ddpm_steps >= 1, "ddpm_steps", ">= 1")
        need(self.cond_dim >= 2 and self.cond_dim % 2 == 0, "cond_dim", "even and >= 2")


def _tiny() -> DiffusionConfig:
    return DiffusionConfig()


def _diamond() -> DiffusionConfig:
    # DIAMOND's Atari denoiser: 64x64 frames, 4 frames + 4 actions of context, four levels of 64
    # channels with two residual blocks each, a 256-wide condition, 18 Atari actions.
    return DiffusionConfig(
        frame_size=64,
        context=4,
        action_kind="discrete",
        action_dim=18,
        channels=(64, 64, 64, 64),
        depths=(2, 2, 2, 2),
        cond_dim=256,
        groups=32,
        patch=1,
        foreground_weight=0.0,
        change_weight=0.0,
        reward_channels=32,
    )


DIFFUSION_PRESETS = {"tiny": _tiny, "diamond": _diamond}
"""named sizes: ``tiny`` (CPU, 32x32 Catch) and ``diamond`` (the paper's Atari denoiser, GPU)"""


def diffusion_preset(name: str, **overrides: object) -> DiffusionConfig:
    """A fresh config of the named preset with ``overrides`` applied (e.g. ``action_dim=3``)."""
    if name not in DIFFUSION_PRESETS:
        raise ValueError(
            f"unknown diffusion preset {name!r}; known: {', '.join(DIFFUSION_PRESETS)}"
        )
    return dataclasses.replace(DIFFUSION_PRESETS[name](), **overrides)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- networks
class RewardEndModel(nn.Module):
    """Reward sign (3 classes) and termination logit from ``(last frame, action, next frame)``."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        ch = config.reward_channels
        layers: list[nn.Module] = []
        width, size = 6, config.frame_size
        for out in (ch, 2 * ch, 2 * ch):
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.SiLU()]
            width, size = out, size // 2
        self.cnn = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(width * 16 + config.action_dim, 128),
            nn.SiLU(),
            nn.Linear(128, len(REWARD_VALUES) + 1),
        )

    def forward(
        self, last: torch.Tensor, action: torch.Tensor, nxt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``(B, 3, H, W)`` in ``[-1, 1]``, encoded action ``(B, A)`` ->
        ``(reward logits (B, 3), termination logit (B,))``."""
        e = self.cnn(torch.cat([last, nxt], dim=1))  # (B, 16 C)
        out = self.head(torch.cat([e, action], dim=-1))  # (B, 4)
        return out[:, :3], out[:, 3]


class DiffusionModel(nn.Module):
    """The denoiser ``D(x, sigma | context, actions)`` and the reward/termination model.

    Batches for :meth:`compute_loss` (what :func:`diffusion_batches` yields):

    - ``context``: uint8 ``(B, L, H, W, 3)`` the last L frames (oldest first);
    - ``actions``: float ``(B, L, A)`` the encoded actions taken after each context frame (the
      last one leads to ``target``); padded slots before an episode's start hold zeros;
    - ``target``: uint8 ``(B, H, W, 3)`` the next frame;
    - ``reward``: ``(B,)`` the reward of that transition; ``terminated``: ``(B,)``.
    """

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = c = config
        self.unet = UNet(
            3 * (c.context + 1), 3, c.channels, c.depths, c.cond_dim, c.groups, c.patch
        )
        self.cond = nn.Sequential(
            nn.Linear(c.cond_dim + c.context * c.action_dim, c.cond_dim),
            nn.SiLU(),
            nn.Linear(c.cond_dim, c.cond_dim),
        )
        self.reward_net = RewardEndModel(c)
        self.register_buffer("reward_values", torch.tensor(REWARD_VALUES), persistent=False)

    # ------------------------------------------------------------------ helpers
    def encode_action(self, action: torch.Tensor) -> torch.Tensor:
        """Env actions (int indices ``(...)`` or floats ``(..., A)``) -> float ``(..., A)``."""
        c = self.config
        if c.action_kind == "discrete":
            if action.is_floating_point():
                raise ValueError(
                    f"DiffusionModel: discrete actions must be integer indices, got {action.dtype}"
                )
            if action.numel() and (int(action.min()) < 0 or int(action.max()) >= c.action_dim):
                raise ValueError(
                    f"DiffusionModel: action index out of range [0, {c.action_dim}): "
                    f"{action.unique().tolist()}"
                )
            return F.one_hot(action.long(), c.action_dim).float()
        if action.dim() == 0 or action.shape[-1] != c.action_dim:
            raise ValueError(
                f"DiffusionModel: continuous actions need shape (..., {c.action_dim}), got "
                f"{tuple(action.shape)}"
            )
        return action.float()

    def check_frames(self, frames: torch.Tensor, who: str) -> None:
        """Raise a clear ValueError unless ``frames`` is ``(..., 3, S, S)`` with S = frame_size."""
        s = self.config.frame_size
        if frames.dim() < 4 or tuple(frames.shape[-3:]) != (3, s, s):
            raise ValueError(
                f"{who}: frames must be (..., 3, {s}, {s}) in [0, 1], got {tuple(frames.shape)}"
            )

    # ------------------------------------------------------------------ denoiser
    def _network(
        self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """F on EDM's preconditioned input: ``(F (B, 3, H, W), c_skip, c_out)``, the last two
        ``(B, 1, 1, 1)``."""
        c_skip, c_out, c_in, c_noise = edm_precondition(sigma, self.config.sigma_data)
        emb = sinusoidal_embedding(c_noise, self.config.cond_dim)  # (B, cond)
        cond = self.cond(torch.cat([emb, actions.flatten(1)], dim=-1))  # (B, cond)
        inp = torch.cat([c_in[:, None, None, None] * x, context.flatten(1, 2)], dim=1)
        return self.unet(inp, cond), c_skip[:, None, None, None], c_out[:, None, None, None]

    def denoise(
        self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        """``D(x, sigma)``: the denoised next frame ``(B, 3, H, W)`` in ``[-1, 1]`` units.

        Args:
            x: noisy next frame ``(B, 3, H, W)``.
            sigma: noise levels ``(B,)``.
            context: the last L frames ``(B, L, 3, H, W)`` in ``[-1, 1]``.
            actions: encoded actions ``(B, L, A)``.
        """
        out, c_skip, c_out = self._network(x, sigma, context, actions)  # F: (B, 3, H, W)
        return c_skip * x + c_out * out

    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        actions: torch.Tensor,
        *,
        sampler: str | None = None,
        num_steps: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Generate next frames ``(B, 3, H, W)`` in ``[0, 1]``.

        Args:
            context: last L frames ``(B, L, 3, H, W)`` in ``[0, 1]``.
            actions: encoded actions ``(B, L, A)`` (the last one is the action being taken).
            sampler: 'euler', 'heun' or 'ddpm' (default: the config's).
            num_steps: denoising steps (default: the config's for that sampler).
            temperature: multiplies the initial noise (0: start from the zero frame).
            generator: seeds the initial (and, for ddpm, every) noise draw.
        """
        c = self.config
        sampler = sampler or c.sampler
        if sampler not in ("euler", "heun", "ddpm"):
            raise ValueError(f"DiffusionModel.sample: unknown sampler {sampler!r}")
        steps = num_steps or (c.ddpm_steps if sampler == "ddpm" else c.num_steps)
        ctx = context * 2.0 - 1.0  # (B, L, 3, H, W)
        sigmas = karras_sigmas(steps, c.sigma_min, c.sigma_max, c.rho).to(context.device)
        shape = (ctx.shape[0], 3, c.frame_size, c.frame_size)
        noise = torch.randn(shape, generator=generator, device=context.device)
        x = noise * float(sigmas[0]) * temperature

        def denoise(xt: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.denoise(xt, sigma, ctx, actions)

        if sampler == "euler":
            y = euler_sample(denoise, x, sigmas)
        elif sampler == "heun":
            y = heun_sample(denoise, x, sigmas)
        else:
            y = ddpm_sample(denoise, x, sigmas, generator)
        return ((y + 1.0) * 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def predict_reward_end(
        self, last: torch.Tensor, action: torch.Tensor, nxt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reward (B,), terminated (B,) bool)`` of the transition ``last -> nxt`` (frames in
        ``[0, 1]``, encoded action ``(B, A)``): the most likely reward class, logit > 0."""
        logits, end = self.reward_net(last * 2.0 - 1.0, action, nxt * 2.0 - 1.0)
        values = cast(torch.Tensor, self.reward_values)
        reward = values[logits.argmax(-1)]  # (B,)
        return reward, end > 0.0

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """EDM denoising loss on the next frame + reward and termination classification."""
        c = self.config
        context = batch["context"]
        if context.dtype == torch.uint8:
            context = context.movedim(-1, -3).float() / 255.0  # (B, L, 3, H, W)
        target = batch["target"]
        if target.dtype == torch.uint8:
            target = target.movedim(-1, -3).float() / 255.0  # (B, 3, H, W)
        self.check_frames(context, "DiffusionModel.compute_loss: context")
        self.check_frames(target, "DiffusionModel.compute_loss: target")
        actions = batch["actions"].float()  # (B, L, A)
        if actions.shape[1:] != (c.context, c.action_dim):
            raise ValueError(
                f"DiffusionModel.compute_loss: actions must be (B, {c.context}, {c.action_dim}), "
                f"got {tuple(actions.shape)}"
            )
        b = target.shape[0]
        y = target * 2.0 - 1.0  # (B, 3, H, W)
        ctx = context * 2.0 - 1.0
        sigma = torch.exp(c.p_mean + c.p_std * torch.randn(b, device=y.device))  # (B,)
        x = y + sigma[:, None, None, None] * torch.randn_like(y)
        out, c_skip, c_out = self._network(x, sigma, ctx, actions)  # F: (B, 3, H, W)
        f_target = (y - c_skip * x) / c_out
        weight = foreground_weights(target, c.foreground_weight, c.foreground_threshold)
        if c.change_weight > 0:
            changed = (target - context[:, -1]).abs().amax(1, keepdim=True)  # (B, 1, H, W)
            weight = weight + c.change_weight * (changed > c.foreground_threshold).float()
        denoise_loss = (weight * (out - f_target) ** 2).mean()

        reward = batch["reward"].float()  # (B,)
        cls = (torch.sign(reward) + 1).long()  # (B,) in {0, 1, 2}
        ended = batch["terminated"].float()  # (B,)
        logits, end_logit = self.reward_net(ctx[:, -1], actions[:, -1], y)
        cls_weight = torch.tensor(
            [c.reward_class_weight, 1.0, c.reward_class_weight], device=y.device
        )
        reward_loss = F.cross_entropy(logits, cls, weight=cls_weight)
        end_loss = F.binary_cross_entropy_with_logits(
            end_logit, ended, pos_weight=torch.tensor(c.end_pos_weight, device=y.device)
        )
        loss = denoise_loss + c.reward_loss_weight * (reward_loss + end_loss)
        with torch.no_grad():
            pred = logits.argmax(-1)
            nonzero = cls != 1
            metrics = {
                "loss": float(loss),
                "denoise": float(denoise_loss),
                "reward_ce": float(reward_loss),
                "end_bce": float(end_loss),
                "reward_acc": float((pred == cls).float().mean()),
            }
            if bool(nonzero.any()):
                metrics["reward_recall_nonzero"] = float((pred == cls)[nonzero].float().mean())
        return loss, metrics


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_counts(model: DiffusionModel) -> dict[str, int]:
    """Trainable parameters of the denoiser (U-Net + condition MLP) and the reward model."""
    return {
        "denoiser": _count(model.unet) + _count(model.cond),
        "reward_end": _count(model.reward_net),
        "total": _count(model),
    }
