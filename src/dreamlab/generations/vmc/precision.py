"""The precision of M's matmuls in C's training dreams (``RunConfig.dream_precision``):
float32, bfloat16, or ``auto``, measured on this machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from dreamlab.generations.vmc.worldmodel import VMWorldModel
from dreamlab.rundir import RunError

__all__ = ["BFLOAT16_MARGIN", "cpu_has_bfloat16", "dream_precision", "dream_step_seconds"]


def dream_precision(
    setting: Literal["float32", "bfloat16", "auto"],
    world_model_at: Callable[[Literal["float32", "bfloat16"]], VMWorldModel] | None = None,
    num_dreams: int = 512,
) -> Literal["float32", "bfloat16"]:
    """``RunConfig.dream_precision`` resolved for this machine.

    ``auto`` is bfloat16 on a CUDA GPU that supports it. On a CPU it is measured: where oneDNN
    has bfloat16 kernels, ``num_dreams`` dreams of ``world_model_at(precision)`` are stepped in
    each precision and bfloat16 is used where it is clearly faster (``BFLOAT16_MARGIN``).
    Autocast converts M's weights at every step, and whether bfloat16 pays for that depends on
    the CPU: 2.0x faster on one of this project's machines, 1.5x slower on another
    (BENCHMARKS.md). Without ``world_model_at`` a CPU gets float32.
    """
    if setting not in ("float32", "bfloat16", "auto"):
        raise RunError(f"dream_precision must be float32, bfloat16 or auto, got {setting!r}")
    if setting != "auto":
        return setting
    if world_model_at is None:
        return "float32"
    device = world_model_at("float32").device
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if not cpu_has_bfloat16():
        return "float32"
    float32 = dream_step_seconds(world_model_at("float32"), num_dreams)
    bfloat16 = dream_step_seconds(world_model_at("bfloat16"), num_dreams)
    # a clear margin, so that a busy moment during the probe does not flip the choice (and
    # with it the run's numbers) from one run to the next on the same machine
    return "bfloat16" if bfloat16 * BFLOAT16_MARGIN < float32 else "float32"


BFLOAT16_MARGIN = 1.25
"""``auto`` picks bfloat16 only where its dream steps are this many times faster"""


def cpu_has_bfloat16() -> bool:
    """Whether this CPU's oneDNN has bfloat16 kernels (AVX512-BF16, AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@torch.inference_mode()
def dream_step_seconds(world_model: VMWorldModel, num_dreams: int, steps: int = 12) -> float:
    """Median seconds of one step of ``num_dreams`` dreams (after two warm-up steps)."""
    state = world_model.initial_state(num_dreams)
    action = world_model.encode_action(torch.zeros(num_dreams, world_model.action_dim))
    generator = torch.Generator(device=world_model.device).manual_seed(0)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        state, _, _ = world_model.step(state, action, 1.0, generator)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))
