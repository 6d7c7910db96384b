"""Dream vs reality: the picture every world-model paper shows.

Take real episodes, let the model observe their first ``context`` frames, then roll it forward
**open-loop** with the real actions (it never sees another real frame) and compare what it
imagines with what really happened: a side-by-side video (real | imagined) and the prediction
error against the horizon, in pixel space and in latent space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dreamlab.eval.openloop import Imagination, imagine_episodes
from dreamlab.io import atomic_path, atomic_write_json
from dreamlab.models import frames_to_tensor
from dreamlab.viz import write_video
from dreamlab.worldmodel import WorldModel


def latent_error(world_model: WorldModel, run: Imagination) -> np.ndarray:
    """Per-episode, per-step latent MSE ``(B, H+1)`` of the imagined latents (``run.states["z"]``,
    recorded with ``record=("z",)``) against the encoding of the real frames, where the model
    has an encoder of real frames (a ``vae``); NaN otherwise."""
    assert run.real is not None and run.pixel_mse is not None
    latents = run.states.get("z")
    if latents is None or not hasattr(world_model, "vae"):
        return np.full(run.pixel_mse.shape, np.nan)
    real = run.real
    with torch.inference_mode():
        flat = frames_to_tensor(real.reshape(-1, *real.shape[2:]), world_model.device)
        mu, _ = world_model.vae.encode(flat)  # (B*(H+1), Z)
    real_z = mu.float().cpu().numpy().reshape(*real.shape[:2], -1)  # (B, H+1, Z)
    return ((real_z - latents) ** 2).mean(-1)


def side_by_side(run: Imagination, episode: int = 0, gap: int = 2) -> np.ndarray:
    """Frames ``(H+1, h, 2w+gap, 3)``: real on the left, imagined on the right."""
    assert run.real is not None
    real, dream = run.real[episode], run.frames[episode]
    sep = np.full((*real.shape[:2], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([real, sep, dream], axis=2)


def plot_error_vs_horizon(
    pixel_mse: np.ndarray, latent_mse: np.ndarray, path: str | Path, title: str = ""
) -> None:
    """Median and interquartile band of pixel (and latent) error ``(B, H+1)`` against the
    horizon; the latent panel only where every latent error is finite."""
    panels = [("pixel MSE", pixel_mse)]
    if np.isfinite(latent_mse).all():
        panels.append(("latent MSE", latent_mse))
    fig = Figure(figsize=(4.5 * len(panels), 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    steps = np.arange(pixel_mse.shape[1])
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

    The model observes ``context`` real frames of each episode (at least ``context + horizon -
    1`` steps), then imagines ``horizon`` steps open loop with the episode's real actions.

    Returns:
        The error summary: median pixel / latent MSE at each horizon step.
    """
    out = Path(out_dir)
    run = imagine_episodes(
        world_model,
        episodes,
        context,
        horizon,
        temperature=temperature,
        seed=seed,
        record=("z",),
    )
    assert run.pixel_mse is not None  # replayed real episodes
    pixel_mse = run.pixel_mse
    latent_mse = latent_error(world_model, run)
    clips = [side_by_side(run, i) for i in range(min(4, len(episodes)))]
    write_video(out / video_name, np.concatenate(clips), fps=fps)
    write_video(out / (Path(video_name).stem + ".gif"), clips[0], fps=fps)
    plot_error_vs_horizon(pixel_mse, latent_mse, out / "prediction_error.png")
    summary = {
        "context": context,
        "horizon": horizon,
        "episodes": len(episodes),
        "temperature": temperature,
        "pixel_mse_median": np.median(pixel_mse, axis=0).round(6).tolist(),
        "latent_mse_median": (
            np.median(latent_mse, axis=0).round(6).tolist()
            if np.isfinite(latent_mse).all()
            else None
        ),
    }
    atomic_write_json(out / "prediction_error.json", summary)
    return summary
