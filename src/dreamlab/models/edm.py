"""EDM (Karras et al. 2022) in pure tensor math: the preconditioning of a denoiser, the sigma
schedule, and the samplers that integrate the probability-flow ODE (Euler, Heun) or draw
ancestrally (DDPM-style); plus the sinusoidal embedding of the noise level.

Every function works on any denoiser ``D(x (B, ...), sigma (B,)) -> (B, ...)``; the diffusion
world model (:mod:`dreamlab.models.diffusion`) is one.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "ddpm_sample",
    "edm_precondition",
    "euler_sample",
    "heun_sample",
    "karras_sigmas",
    "sinusoidal_embedding",
]


def edm_precondition(
    sigma: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's ``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma (...)``."""
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = sigma * sigma_data / var.sqrt()
    c_in = 1.0 / var.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


def karras_sigmas(
    num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0
) -> torch.Tensor:
    """The Karras schedule: ``num_steps`` levels from ``sigma_max`` down to ``sigma_min``, then 0.

    ``sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``;
    with ``num_steps == 1`` the single level is ``sigma_max``. Returns ``(num_steps + 1,)``.
    """
    if num_steps < 1:
        raise ValueError(f"karras_sigmas: num_steps must be >= 1, got {num_steps}")
    ramp = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()


def euler_sample(denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Integrate the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` with Euler.

    Args:
        denoise: ``D(x (B, ...), sigma (B,)) -> (B, ...)``.
        x: the start ``(B, ...)``, noise at level ``sigmas[0]``.
        sigmas: decreasing levels ending at 0 (e.g. :func:`karras_sigmas`).
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(x, x.new_full((x.shape[0],), s))) / s
        x = x + (s_next - s) * d
    return x


def heun_sample(denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Heun's second-order method on the same ODE (Euler on the last step, towards sigma=0)."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(x, x.new_full((x.shape[0],), s))) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoise(x_next, x.new_full((x.shape[0],), s_next))) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
    return x


def ddpm_sample(  # type: ignore[no-untyped-def]
    denoise, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Ancestral (DDPM-style) sampling: each step draws from the Gaussian posterior
    ``q(x_{s'} | x_s, y = D(x_s, s))`` of the variance-exploding process, i.e. mean
    ``y + (s'^2 / s^2)(x - y)`` and variance ``s'^2 (1 - s'^2 / s^2)``."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        y = denoise(x, x.new_full((x.shape[0],), s))
        ratio = (s_next / s) ** 2
        x = y + ratio * (x - y)
        if s_next > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + s_next * math.sqrt(1.0 - ratio) * noise
    return x


def sinusoidal_embedding(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal embedding ``(B, dim)`` of scalars ``x (B,)`` (log-spaced frequencies)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=x.device))  # (half,)
    angles = x[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)
