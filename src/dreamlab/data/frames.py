"""Frames of recorded episodes: decoding videos and image directories, resizing frames.

A source is a video file (read through imageio: ffmpeg, or pillow for GIF) or a directory of image
files in natural order (``f2.png`` before ``f10.png``); every frame must have the size of the
first, and :func:`resize_frame` brings it to the store's square frame size.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "image_files",
    "read_frames",
    "resize_frame",
    "video_fps",
]

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".gif")
"""File extensions read as videos (through imageio: ffmpeg, or pillow for GIF)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
"""File extensions of the frames of an image directory."""


def resize_frame(
    frame: np.ndarray, size: int, mode: Literal["stretch", "crop", "pad"] = "stretch"
) -> np.ndarray:
    """Resize one ``(H, W, 3)`` uint8 frame to ``(size, size, 3)``.

    ``stretch`` scales each axis (what the env wrappers do), ``crop`` cuts the centre square
    first, ``pad`` adds black bars to make it square. Bilinear with antialiasing (PIL), like
    :class:`dreamlab.envs.wrappers.ResizeFrame`.
    """
    h, w = frame.shape[:2]
    if mode == "crop" and h != w:
        s = min(h, w)
        y, x = (h - s) // 2, (w - s) // 2
        frame = frame[y : y + s, x : x + s]
    elif mode == "pad" and h != w:
        s = max(h, w)
        padded = np.zeros((s, s, 3), dtype=np.uint8)
        y, x = (s - h) // 2, (s - w) // 2
        padded[y : y + h, x : x + w] = frame
        frame = padded
    elif mode not in ("stretch", "crop", "pad"):
        raise ValueError(f"resize mode must be 'stretch', 'crop' or 'pad', got {mode!r}")
    if frame.shape[:2] == (size, size):
        return np.ascontiguousarray(frame)
    image = Image.fromarray(np.ascontiguousarray(frame)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.asarray(image, dtype=np.uint8)


def _to_rgb(frame: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f" and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = (np.clip(arr, 0.0, 1.0) * 255.0).round()
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{where}: expected an RGB image, got shape {arr.shape}")
    return arr


def _one_line(error: BaseException) -> str:
    """A decoder's error in one line (ffmpeg's messages carry its whole banner)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and "===" not in ln]
    if not lines:
        return type(error).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(error).__name__}: {text.rstrip(')')}"


def _natural_key(path: Path) -> list[Any]:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path.name)]


def image_files(directory: Path) -> list[Path]:
    """Image files of ``directory`` in natural order (``f2.png`` before ``f10.png``)."""
    files = [p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_natural_key)


def video_fps(path: str | os.PathLike[str]) -> float | None:
    """Frame rate recorded in a video file (None for image directories or when unknown)."""
    import imageio.v2 as imageio

    p = Path(path)
    if p.is_dir():
        return None
    try:
        with imageio.get_reader(p) as reader:
            meta = reader.get_meta_data()
    except Exception:
        return None
    fps = meta.get("fps")
    if fps is None and meta.get("duration"):
        fps = 1000.0 / float(meta["duration"])  # GIF: milliseconds per frame
    return float(fps) if fps and math.isfinite(float(fps)) and fps > 0 else None


def read_frames(
    source: str | os.PathLike[str],
) -> Iterator[tuple[np.ndarray, str]]:
    """Yield ``(frame (H, W, 3) uint8, where)`` of a video file or an image directory.

    Every frame must have the size of the first; ``where`` names the file (and frame).

    Raises:
        ValueError: unreadable video or image, no frames, or a frame of another size.
    """
    import imageio.v2 as imageio

    src = Path(source)
    first_shape: tuple[int, ...] | None = None
    first_where = ""

    def check(frame: np.ndarray, where: str) -> np.ndarray:
        nonlocal first_shape, first_where
        rgb = _to_rgb(frame, where)
        if first_shape is None:
            first_shape, first_where = rgb.shape, where
        elif rgb.shape != first_shape:
            raise ValueError(
                f"{where}: frame is {rgb.shape[1]}x{rgb.shape[0]}, but {first_where} is "
                f"{first_shape[1]}x{first_shape[0]}: inconsistent frame sizes"
            )
        return rgb

    if src.is_dir():
        files = image_files(src)
        if not files:
            raise ValueError(f"{src}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            try:
                with Image.open(f) as opened:
                    image = np.asarray(opened.convert("RGB"))
            except Exception as e:
                raise ValueError(f"{f}: cannot read image ({_one_line(e)})") from None
            yield check(image, str(f)), str(f)
        return
    if not src.is_file():
        raise ValueError(f"{src}: no such video file or image directory")
    if src.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(
            f"{src}: not a video ({', '.join(VIDEO_SUFFIXES)}) or a directory of images"
        )
    try:
        reader = imageio.get_reader(src)
    except Exception as e:
        raise ValueError(f"{src}: cannot read video ({_one_line(e)})") from None
    count = 0
    try:
        iterator = iter(reader)
        while True:
            try:
                frame = next(iterator)
            except StopIteration:
                break
            except (IndexError, RuntimeError, OSError, ValueError) as e:
                raise ValueError(
                    f"{src}: cannot read video after frame {count} ({_one_line(e)})"
                ) from None
            where = f"{src} frame {count}"
            count += 1
            yield check(frame, where), where
    finally:
        reader.close()
    if count == 0:
        raise ValueError(f"{src}: cannot read video (no frames decoded)")
