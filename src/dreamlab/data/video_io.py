"""Recorded episodes in and out: videos and image directories -> episode store -> mp4/GIF.

Import (``dreamlab import``): every source (a video file, or a directory of image files,
:mod:`dreamlab.data.frames`) becomes one episode. Its frames are decoded, resized to the store's
frame size and paired with an *action log* (CSV or JSON, :mod:`dreamlab.data.action_log`) whose
rows are keyed by frame index or by timestamp.

Nothing is half-written: each episode file is written atomically, and when any source fails the
episodes this import already wrote (and the store itself, if this import created it) are removed.

Export: :func:`export_episodes` writes episodes of a store as ``.mp4`` or ``.gif`` files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import tyro

from dreamlab.data.action_log import align_actions, parse_action_space, read_action_log
from dreamlab.data.frames import read_frames, resize_frame, video_fps
from dreamlab.data.schema import StoreError, StoreMeta, describe_space
from dreamlab.data.store import STORE_FILE, EpisodeStore
from dreamlab.progress import tqdm

__all__ = [
    "ImportSummary",
    "VideoImportConfig",
    "export_episodes",
    "import_command",
    "import_videos",
]


@dataclass
class VideoImportConfig:
    """Import recorded episodes (videos or image directories + action logs) into an episode store."""

    out: Path
    """episode store to create or append to (e.g. runs/NAME/data)"""
    sources: Annotated[list[Path], tyro.conf.Positional] = field(default_factory=list)
    """video files (.mp4, .gif, .avi, .webm, ...) or directories of images; one episode each"""
    actions: list[Path] = field(default_factory=list)
    """action logs (.csv or .json), one per source in the same order"""
    fps: float | None = None
    """frame rate, for logs keyed by time (default: the video's own; needed for image dirs)"""
    env: str | None = None
    """env (preset name or Gymnasium id) the recording comes from: gives the action space and
    frame size; default: the run's env when --out is RUN/data of a run with a config.json"""
    action_space: str | None = None
    """without --env: 'discrete:N', 'box:N' or 'box:LOW:HIGH' (e.g. box:-1,0,0:1,1,1)"""
    env_id: str | None = None
    """env id recorded in the store without --env (default 'recorded')"""
    size: int | None = None
    """frame size S (S x S); default: the store's, the env's, else 64"""
    resize: Literal["stretch", "crop", "pad"] = "stretch"
    """how frames of another shape become S x S"""
    end: Literal["truncated", "terminated"] = "truncated"
    """end flag of each episode's last step when the log has no terminated/truncated column"""
    max_hold: float = 1.0
    """logs keyed by time: seconds an action is held before a gap is an error"""
    minari: str | None = None
    """import this Minari dataset (id or directory) instead of videos (see import-minari)"""
    progress: bool = True
    """show a progress bar"""


@dataclass
class ImportSummary:
    """What one import wrote."""

    store: Path
    episodes: list[int]
    frames: int


def _run_env(out: Path) -> str | None:
    """The env of the run whose ``data/`` is ``out``, if ``out/../config.json`` names one."""
    cfg = out.parent / "config.json"
    if out.name != "data" or not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(data, dict):
        # {"kind": K, "config": {...}} (dreamlab.rundir), or an older {"kind": K, K: {...}} or a
        # flat V/M/C config
        kind = data.get("kind")
        inner = data.get("config", data.get(kind) if isinstance(kind, str) else None)
        data = inner if isinstance(inner, dict) else data
    env = data.get("env") if isinstance(data, dict) else None
    return env if isinstance(env, str) else None


def _store_meta(cfg: VideoImportConfig) -> tuple[StoreMeta | None, int]:
    """(meta for a new store or None when the store exists, frame size)."""
    if (cfg.out / STORE_FILE).exists():
        try:
            store = EpisodeStore.open(cfg.out)
        except StoreError as e:
            raise ValueError(str(e)) from None
        shape = store.meta.obs_shape
        if shape is None or len(shape) != 3 or shape[0] != shape[1]:
            raise ValueError(f"{cfg.out}: the store holds no square frames (obs_shape {shape})")
        if cfg.size is not None and cfg.size != shape[0]:
            raise ValueError(
                f"{cfg.out}: the store holds {shape[0]}x{shape[0]} frames, not --size {cfg.size}"
            )
        if cfg.action_space is not None:
            wanted = parse_action_space(cfg.action_space)
            if json.dumps(wanted) != json.dumps(store.meta.action_space):
                raise ValueError(
                    f"{cfg.out}: the store's action space is {store.meta.action_space}, not "
                    f"{cfg.action_space!r}"
                )
        return None, int(shape[0])
    env = cfg.env or (None if cfg.action_space else _run_env(cfg.out))
    if env is not None:
        from dreamlab.envs import make_env
        from dreamlab.envs.presets import preset_to_dict, resolve_preset

        preset = resolve_preset(env)
        made = make_env(preset.env_id, preset)
        try:
            shape = tuple(made.observation_space.shape or ())
            space = describe_space(made.action_space)
        finally:
            made.close()
        size = int(shape[0])
        if cfg.size is not None and cfg.size != size:
            raise ValueError(f"--size {cfg.size}: env {env!r} makes {size}x{size} frames")
        meta = StoreMeta.for_env(
            preset.env_id, (size, size, 3), space, preset=preset_to_dict(preset)
        )
    elif cfg.action_space is not None:
        size = cfg.size or 64
        meta = StoreMeta.for_env(
            cfg.env_id or "recorded", (size, size, 3), parse_action_space(cfg.action_space)
        )
    else:
        raise ValueError(
            f"{cfg.out}: a new store needs the action space: pass --env ID or --action-space "
            "(e.g. discrete:3 or box:-1,0,0:1,1,1)"
        )
    if size <= 0:
        raise ValueError(f"--size must be > 0, got {size}")
    meta.extra["import"] = {"kind": "video", "resize": cfg.resize}
    return meta, size


def _decode(source: Path, size: int, resize: str, bar: Any) -> tuple[np.ndarray, str]:
    frames = []
    native = ""
    for frame, _ in read_frames(source):
        if not native:
            native = f"{frame.shape[1]}x{frame.shape[0]}"
        frames.append(resize_frame(frame, size, resize))  # type: ignore[arg-type]
        bar.update(1)
    return np.stack(frames), native  # (N, S, S, 3)


def import_videos(cfg: VideoImportConfig) -> ImportSummary:
    """Decode videos / image directories, align them with their action logs, store episodes.

    Returns:
        The store path, the indices written and the number of frames.

    Raises:
        ValueError: naming the file (and row or frame) that is wrong; the store is left as it
            was before the import.
    """
    if not cfg.sources:
        raise ValueError("import: give at least one video file or image directory")
    if len(cfg.actions) != len(cfg.sources):
        raise ValueError(
            f"import: {len(cfg.sources)} source(s) but {len(cfg.actions)} action log(s); pass one "
            "--actions file per video, in the same order"
        )
    for source in cfg.sources:
        if not source.exists():
            raise ValueError(f"{source}: no such video file or image directory")
    if cfg.fps is not None and cfg.fps <= 0:
        raise ValueError(f"--fps must be > 0, got {cfg.fps}")
    logs = [read_action_log(p) for p in cfg.actions]  # every log parsed before any decoding
    meta, size = _store_meta(cfg)
    created = meta is not None
    out_existed = cfg.out.exists()
    written: list[Path] = []
    store: EpisodeStore | None = None
    indices: list[int] = []
    frames_total = 0
    bar = tqdm(total=None, unit="frame", desc="import", disable=not cfg.progress)
    try:
        store = (
            EpisodeStore.create(cfg.out, meta) if meta is not None else EpisodeStore.open(cfg.out)
        )
        for source, log in zip(cfg.sources, logs, strict=True):
            bar.set_postfix_str(source.name)
            frames, native = _decode(source, size, cfg.resize, bar)
            fps = cfg.fps or video_fps(source)
            steps = align_actions(
                log,
                len(frames),
                store.meta.action_space,
                fps=fps,
                max_hold=cfg.max_hold,
                end=cfg.end,
            )
            info = {
                "source": str(source),
                "actions": str(log.path),
                "native_size": native,
                "resize": cfg.resize,
            }
            if fps is not None:
                info["fps"] = f"{fps:g}"
            try:
                path = store.append({"obs": frames, **steps}, info=info)
            except StoreError as e:
                raise ValueError(f"{source}: {e}") from None
            written.append(path)
            indices.append(int(path.name[3 : -len(".safetensors")]))
            frames_total += len(frames)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created:
            (cfg.out / STORE_FILE).unlink(missing_ok=True)
            episodes = cfg.out / "episodes"
            if episodes.is_dir() and not any(episodes.iterdir()):
                episodes.rmdir()
            if not out_existed and cfg.out.is_dir() and not any(cfg.out.iterdir()):
                shutil.rmtree(cfg.out)
        raise
    finally:
        bar.close()
    return ImportSummary(store=cfg.out, episodes=indices, frames=frames_total)


def import_command(cfg: VideoImportConfig) -> ImportSummary:
    """``dreamlab import``: videos / image directories (or a Minari dataset) -> episode store."""
    if cfg.minari is not None:
        from dreamlab.data.minari_io import import_minari

        if cfg.sources:
            raise ValueError("import: give videos or --minari, not both")
        before = (
            set(EpisodeStore.open(cfg.out).indices) if (cfg.out / STORE_FILE).exists() else set()
        )
        try:
            store = import_minari(cfg.minari, cfg.out)
        except StoreError as e:
            raise ValueError(str(e)) from None
        new = sorted(set(store.indices) - before)
        summary = ImportSummary(
            cfg.out, new, int(sum(store.lengths[store.indices.index(i)] + 1 for i in new))
        )
    else:
        try:
            summary = import_videos(cfg)
        except StoreError as e:
            raise ValueError(str(e)) from None
    print(
        f"imported {len(summary.episodes)} episode(s), {summary.frames} frames -> {summary.store}"
    )
    return summary


# ------------------------------------------------------------------------------ export
def export_episodes(
    store: EpisodeStore | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    indices: Sequence[int] | None = None,
    *,
    fmt: Literal["mp4", "gif"] = "mp4",
    fps: float = 15.0,
    scale: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write episodes of a store as videos ``OUT/episode_000042.mp4`` (or ``.gif``).

    Args:
        store: the store (or its directory).
        out_dir: directory for the videos (created).
        indices: episodes to write; None = every episode.
        fmt: ``mp4`` (H.264) or ``gif``.
        fps: frames per second.
        scale: integer enlargement (default: short side >= 256 px, see ``viz.write_video``).
        progress: show a progress bar.

    Returns:
        The paths written.

    Raises:
        ValueError: an index not in the store, or a store without frames.
    """
    from dreamlab.viz import write_video

    st = store if isinstance(store, EpisodeStore) else EpisodeStore.open(store)
    if "obs" not in st.meta.schema:
        raise ValueError(f"{st.path}: the store holds no frames ('obs'), kind {st.meta.kind!r}")
    chosen = list(st.indices) if indices is None else [int(i) for i in indices]
    absent = [i for i in chosen if i not in st]
    if absent:
        raise ValueError(
            f"{st.path}: no episode(s) {absent}; the store holds {len(st)} episodes "
            f"({st.indices[:5]}{' ...' if len(st) > 5 else ''})"
        )
    out = Path(out_dir)
    paths = []
    for i in tqdm(chosen, desc="export", unit="episode", disable=not progress):
        path = out / f"episode_{i:06d}.{fmt}"
        write_video(path, np.asarray(st.episode(i)["obs"]), fps=fps, scale=scale)
        paths.append(path)
    return paths
