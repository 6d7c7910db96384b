"""Neural models: one model per file (config dataclass + ``nn.Module``), torch only.

This package holds the two conversions every model shares, so that no model re-implements them:
frames from the store/env layout to the network layout, and actions from the env's action space
to a float vector the networks can concatenate.

Model classes are imported from their own modules (``dreamlab.models.vae.VAE``,
``dreamlab.models.mdnrnn.MDNRNN``); this file does not import them so that importing the helpers
stays cheap and free of import cycles.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

ActionSpaceKind = Literal["discrete", "continuous"]

__all__ = [
    "ActionSpaceKind",
    "actions_to_tensor",
    "foreground_mask",
    "foreground_recall",
    "foreground_weights",
    "frames_to_tensor",
]


def frames_to_tensor(frames: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """Convert uint8 channel-last frames to the float channel-first layout models take.

    Args:
        frames: uint8 tensor or array-like of shape ``(..., H, W, 3)`` (store/env layout).
        device: where to put the result; ``None`` keeps the input's device.

    Returns:
        float32 tensor of shape ``(..., 3, H, W)`` with values in ``[0, 1]``.

    Raises:
        ValueError: when the input is not uint8 or its last axis is not 3 channels.
    """
    x = torch.as_tensor(frames, device=device)
    if x.dtype != torch.uint8:
        raise ValueError(f"frames: expected dtype uint8 (values 0..255), got {x.dtype}")
    if x.dim() < 3 or x.shape[-1] != 3:
        raise ValueError(f"frames: expected shape (..., H, W, 3), got {tuple(x.shape)}")
    # Move channels before the spatial axes whatever the number of leading (batch/time) axes.
    x = x.movedim(-1, -3)  # (..., 3, H, W)
    return x.to(torch.float32).div_(255.0)


def actions_to_tensor(
    action: Any,
    space_kind: ActionSpaceKind,
    n: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Convert env actions to the float vectors the MDN-RNN and controllers consume.

    Args:
        action: for ``"discrete"``, integer indices of shape ``(...)`` in ``[0, n)``; for
            ``"continuous"``, floats of shape ``(..., n)``.
        space_kind: ``"discrete"`` (Gymnasium ``Discrete(n)``, one-hot encoded) or
            ``"continuous"`` (Gymnasium ``Box`` with ``n`` dimensions, passed through).
        n: number of discrete actions, or size of the continuous action vector.
        device: where to put the result; ``None`` keeps the input's device.

    Returns:
        float32 tensor of shape ``(..., n)``.

    Raises:
        ValueError: on an unknown ``space_kind``, an out-of-range discrete index, a
            non-integer discrete action, or a continuous action whose last axis is not ``n``.
    """
    a = torch.as_tensor(action, device=device)
    if space_kind == "discrete":
        if a.is_floating_point() or a.dtype == torch.bool:
            raise ValueError(f"action: discrete actions must be integer indices, got {a.dtype}")
        a = a.long()
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= n):
            raise ValueError(
                f"action: discrete index out of range [0, {n}): min {int(a.min())}, "
                f"max {int(a.max())}"
            )
        return F.one_hot(a, n).to(torch.float32)  # (..., n)
    if space_kind == "continuous":
        if a.dim() == 0 or a.shape[-1] != n:
            raise ValueError(f"action: expected shape (..., {n}), got {tuple(a.shape)}")
        return a.to(torch.float32)  # (..., n)
    raise ValueError(f"space_kind: expected 'discrete' or 'continuous', got {space_kind!r}")


def foreground_weights(frames: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    """Reconstruction weights ``(..., 1, H, W)`` for frames ``(..., 3, H, W)`` in ``[0, 1]``: 1 on
    background, ``1 + weight`` on pixels whose colour differs from the frame's median colour by
    more than ``threshold`` in some channel.

    Why: a small object (Catch's 3x3 ball is 0.2% of the frame) costs so little squared error
    that the plain loss settles on frames without it and never learns it (measured in
    docs/vm.md). The median colour of a frame is its background whenever objects cover less than
    half of it, so no dataset statistics are needed. V and the RSSM's decoder both use it.
    """
    background = frames.flatten(-2).median(-1).values[..., None, None]  # (..., 3, 1, 1)
    diff = (frames - background).abs().amax(-3, keepdim=True)  # (..., 1, H, W)
    return 1.0 + weight * (diff > threshold).to(frames.dtype)


def foreground_mask(frames: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """``(..., H, W)`` bool: pixels of frames ``(..., 3, H, W)`` in ``[0, 1]`` whose colour
    differs from the frame's median colour (its background) by more than ``threshold``."""
    return foreground_weights(frames, 1.0, threshold)[..., 0, :, :] > 1.0


def foreground_recall(real: torch.Tensor, recon: torch.Tensor, tolerance: float = 0.25) -> float:
    """Share of the foreground pixels of ``real`` (:func:`foreground_mask`) that ``recon`` draws
    within ``tolerance`` of their colour in every channel (both ``(B, 3, H, W)`` in ``[0, 1]``):
    1 when V draws every object, about the share of the objects it draws when it drops some
    (nan with no foreground)."""
    mask = foreground_mask(real)
    close = (recon - real).abs().amax(-3) <= tolerance  # (B, H, W)
    total = int(mask.sum())
    return float((close & mask).sum()) / total if total else float("nan")
