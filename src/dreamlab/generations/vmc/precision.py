"""The precision of M's matmuls in C's training dreams (``RunConfig.dream_precision``):
float32, bfloat16, or ``auto``, decided by the hardware (never by a timing, so the same command
gives the same C whatever else the machine is doing)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from dreamlab.io import atomic_write_json, read_json
from dreamlab.rundir import RunError

__all__ = ["PRECISION_FILE", "cpu_has_bfloat16", "dream_precision", "kept_precision"]

PRECISION_FILE = "precision.json"
"""``RUN/<C>/precision.json``: the setting and the precision it resolved to for that C"""
_RESOLVED = ("float32", "bfloat16")


def dream_precision(
    setting: Literal["float32", "bfloat16", "auto"], device: str | torch.device = "cpu"
) -> Literal["float32", "bfloat16"]:
    """``RunConfig.dream_precision`` resolved for dreams on ``device``.

    ``auto`` is bfloat16 where the hardware computes it natively: a CUDA GPU that supports it,
    or a CPU whose oneDNN has bfloat16 kernels (AVX512-BF16 or AMX); float32 elsewhere. On the
    CPUs measured, bfloat16 dreams were 1.1-2.0x faster on some and 1.5x slower on one
    (BENCHMARKS.md); the presets say float32, so their numbers hold on every machine.
    """
    if setting not in ("float32", "bfloat16", "auto"):
        raise RunError(f"dream_precision must be float32, bfloat16 or auto, got {setting!r}")
    if setting != "auto":
        return setting
    if torch.device(device).type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_bfloat16() else "float32"


def cpu_has_bfloat16() -> bool:
    """Whether this CPU's oneDNN has bfloat16 kernels (AVX512-BF16, AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def kept_precision(
    directory: Path, setting: Literal["float32", "bfloat16", "auto"], device: str | torch.device
) -> Literal["float32", "bfloat16"]:
    """:func:`dream_precision` for the C trained in ``directory``, decided once and kept there:
    ``auto`` depends on the hardware, so a run resumed on another machine dreams in the precision
    it began with (a changed setting is decided again)."""
    chosen = directory / PRECISION_FILE
    saved = read_json(chosen, "precision") if chosen.exists() else {}
    if not isinstance(saved, dict) or saved.get("precision", "float32") not in _RESOLVED:
        raise RunError(
            f"{chosen}: expected {{'setting': ..., 'precision': 'float32' or 'bfloat16'}}, "
            f"got {saved!r}; delete it to decide the precision again"
        )
    if saved.get("setting") == setting:
        return saved["precision"]  # type: ignore[no-any-return]
    precision = dream_precision(setting, device)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(chosen, {"setting": setting, "precision": precision})
    return precision
