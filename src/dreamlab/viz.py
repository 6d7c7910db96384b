"""Pictures of what the models learned: image grids, learning curves and videos.

Everything is written atomically and without pyplot (its global state is not thread-safe and
needs a display backend): figures are built on an Agg canvas directly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dreamlab.io import atomic_path, read_jsonl

__all__ = ["plot_curves", "save_image_grid", "upscale", "write_video"]

_VIEW_PIXELS = 256
"""Small frames are enlarged to at least this many pixels on their short side for viewing."""


def _check_frames(frames: np.ndarray, what: str, ndim: int) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != ndim or arr.shape[-1] != 3:
        lead = "(N, H, W, 3)" if ndim == 4 else "(H, W, 3)"
        raise ValueError(f"{what}: expected uint8 frames {lead}, got {arr.dtype} {arr.shape}")
    return arr


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement of ``(..., H, W, C)`` images by an integer ``scale``."""
    if scale <= 1:
        return frames
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2)  # (..., H*s, W*s, C)


def _auto_scale(height: int, width: int) -> int:
    return max(1, math.ceil(_VIEW_PIXELS / max(1, min(height, width))))


def save_image_grid(
    path: str | os.PathLike[str],
    rows: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    *,
    scale: int | None = None,
    gap: int = 2,
) -> None:
    """Save rows of frames as one PNG grid (e.g. real frames above their reconstructions).

    Args:
        path: output image path (format from the extension, normally ``.png``).
        rows: list of uint8 ``(N, H, W, 3)`` arrays, all with the same ``H, W``; shorter rows are
            padded with black.
        labels: one label per row, drawn on the left (needs matplotlib text rendering).
        scale: integer nearest-neighbour enlargement; default makes frames >= 64 px.
        gap: pixels of white between tiles.
    """
    if not rows:
        raise ValueError("save_image_grid: rows is empty")
    arrays = [_check_frames(r, f"save_image_grid: rows[{i}]", 4) for i, r in enumerate(rows)]
    h, w = arrays[0].shape[1:3]
    for i, r in enumerate(arrays):
        if r.shape[1:3] != (h, w):
            raise ValueError(
                f"save_image_grid: rows[{i}] has frames {r.shape[1:3]}, rows[0] has {(h, w)}"
            )
    if labels is not None and len(labels) != len(arrays):
        raise ValueError(f"save_image_grid: {len(labels)} labels for {len(arrays)} rows")
    s = scale if scale is not None else max(1, math.ceil(64 / min(h, w)))
    th, tw = h * s, w * s
    cols = max(r.shape[0] for r in arrays)
    grid = np.full(
        (len(arrays) * (th + gap) - gap, cols * (tw + gap) - gap, 3), 255, dtype=np.uint8
    )
    for i, r in enumerate(arrays):
        tiles = upscale(r, s)  # (N, th, tw, 3)
        for j in range(cols):
            y, x = i * (th + gap), j * (tw + gap)
            grid[y : y + th, x : x + tw] = tiles[j] if j < len(tiles) else 0
    target = Path(path)
    suffix = target.suffix or ".png"
    with atomic_path(target, suffix=suffix) as tmp:
        if labels is None:
            imageio.imwrite(tmp, grid, format=suffix.lstrip("."))
            return
        dpi = 100
        margin = 1.2  # inches for the labels
        fig = Figure(figsize=(grid.shape[1] / dpi + margin, grid.shape[0] / dpi), dpi=dpi)
        FigureCanvasAgg(fig)
        left = margin / (grid.shape[1] / dpi + margin)
        ax = fig.add_axes((left, 0.0, 1.0 - left, 1.0))
        ax.imshow(grid, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([i * (th + gap) + th / 2 for i in range(len(arrays))])
        ax.set_yticklabels(list(labels))
        for spine in ax.spines.values():
            spine.set_visible(False)
        fig.savefig(tmp, format=suffix.lstrip("."), dpi=dpi)


def plot_curves(
    metrics_jsonl_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    keys: Sequence[str] | None = None,
) -> list[str]:
    """Plot metrics logged as JSON lines (``{"step": ..., "vae/train/loss": ...}``) against step.

    Args:
        metrics_jsonl_path: file written by :func:`dreamlab.io.append_jsonl`.
        png_path: output image.
        keys: metric names to plot, one panel each; default every numeric key but ``step`` and
            ``time``.

    Returns:
        The keys plotted.

    Raises:
        ValueError: when the file holds no records or a requested key never appears.
    """
    records = read_jsonl(metrics_jsonl_path)
    records = [r for r in records if isinstance(r.get("step"), int | float)]
    if not records:
        raise ValueError(f"{metrics_jsonl_path}: no metric records with a 'step' to plot")
    if keys is None:
        seen: dict[str, None] = {}
        for r in records:
            for k, v in r.items():
                if (
                    k not in ("step", "time")
                    and isinstance(v, int | float)
                    and not isinstance(v, bool)
                ):
                    seen[k] = None
        keys = list(seen)
    else:
        absent = [k for k in keys if not any(k in r for r in records)]
        if absent:
            raise ValueError(f"{metrics_jsonl_path}: metrics {absent} never logged")
    if not keys:
        raise ValueError(f"{metrics_jsonl_path}: no numeric metrics to plot")
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.0 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        steps = np.array([p[0] for p in pts], dtype=np.float64)
        values = np.array([p[1] for p in pts], dtype=np.float64)
        ax.plot(steps, values, linewidth=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        finite = values[np.isfinite(values)]
        # Losses spanning orders of magnitude (VAE recon) are only readable on a log axis.
        if finite.size > 1 and finite.min() > 0 and finite.max() / finite.min() > 50:
            ax.set_yscale("log")
    target = Path(png_path)
    with atomic_path(target, suffix=target.suffix or ".png") as tmp:
        fig.savefig(tmp, format=(target.suffix or ".png").lstrip("."))
    return list(keys)


def write_video(
    path: str | os.PathLike[str], frames: np.ndarray, fps: float = 30.0, *, scale: int | None = None
) -> None:
    """Write frames as an ``.mp4`` (H.264 via imageio-ffmpeg) or ``.gif`` (by extension).

    Args:
        path: output path ending in ``.mp4`` or ``.gif``.
        frames: uint8 ``(T, H, W, 3)``.
        fps: frames per second.
        scale: integer nearest-neighbour enlargement; default makes the short side >= 256 px.
            MP4 frames are padded with black to a multiple of 16 pixels (codec block size).
    """
    arr = _check_frames(frames, "write_video: frames", 4)
    if len(arr) == 0:
        raise ValueError("write_video: frames is empty")
    if fps <= 0:
        raise ValueError(f"write_video: fps must be > 0, got {fps}")
    target = Path(path)
    ext = target.suffix.lower()
    if ext not in (".mp4", ".gif"):
        raise ValueError(f"write_video: {target}: expected a .mp4 or .gif extension")
    s = scale if scale is not None else _auto_scale(*arr.shape[1:3])
    arr = upscale(arr, s)  # (T, H*s, W*s, 3)
    with atomic_path(target, suffix=ext) as tmp:
        if ext == ".gif":
            imageio.mimwrite(tmp, list(arr), format="GIF", duration=1000.0 / fps, loop=0)
            return
        pad_h = (-arr.shape[1]) % 16
        pad_w = (-arr.shape[2]) % 16
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        with imageio.get_writer(
            tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=16
        ) as writer:
            for frame in arr:
                writer.append_data(frame)  # type: ignore[attr-defined]  # imageio v2 Writer
