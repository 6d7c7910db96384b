"""V: the convolutional variational autoencoder of Ha & Schmidhuber (2018).

For 64x64x3 frames this is exactly the paper's network::

    encoder  (B,3,64,64) -conv4s2-> (B,32,31,31) -> (B,64,14,14) -> (B,128,6,6) -> (B,256,2,2)
             -> flatten (B,1024) -> mu, logvar (B,Z)
    decoder  z (B,Z) -dense-> (B,1024,1,1) -deconv5s2-> (B,128,5,5) -deconv5s2-> (B,64,13,13)
             -deconv6s2-> (B,32,30,30) -deconv6s2-> (B,3,64,64) -> sigmoid

Other square frame sizes are handled by two rules, both decided once in ``__init__``:

* Encoder: the flatten size comes from a dummy forward pass. If unpadded 4x4/stride-2 convs
  would shrink the image to nothing (e.g. 32x32 with four layers), every conv gets padding 1
  instead (32 -> 16 -> 8 -> 4 -> 2).
* Decoder: the dense layer outputs a ``s0 x s0`` grid instead of ``1 x 1``, with ``s0`` the
  smallest start size whose deconv stack reaches at least ``frame_size``; the output is then
  center-cropped to ``frame_size``. With the paper's kernels ``s0 = 1`` gives 64, ``s0 = 3``
  gives exactly 96, and 32 is the center crop of 64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dreamlab.models import foreground_weights, frames_to_tensor

__all__ = ["VAE", "VAEConfig", "kl_divergence"]


@dataclass
class VAEConfig:
    """Hyperparameters of the convolutional VAE (V)."""

    frame_size: int = 64
    """height = width of the square input frames, in pixels"""
    z_dim: int = 32
    """size of the latent vector z"""
    enc_channels: tuple[int, ...] = (32, 64, 128, 256)
    """filters of each 4x4 stride-2 encoder conv"""
    dec_channels: tuple[int, ...] = (128, 64, 32)
    """filters of each hidden decoder deconv (a final deconv to 3 channels follows)"""
    dec_kernels: tuple[int, ...] = (5, 5, 6, 6)
    """kernel size of each stride-2 decoder deconv, the last one being the 3-channel output"""
    dec_dense: int = 1024
    """channels of the grid the dense layer maps z to before the deconvs"""
    kl_tolerance: float = 0.5
    """KL is floored at kl_tolerance * z_dim nats per sample (0 disables), as the original code"""
    kl_weight: float = 1.0
    """weight of the (floored) KL term in the loss"""
    recon_loss: Literal["mse_sum", "bce"] = "mse_sum"
    """reconstruction loss summed over pixels per sample: squared error or binary cross-entropy"""
    foreground_weight: float = 0.0
    """extra loss weight on pixels unlike the frame's background (0 = the paper's plain loss)"""
    foreground_threshold: float = 0.1
    """a pixel is foreground when a channel differs from the frame's median colour by this much"""

    def __post_init__(self) -> None:
        if self.frame_size < 8:
            raise ValueError(f"VAEConfig.frame_size: expected >= 8 pixels, got {self.frame_size}")
        if self.z_dim < 1:
            raise ValueError(f"VAEConfig.z_dim: expected >= 1, got {self.z_dim}")
        if len(self.dec_kernels) != len(self.dec_channels) + 1:
            raise ValueError(
                "VAEConfig.dec_kernels: expected one kernel per deconv "
                f"(len(dec_channels) + 1 = {len(self.dec_channels) + 1}), got {self.dec_kernels}"
            )
        if self.recon_loss not in ("mse_sum", "bce"):
            raise ValueError(
                f"VAEConfig.recon_loss: expected 'mse_sum' or 'bce', got {self.recon_loss!r}"
            )
        if self.kl_tolerance < 0:
            raise ValueError(f"VAEConfig.kl_tolerance: expected >= 0, got {self.kl_tolerance}")
        if self.foreground_weight < 0:
            raise ValueError(
                f"VAEConfig.foreground_weight: expected >= 0, got {self.foreground_weight}"
            )


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, in nats.

    Args:
        mu: ``(B, Z)`` posterior means.
        logvar: ``(B, Z)`` posterior log-variances.

    Returns:
        ``(B,)`` KL divergence summed over latent dimensions.
    """
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)  # (B,)


def _deconv_out(size: int, kernels: tuple[int, ...]) -> int:
    """Spatial size after a stack of unpadded stride-2 transposed convs."""
    for k in kernels:
        size = (size - 1) * 2 + k
    return size


def _conv_out(size: int, num_layers: int, padding: int) -> int:
    """Spatial size after ``num_layers`` 4x4 stride-2 convs with ``padding``."""
    for _ in range(num_layers):
        size = (size + 2 * padding - 4) // 2 + 1
    return size


class VAE(nn.Module):
    """Convolutional VAE mapping ``(B, 3, H, W)`` frames in [0, 1] to ``(B, Z)`` latents and back."""

    config_class: ClassVar[type[VAEConfig]] = VAEConfig

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VAEConfig()
        num_enc = len(config.enc_channels)
        # Unpadded convs are the paper's; padding is only used when they would erase the image.
        self.enc_padding = 0 if _conv_out(config.frame_size, num_enc, 0) >= 1 else 1
        if _conv_out(config.frame_size, num_enc, self.enc_padding) < 1:
            raise ValueError(
                f"VAEConfig: frame_size {config.frame_size} is too small for "
                f"{num_enc} stride-2 encoder convs"
            )
        layers: list[nn.Module] = []
        in_ch = 3
        for ch in config.enc_channels:
            layers += [nn.Conv2d(in_ch, ch, 4, stride=2, padding=self.enc_padding), nn.ReLU()]
            in_ch = ch
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            dummy = torch.zeros(1, 3, config.frame_size, config.frame_size)
            self.flat_dim = int(self.encoder(dummy).shape[1])
        self.fc_mu = nn.Linear(self.flat_dim, config.z_dim)
        self.fc_logvar = nn.Linear(self.flat_dim, config.z_dim)

        # Smallest start grid whose deconv stack covers the frame; the excess is cropped.
        self.dec_start = 1
        while _deconv_out(self.dec_start, config.dec_kernels) < config.frame_size:
            self.dec_start += 1
        self.dec_out_size = _deconv_out(self.dec_start, config.dec_kernels)
        self.fc_dec = nn.Linear(config.z_dim, config.dec_dense * self.dec_start**2)
        deconvs: list[nn.Module] = []
        in_ch = config.dec_dense
        for ch, k in zip(config.dec_channels, config.dec_kernels[:-1], strict=True):
            deconvs += [nn.ConvTranspose2d(in_ch, ch, k, stride=2), nn.ReLU()]
            in_ch = ch
        deconvs.append(nn.ConvTranspose2d(in_ch, 3, config.dec_kernels[-1], stride=2))
        self.decoder = nn.Sequential(*deconvs)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of frames.

        Args:
            x: ``(B, 3, H, W)`` float frames in [0, 1], ``H = W = frame_size``.

        Returns:
            ``(mu, logvar)``, each ``(B, Z)``.
        """
        size = self.config.frame_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(
                f"VAE.encode: expected x of shape (B, 3, {size}, {size}), got {tuple(x.shape)}"
            )
        h = self.encoder(x)  # (B, flat_dim)
        return self.fc_mu(h), self.fc_logvar(h)  # (B, Z), (B, Z)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid reconstruction (used by the BCE loss for numerical stability).

        Args:
            z: ``(B, Z)`` latents.

        Returns:
            ``(B, 3, H, W)`` logits.
        """
        s = self.dec_start
        h = self.fc_dec(z).view(-1, self.config.dec_dense, s, s)  # (B, dense, s0, s0)
        out = self.decoder(h)  # (B, 3, dec_out_size, dec_out_size)
        excess = self.dec_out_size - self.config.frame_size
        if excess:
            lo = excess // 2
            hi = lo + self.config.frame_size
            out = out[:, :, lo:hi, lo:hi]  # (B, 3, H, W)
        return out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Frames from latents.

        Args:
            z: ``(B, Z)`` latents.

        Returns:
            ``(B, 3, H, W)`` frames in [0, 1].
        """
        return torch.sigmoid(self.decode_logits(z))  # (B, 3, H, W)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``z = mu + sigma * eps`` in training mode; the mean ``mu`` in eval mode.

        Args:
            mu: ``(B, Z)``.
            logvar: ``(B, Z)``.

        Returns:
            ``(B, Z)`` latents.
        """
        if not self.training:
            return mu
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # (B, Z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample (training) or take the mean (eval), decode.

        Args:
            x: ``(B, 3, H, W)`` float frames in [0, 1].

        Returns:
            ``(recon (B, 3, H, W) in [0, 1], mu (B, Z), logvar (B, Z))``.
        """
        mu, logvar = self.encode(x)
        recon = self.decode(self.reparameterize(mu, logvar))  # (B, 3, H, W)
        return recon, mu, logvar

    def kl_term(self, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Floored KL used in the loss, and the raw KL for logging.

        The floor (``kl_tolerance * z_dim`` nats per sample) stops the optimiser from pushing
        the posterior onto the prior once it carries that little information; below it the
        KL term has zero gradient.

        Args:
            mu: ``(B, Z)``.
            logvar: ``(B, Z)``.

        Returns:
            ``(floored_kl, raw_kl)``: scalars, batch means of per-sample values.
        """
        kl = kl_divergence(mu, logvar)  # (B,)
        floor = self.config.kl_tolerance * self.config.z_dim
        floored = torch.clamp(kl, min=floor) if floor > 0 else kl  # (B,)
        return floored.mean(), kl.mean()

    def pixel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction weights ``(B, 1, H, W)`` (see :func:`dreamlab.models.foreground_weights`)."""
        return foreground_weights(
            x, self.config.foreground_weight, self.config.foreground_threshold
        )

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO with the KL floor.

        Args:
            batch: ``{"obs": uint8 (B, H, W, 3)}``.

        Returns:
            ``(loss, metrics)`` with metrics ``loss``, ``recon`` (per-sample reconstruction loss
            summed over pixels), ``kl`` (raw KL, nats per sample) and ``kl_loss`` (floored).
        """
        if "obs" not in batch:
            raise KeyError(f"VAE.compute_loss: batch needs key 'obs', got {sorted(batch)}")
        x = frames_to_tensor(batch["obs"], device=self.fc_mu.weight.device)  # (B, 3, H, W)
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)  # (B, Z)
        logits = self.decode_logits(z)  # (B, 3, H, W)
        if self.config.recon_loss == "bce":
            per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            per_pixel = (torch.sigmoid(logits) - x).pow(2)  # (B, 3, H, W)
        if self.config.foreground_weight > 0:
            per_pixel = per_pixel * self.pixel_weights(x)
        recon = per_pixel.flatten(1).sum(dim=1).mean()
        kl_loss, kl_raw = self.kl_term(mu, logvar)
        loss = recon + self.config.kl_weight * kl_loss
        metrics = {
            "loss": float(loss.detach()),
            "recon": float(recon.detach()),
            "kl": float(kl_raw.detach()),
            "kl_loss": float(kl_loss.detach()),
        }
        return loss, metrics
