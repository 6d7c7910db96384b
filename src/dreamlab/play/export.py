"""``dreamlab export-video``: a run's recorded episodes, or fresh dreams, as mp4/GIF files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from dreamlab.data.store import STORE_FILE
from dreamlab.data.video_io import export_episodes
from dreamlab.play.session import PlaySession
from dreamlab.progress import tqdm

__all__ = ["ExportVideoArgs", "dream_frames", "export_video"]


@dataclass
class ExportVideoArgs:
    """Write a run's episodes (default) or dreams of its world model as .mp4 / .gif videos."""

    run: Path
    """run directory (its data/ store), or an episode store directory"""
    episodes: list[int] = field(default_factory=list)
    """episode indices to write (default: every episode)"""
    dream: bool = False
    """write dreams of the run's world model instead (random actions from real start frames)"""
    num_dreams: int = 1
    """with --dream: how many dreams"""
    dream_steps: int = 100
    """with --dream: steps per dream (a dream the model ends earlier is shorter)"""
    temperature: float = 1.0
    """with --dream: sampling temperature"""
    seed: int = 0
    """with --dream: seed of the start frames, actions and sampling"""
    format: Literal["mp4", "gif"] = "mp4"
    """video format"""
    fps: float = 15.0
    """frames per second"""
    out: Path | None = None
    """output directory (default RUN/videos, or videos/ beside a store given as --run)"""
    progress: bool = True
    """show a progress bar"""


def dream_frames(session: PlaySession, num_steps: int, seed: int) -> np.ndarray:
    """One dream of random actions through a :class:`~dreamlab.play.session.PlaySession`.

    Returns:
        uint8 ``(T+1, H, W, 3)``: the decoded start frame, then one frame per step until the model
        ends the dream or ``num_steps`` steps are done.
    """
    space = session.model.action_space
    space.seed(seed)
    frames = [session.reset(seed).dream]
    for _ in range(num_steps):
        if session.dream_done:
            break
        frames.append(session.step(action=space.sample()).dream)
    return np.stack(frames)  # (T+1, H, W, 3)


def export_video(args: ExportVideoArgs) -> list[Path]:
    """Write the videos; returns their paths (also printed)."""
    from dreamlab.viz import write_video

    root = Path(args.run)
    is_store = (root / STORE_FILE).is_file()
    default_out = (root.parent if is_store else root) / "videos"  # never inside a store
    out = Path(args.out) if args.out is not None else default_out
    if not args.dream:
        store = root if is_store else root / "data"
        if not (store / STORE_FILE).is_file():
            raise ValueError(f"{root}: neither an episode store nor a run with data/")
        paths = export_episodes(
            store,
            out,
            args.episodes or None,
            fmt=args.format,
            fps=args.fps,
            progress=args.progress,
        )
    else:
        from dreamlab.play.model import load_play_model

        if args.num_dreams <= 0 or args.dream_steps <= 0:
            raise ValueError("export-video: --num-dreams and --dream-steps must be > 0")
        model = load_play_model(root)
        session = PlaySession(model, temperature=args.temperature, seed=args.seed)
        paths = []
        for k in tqdm(range(args.num_dreams), desc="dreams", disable=not args.progress):
            frames = dream_frames(session, args.dream_steps, args.seed + k)
            path = out / f"dream_{k:03d}.{args.format}"
            write_video(path, frames, fps=args.fps)
            paths.append(path)
        session.close()
    for path in paths:
        print(path)
    return paths
