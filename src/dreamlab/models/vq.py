"""The discrete tokenizer of the token world model (IRIS's VQ-VAE, made small).

A frame becomes a ``g x g`` grid of integers from a codebook of ``K`` vectors::

    encoder  (B,3,S,S) -conv3-> (B,C,S,S) -[res, conv4s2] x n-> (B,C,g,g) -res, 1x1-> (B,D,g,g)
    quantize each of the g*g vectors to its nearest code (B,g,g) in [0, K)
    decoder  codes (B,D,g,g) -1x1, res-> -[deconv4s2, res] x n-> (B,C,S,S) -conv3-> (B,3,S,S)

with ``g = S / 2**n``. Training (``compute_loss``): foreground-weighted squared error of the
reconstruction through the straight-through estimator, plus the commitment loss
``beta * ||z_e - sg(z_q)||^2``. The codebook itself is not learned by gradients: it follows an
exponential moving average of the encoder outputs assigned to each code (VQ-VAE-2's EMA update,
steadier than the codebook loss on small batches).

**Dead-code revival.** A code whose EMA usage falls below ``revive_threshold`` is moved onto an
encoder output of the current batch, drawn with probability proportional to that output's
reconstruction error (plus a floor), so dead codes go where the tokenizer is worst: on Catch,
that is the 3x3 ball, a fraction of a percent of the pixels that a plain codebook never spends a
code on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dreamlab.models import foreground_weights, frames_to_tensor

__all__ = ["VQConfig", "VQTokenizer", "vq_preset"]


@dataclass
class VQConfig:
    """Hyperparameters of the VQ tokenizer."""

    frame_size: int = 32
    """height = width of the square frames, in pixels"""
    downsample: int = 3
    """stride-2 stages: the token grid is frame_size / 2**downsample on a side"""
    encoder: Literal["patch", "conv"] = "patch"
    """'patch': each token sees only its own patch (an MLP on non-overlapping patches), so equal
    patches always give equal tokens; 'conv': IRIS's conv stack, whose receptive field spans the
    frame (tokens then depend on the context, e.g. background split into many codes)"""
    channels: int = 32
    """channels of every conv layer of the encoder and decoder"""
    res_blocks: int = 1
    """residual blocks per resolution stage (encoder and decoder)"""
    code_dim: int = 32
    """size of a code vector"""
    codebook_size: int = 512
    """number of codes K (the token vocabulary of the transformer)"""
    commitment: float = 0.25
    """weight beta of the commitment loss ||z_e - sg(z_q)||^2"""
    ema_decay: float = 0.95
    """decay of the EMA codebook update (counts and sums of assigned encoder outputs)"""
    revive_threshold: float = 0.03
    """a code whose EMA count of assignments per batch is below this is dead and revived"""
    revive_every: int = 10
    """training steps between dead-code revivals (0 disables revival)"""
    foreground_weight: float = 20.0
    """extra reconstruction weight on pixels unlike the frame's background (see foreground_weights)"""
    foreground_threshold: float = 0.1
    """a pixel is foreground when a channel differs from the frame's median colour by this much"""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"VQConfig.{name}={getattr(self, name)!r}: expected {expected}")

        need(self.downsample >= 1, "downsample", ">= 1")
        need(
            self.frame_size % (2**self.downsample) == 0,
            "frame_size",
            f"divisible by 2**downsample = {2**self.downsample}",
        )
        for name in ("channels", "code_dim", "codebook_size"):
            need(getattr(self, name) >= 1, name, ">= 1")
        need(self.res_blocks >= 0, "res_blocks", ">= 0")
        need(0.0 <= self.ema_decay < 1.0, "ema_decay", "in [0, 1)")
        need(self.revive_every >= 0, "revive_every", ">= 0")
        need(self.encoder in ("patch", "conv"), "encoder", "'patch' or 'conv'")

    @property
    def grid(self) -> int:
        """Side of the token grid."""
        return self.frame_size // 2**self.downsample

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per frame (grid * grid)."""
        return self.grid**2


def vq_preset(name: str) -> VQConfig:
    """``tiny``: 32x32 -> 4x4 tokens of 512 codes (CPU). ``iris``: 64x64 -> 4x4 tokens, ~4M params."""
    if name == "tiny":
        return VQConfig()
    if name == "iris":
        return VQConfig(
            frame_size=64,
            downsample=4,
            encoder="conv",
            channels=112,
            res_blocks=1,
            code_dim=512,
            codebook_size=512,
            foreground_weight=0.0,
        )
    raise ValueError(f"unknown VQ preset {name!r}; known: tiny, iris")


class _Res(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        groups = math.gcd(8, channels)
        self.net = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class VQTokenizer(nn.Module):
    """Frames <-> grids of discrete codes. See the module docstring."""

    codebook: torch.Tensor
    ema_count: torch.Tensor
    ema_sum: torch.Tensor
    updates: torch.Tensor

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = c = config
        ch = c.channels
        patch = 2**c.downsample
        enc: list[nn.Module]
        if c.encoder == "patch":
            width = 4 * ch
            enc = [nn.Conv2d(3, width, patch, stride=patch), nn.GELU()]
            enc += [nn.Conv2d(width, width, 1), nn.GELU(), nn.Conv2d(width, c.code_dim, 1)]
        else:
            enc = [nn.Conv2d(3, ch, 3, padding=1)]
            for _ in range(c.downsample):
                enc += [_Res(ch) for _ in range(c.res_blocks)]
                enc.append(nn.Conv2d(ch, ch, 4, stride=2, padding=1))
            enc += [_Res(ch) for _ in range(c.res_blocks)]
            enc += [nn.GroupNorm(math.gcd(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, c.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(c.code_dim, ch, 1)]
        dec += [_Res(ch) for _ in range(c.res_blocks)]
        for _ in range(c.downsample):
            dec.append(nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1))
            dec += [_Res(ch) for _ in range(c.res_blocks)]
        dec += [nn.GroupNorm(math.gcd(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        codebook = torch.randn(c.codebook_size, c.code_dim) * 0.1
        self.register_buffer("codebook", codebook)
        """the K code vectors (K, D), updated by EMA, not by gradients"""
        self.register_buffer("ema_count", torch.ones(c.codebook_size))
        """EMA of the number of encoder outputs assigned to each code per batch"""
        self.register_buffer("ema_sum", codebook.clone())
        """EMA of the sum of encoder outputs assigned to each code (K, D)"""
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        """training steps taken (schedules the revivals)"""

    # ------------------------------------------------------------------ pieces
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Continuous encoder outputs ``(B, D, g, g)`` of frames ``(B, 3, S, S)`` in ``[0, 1]``."""
        return self.encoder(frames * 2.0 - 1.0)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index ``(...)`` of the code nearest to each vector of ``z (..., D)``."""
        flat = z.reshape(-1, z.shape[-1])  # (M, D)
        dist = (
            flat.pow(2).sum(-1, keepdim=True)
            - 2.0 * flat @ self.codebook.t()
            + self.codebook.pow(2).sum(-1)[None]
        )  # (M, K)
        return dist.argmin(-1).reshape(z.shape[:-1])

    @torch.no_grad()
    def tokenize(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``(..., 3, S, S)`` in ``[0, 1]`` -> tokens ``(..., g*g)`` int64, row-major."""
        lead = frames.shape[:-3]
        z = self.encode(frames.reshape(-1, *frames.shape[-3:]))  # (B, D, g, g)
        idx = self.nearest(z.movedim(1, -1))  # (B, g, g)
        return idx.reshape(*lead, -1)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(..., g*g)`` -> frames ``(..., 3, S, S)`` in ``[0, 1]``."""
        g = self.config.grid
        lead = tokens.shape[:-1]
        z = self.codebook[tokens.reshape(-1, g, g)].movedim(-1, 1)  # (B, D, g, g)
        out = torch.sigmoid(self.decoder(z))  # (B, 3, S, S)
        return out.reshape(*lead, *out.shape[1:])

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on ``{"obs": (B, S, S, 3) uint8}``; updates the codebook (EMA) in training mode."""
        c = self.config
        frames = frames_to_tensor(batch["obs"])  # (B, 3, S, S)
        z_e = self.encode(frames)  # (B, D, g, g)
        z = z_e.movedim(1, -1)  # (B, g, g, D)
        idx = self.nearest(z.detach())  # (B, g, g)
        z_q = self.codebook[idx]  # (B, g, g, D)
        commit = F.mse_loss(z, z_q.detach())
        z_st = z + (z_q - z).detach()  # straight-through estimator
        recon = torch.sigmoid(self.decoder(z_st.movedim(-1, 1)))  # (B, 3, S, S)
        weight = foreground_weights(frames, c.foreground_weight, c.foreground_threshold)
        err = (recon - frames).pow(2) * weight  # (B, 3, S, S)
        recon_loss = err.mean()
        loss = recon_loss + c.commitment * commit

        revived = 0
        if self.training:
            with torch.no_grad():
                self._ema_update(z.detach(), idx)
                self.updates += 1
                if c.revive_every and int(self.updates) % c.revive_every == 0:
                    g = c.grid
                    patch_err = F.avg_pool2d(err.detach().sum(1, keepdim=True), c.frame_size // g)
                    revived = self.revive_dead_codes(z.detach(), patch_err[:, 0])
        counts = torch.bincount(idx.flatten(), minlength=c.codebook_size).float()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return loss, {
            "loss": float(loss.detach()),
            "recon": float(recon_loss.detach()),
            "commit": float(commit.detach()),
            "perplexity": float(perplexity),
            "codes_used": float((counts > 0).sum()),
            "revived": float(revived),
        }

    def _ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        c = self.config
        flat = z.reshape(-1, c.code_dim)  # (M, D)
        onehot = F.one_hot(idx.flatten(), c.codebook_size).to(flat.dtype)  # (M, K)
        count = onehot.sum(0)  # (K,)
        total = onehot.t() @ flat  # (K, D)
        self.ema_count.mul_(c.ema_decay).add_((1 - c.ema_decay) * count)
        self.ema_sum.mul_(c.ema_decay).add_((1 - c.ema_decay) * total)
        used = self.ema_count > 1e-6
        self.codebook[used] = self.ema_sum[used] / self.ema_count[used, None]

    @torch.no_grad()
    def revive_dead_codes(
        self, z: torch.Tensor, patch_error: torch.Tensor, generator: torch.Generator | None = None
    ) -> int:
        """Move codes with EMA count below ``revive_threshold`` onto encoder outputs.

        Args:
            z: encoder outputs ``(B, g, g, D)`` of the current batch.
            patch_error: reconstruction error of each token's patch ``(B, g, g)``; outputs are
                drawn with probability proportional to it (plus 10% of its mean, so that a
                perfect batch still revives).
            generator: randomness of the draw.

        Returns:
            The number of codes revived.
        """
        c = self.config
        dead = (self.ema_count < c.revive_threshold).nonzero().squeeze(1)  # (n,)
        if dead.numel() == 0:
            return 0
        flat = z.reshape(-1, c.code_dim)  # (M, D)
        w = patch_error.reshape(-1).float().clamp(min=0)  # (M,)
        w = w + 0.1 * w.mean() + 1e-12
        pick = torch.multinomial(w, dead.numel(), replacement=True, generator=generator)
        noise = 0.01 * torch.randn(dead.numel(), c.code_dim, generator=generator, device=z.device)
        fresh = flat[pick] + noise * flat[pick].std()
        self.codebook[dead] = fresh
        self.ema_sum[dead] = fresh
        self.ema_count[dead] = 1.0
        return int(dead.numel())
