"""A U-Net whose residual blocks are conditioned on a vector through adaptive group norms: the
denoiser network F of the diffusion world model (:mod:`dreamlab.models.diffusion`), where the
condition is the noise level and the actions.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaGroupNorm", "ResBlock", "UNet"]


class AdaGroupNorm(nn.Module):
    """Group norm whose scale and shift are predicted from the condition vector."""

    def __init__(self, channels: int, cond_dim: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(cond)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        return self.norm(x) * (1.0 + scale) + shift


class ResBlock(nn.Module):
    """Two 3x3 convs with adaptive group norms, SiLU and a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = AdaGroupNorm(in_ch, cond_dim, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = AdaGroupNorm(out_ch, cond_dim, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        assert self.conv2.bias is not None
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, cond)))
        h = self.conv2(F.silu(self.norm2(h, cond)))
        return self.skip(x) + h


class UNet(nn.Module):
    """A U-Net conditioned through adaptive group norms: ``(B, in, H, W), cond (B, cond_dim) ->
    (B, out, H, W)``, zero at initialisation (its last conv starts at zero).

    Args:
        in_channels: input channels (the diffusion model: the noisy frame and L context frames).
        out_channels: output channels.
        channels: channels per resolution level (each level after the first halves the size).
        depths: residual blocks per level on the way down (the way up has the same number).
        cond_dim: size of the condition vector.
        groups: groups of every group norm (must divide every level's channels).
        patch: pixel-unshuffle factor: the U-Net runs on (patch x patch)-pixel cells.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...],
        depths: tuple[int, ...],
        cond_dim: int,
        groups: int,
        patch: int = 1,
    ) -> None:
        super().__init__()
        chans, cd = channels, cond_dim
        self.patch = patch
        self.conv_in = nn.Conv2d(in_channels * patch**2, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        width = chans[0]
        for i, (ch, depth) in enumerate(zip(chans, depths, strict=True)):
            blocks = nn.ModuleList()
            for _ in range(depth):
                blocks.append(ResBlock(width, ch, cd, groups))
                width = ch
            self.down.append(blocks)
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(ch, chans[i + 1], 3, stride=2, padding=1))
                width = chans[i + 1]
        self.mid = nn.ModuleList([ResBlock(width, width, cd, groups) for _ in range(2)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(chans))):
            ch = chans[i]
            blocks = nn.ModuleList()
            for j in range(depths[i]):
                blocks.append(ResBlock(width + ch if j == 0 else ch, ch, cd, groups))
                width = ch
            self.up.append(blocks)
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, chans[i - 1], 3, padding=1))
                width = chans[i - 1]
        self.norm_out = nn.GroupNorm(groups, chans[0])
        self.conv_out = nn.Conv2d(chans[0], out_channels * patch**2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        assert self.conv_out.bias is not None
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)  # (B, C p^2, H/p, W/p)
        h = self.conv_in(x)  # (B, C0, H/p, W/p)
        skips = []
        for i, blocks in enumerate(self.down):
            for block in cast(nn.ModuleList, blocks):
                h = block(h, cond)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, C_{i+1}, H/2^(i+1), W/2^(i+1))
        for block in self.mid:
            h = block(h, cond)
        for k, blocks in enumerate(self.up):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in cast(nn.ModuleList, blocks):
                h = block(h, cond)
            if k < len(self.upsample):
                h = self.upsample[k](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, 3 p^2, H/p, W/p)
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out  # (B, 3, H, W)
