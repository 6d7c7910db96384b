"""Dream vs reality: the picture every world-model paper shows.

Take real episodes, let the model observe their first ``context`` frames, then roll it forward
**open-loop** with the real actions (it never sees another real frame) and compare what it
imagines with what really happened: a side-by-side video (real | imagined) and the prediction
error against the horizon, in pixel space and in latent space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dreamlab.dream import frames_to_uint8
from dreamlab.io import atomic_path, atomic_write_json
from dreamlab.models import frames_to_tensor
from dreamlab.viz import write_video
from dreamlab.worldmodel import WorldModel


@dataclass
class OpenLoopResult:
    """Open-loop prediction of a batch of real episodes.

    Attributes:
        real: real frames ``(B, H+1, h, w, 3)`` uint8 from the last context frame on.
        imagined: decoded imagined frames, same shape (index 0 is the model's view of the last
            context frame).
        pixel_mse: per-episode, per-step mean squared pixel error in [0, 1] units ``(B, H+1)``.
        latent_mse: per-episode, per-step latent error ``(B, H+1)`` where the model has an
            encoder of real frames (NaN otherwise).
    """

    real: np.ndarray
    imagined: np.ndarray
    pixel_mse: np.ndarray
    latent_mse: np.ndarray


def open_loop(
    world_model: WorldModel,
    episodes: list[dict[str, np.ndarray]],
    *,
    context: int = 1,
    horizon: int = 30,
    temperature: float = 1.0,
    seed: int = 0,
) -> OpenLoopResult:
    """Observe ``context`` real frames of each episode, then imagine ``horizon`` steps open-loop.

    Args:
        world_model: any :class:`~dreamlab.worldmodel.WorldModel`.
        episodes: real episodes (``obs (T+1, H, W, 3)`` uint8, ``action (T, ...)``), each with
            at least ``context + horizon - 1`` steps.
        context: real frames the model sees before it dreams (>= 1); memory is warmed on them.
        horizon: imagined steps after the last context frame.
        temperature: sampling temperature of the dream.
        seed: seed of the sampling noise.

    Returns:
        :class:`OpenLoopResult` over the ``horizon + 1`` frames from the last context frame.
    """
    if context < 1 or horizon < 1:
        raise ValueError(f"open_loop: context and horizon must be >= 1, got {context}, {horizon}")
    need = context + horizon - 1
    short = [i for i, ep in enumerate(episodes) if len(ep["action"]) < need]
    if short:
        raise ValueError(
            f"open_loop: episodes {short} have fewer than context + horizon - 1 = {need} steps"
        )
    gen = torch.Generator(device=world_model.device).manual_seed(seed)
    obs = np.stack([ep["obs"][: context + horizon] for ep in episodes])  # (B, C+H, h, w, 3)
    actions = np.stack([ep["action"][: context + horizon - 1] for ep in episodes])
    act = torch.as_tensor(actions)
    batch = len(episodes)
    state = world_model.initial_state(batch)
    # Warm the memory on the real context: observe each real frame, then step with its action.
    for t in range(context):
        state = world_model.observe(state, frames_to_tensor(obs[:, t], world_model.device))
        if t < context - 1:
            state, _, _ = world_model.step(state, act[:, t], temperature, gen)
    imagined = [frames_to_uint8(world_model.decode(state))]
    latents = [state.get("z")]
    for t in range(context - 1, context - 1 + horizon):
        state, _, _ = world_model.step(state, act[:, t], temperature, gen)
        imagined.append(frames_to_uint8(world_model.decode(state)))
        latents.append(state.get("z"))
    real = obs[:, context - 1 :]  # (B, H+1, h, w, 3)
    dream = np.stack(imagined, axis=1)  # (B, H+1, h, w, 3)
    diff = real.astype(np.float32) / 255.0 - dream.astype(np.float32) / 255.0
    pixel_mse = (diff**2).mean(axis=(2, 3, 4))  # (B, H+1)
    latent_mse = np.full(pixel_mse.shape, np.nan)
    if latents[0] is not None and hasattr(world_model, "vae"):
        with torch.inference_mode():
            flat = frames_to_tensor(real.reshape(-1, *real.shape[2:]), world_model.device)
            mu, _ = world_model.vae.encode(flat)  # (B*(H+1), Z)
        real_z = mu.reshape(batch, horizon + 1, -1)
        dream_z = torch.stack(latents, dim=1)  # (B, H+1, Z)
        latent_mse = ((real_z - dream_z) ** 2).mean(-1).cpu().numpy()
    return OpenLoopResult(real, dream, pixel_mse, latent_mse)


def side_by_side(result: OpenLoopResult, episode: int = 0, gap: int = 2) -> np.ndarray:
    """Frames ``(H+1, h, 2w+gap, 3)``: real on the left, imagined on the right."""
    real, dream = result.real[episode], result.imagined[episode]
    sep = np.full((*real.shape[:2], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([real, sep, dream], axis=2)


def plot_error_vs_horizon(result: OpenLoopResult, path: str | Path, title: str = "") -> None:
    """Median and interquartile band of pixel (and latent) error against the horizon."""
    panels = [("pixel MSE", result.pixel_mse)]
    if np.isfinite(result.latent_mse).all():
        panels.append(("latent MSE", result.latent_mse))
    fig = Figure(figsize=(4.5 * len(panels), 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    steps = np.arange(result.pixel_mse.shape[1])
    for i, (name, err) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        q25, q50, q75 = np.percentile(err, [25, 50, 75], axis=0)
        ax.plot(steps, q50, label="median")
        ax.fill_between(steps, q25, q75, alpha=0.3, label="25-75%")
        ax.set_xlabel("imagined steps (open loop)")
        ax.set_ylabel(name)
        ax.set_title(f"{title} {name} vs horizon".strip(), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def dream_vs_real(
    world_model: WorldModel,
    episodes: list[dict[str, np.ndarray]],
    out_dir: str | Path,
    *,
    context: int = 1,
    horizon: int = 30,
    temperature: float = 1.0,
    seed: int = 0,
    fps: float = 15.0,
    video_name: str = "dream_vs_real.mp4",
) -> dict[str, Any]:
    """Write ``dream_vs_real.{mp4,gif}``, ``prediction_error.png`` and ``prediction_error.json``.

    Returns:
        The error summary: median pixel / latent MSE at each horizon step.
    """
    out = Path(out_dir)
    result = open_loop(
        world_model,
        episodes,
        context=context,
        horizon=horizon,
        temperature=temperature,
        seed=seed,
    )
    clips = [side_by_side(result, i) for i in range(min(4, len(episodes)))]
    write_video(out / video_name, np.concatenate(clips), fps=fps)
    write_video(out / (Path(video_name).stem + ".gif"), clips[0], fps=fps)
    plot_error_vs_horizon(result, out / "prediction_error.png")
    summary = {
        "context": context,
        "horizon": horizon,
        "episodes": len(episodes),
        "temperature": temperature,
        "pixel_mse_median": np.median(result.pixel_mse, axis=0).round(6).tolist(),
        "latent_mse_median": (
            np.median(result.latent_mse, axis=0).round(6).tolist()
            if np.isfinite(result.latent_mse).all()
            else None
        ),
    }
    atomic_write_json(out / "prediction_error.json", summary)
    return summary
