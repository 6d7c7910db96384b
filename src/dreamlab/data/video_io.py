"""Recorded episodes in and out: videos and image directories -> episode store -> mp4/GIF.

Import (``dreamlab import``): every source (a video file, or a directory of image files) becomes
one episode. Its frames are decoded, resized to the store's frame size and paired with an
*action log* (CSV or JSON) whose rows are keyed by frame index or by timestamp:

- a video of ``N`` frames is an episode of ``T = N - 1`` steps: the action of step ``t`` is the
  one taken at frame ``t`` and leads to frame ``t + 1`` (the last frame is the final observation);
- keyed by ``frame``: every frame ``0 .. N-2`` needs exactly one row (a row for the last frame is
  allowed and ignored, since no step follows it);
- keyed by ``time`` (seconds): a row applies from the frame nearest its time until the next row
  (sample and hold, as control logs are written); a gap longer than ``max_hold`` seconds, a log
  that starts after the first frame or runs past the video is an error (usually a wrong
  ``--fps``). Rewards of all rows falling on a frame are summed into that step.

Nothing is half-written: each episode file is written atomically, and when any source fails the
episodes this import already wrote (and the store itself, if this import created it) are removed.

Export: :func:`export_episodes` writes episodes of a store as ``.mp4`` or ``.gif`` files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import tyro
from PIL import Image

from dreamlab.data.store import (
    STORE_FILE,
    EpisodeStore,
    StoreError,
    StoreMeta,
    describe_space,
)
from dreamlab.progress import tqdm

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "ActionLog",
    "ImportSummary",
    "VideoImportConfig",
    "align_actions",
    "export_episodes",
    "import_command",
    "import_videos",
    "parse_action_space",
    "read_action_log",
    "read_frames",
    "resize_frame",
]

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".gif")
"""File extensions read as videos (through imageio: ffmpeg, or pillow for GIF)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
"""File extensions of the frames of an image directory."""

_FRAME_KEYS = ("frame", "frame_index", "step")
_TIME_KEYS = ("time", "timestamp", "t")
_ACTION_COLUMN = re.compile(r"^action_(\d+)$")


# ------------------------------------------------------------------------------ action spaces
def parse_action_space(text: str) -> dict[str, Any]:
    """Parse a short action-space description into the store's JSON form.

    Accepted: ``discrete:N``; ``box:N`` (bounds -1..1); ``box:LOW:HIGH`` with comma-separated
    per-dimension bounds, e.g. ``box:-1,0,0:1,1,1`` (CarRacing's steer, gas, brake).

    Raises:
        ValueError: the text is none of these.
    """
    parts = text.strip().lower().split(":")
    try:
        if parts[0] == "discrete" and len(parts) == 2 and int(parts[1]) > 0:
            return {"type": "Discrete", "n": int(parts[1]), "start": 0}
        if parts[0] == "box" and len(parts) == 2 and int(parts[1]) > 0:
            n = int(parts[1])
            low, high = [-1.0] * n, [1.0] * n
        elif parts[0] == "box" and len(parts) == 3:
            low = [float(v) for v in parts[1].split(",")]
            high = [float(v) for v in parts[2].split(",")]
        else:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"action space {text!r}: expected 'discrete:N', 'box:N' or 'box:LOW:HIGH' "
            "(e.g. box:-1,0,0:1,1,1)"
        ) from None
    if len(low) != len(high) or not low or any(lo > hi for lo, hi in zip(low, high, strict=True)):
        raise ValueError(
            f"action space {text!r}: LOW and HIGH need the same length and LOW <= HIGH"
        )
    return {"type": "Box", "shape": [len(low)], "low": low, "high": high, "dtype": "float32"}


# ------------------------------------------------------------------------------ action logs
@dataclass
class _Row:
    where: str
    """'FILE line 7' / 'FILE entry 3': names the row in errors"""
    key: float
    """frame index or time in seconds"""
    action: np.ndarray
    reward: float
    terminated: bool | None
    truncated: bool | None


@dataclass
class ActionLog:
    """The rows of one action log, keyed by frame index or by time."""

    path: Path
    by: Literal["frame", "time"]
    rows: list[_Row]


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} {value!r} is not a number") from None
    if not math.isfinite(out):
        raise ValueError(f"{where}: {name} {value!r} is not finite")
    return out


def _flag(value: Any, where: str, name: str) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "1.0"):
        return True
    if text in ("0", "false", "no", "0.0"):
        return False
    raise ValueError(f"{where}: {name} {value!r} is not a boolean (0/1/true/false)")


def _row_from_record(record: Mapping[str, Any], where: str, by: str) -> _Row:
    keys = _FRAME_KEYS if by == "frame" else _TIME_KEYS
    key_name = next(k for k in keys if k in record)
    key = _number(record[key_name], where, key_name)
    if "action" in record and record["action"] not in (None, ""):
        raw = record["action"]
        values = raw if isinstance(raw, list | tuple) else [raw]
    else:
        dims = sorted(
            (int(m.group(1)), name)
            for name in record
            if (m := _ACTION_COLUMN.match(name)) is not None
        )
        if not dims:
            raise ValueError(f"{where}: no 'action' (or action_0, action_1, ...) value")
        if [d for d, _ in dims] != list(range(len(dims))):
            raise ValueError(f"{where}: action columns must be action_0 .. action_{len(dims) - 1}")
        values = [record[name] for _, name in dims]
    action = np.array([_number(v, where, "action") for v in values], dtype=np.float64)
    reward_raw = record.get("reward")
    reward = 0.0 if reward_raw in (None, "") else _number(reward_raw, where, "reward")
    return _Row(
        where=where,
        key=key,
        action=action,
        reward=reward,
        terminated=_flag(record.get("terminated"), where, "terminated"),
        truncated=_flag(record.get("truncated"), where, "truncated"),
    )


def _key_kind(fields: Sequence[str], where: str) -> Literal["frame", "time"]:
    has_frame = any(k in fields for k in _FRAME_KEYS)
    has_time = any(k in fields for k in _TIME_KEYS)
    if has_frame == has_time:
        raise ValueError(
            f"{where}: needs exactly one of a frame column ({', '.join(_FRAME_KEYS)}) or a time "
            f"column ({', '.join(_TIME_KEYS)}), got fields {list(fields)}"
        )
    return "frame" if has_frame else "time"


def read_action_log(path: str | os.PathLike[str]) -> ActionLog:
    """Read an action log: a CSV with a header row, or JSON.

    Fields of a row: ``frame`` (index; or ``frame_index``/``step``) *or* ``time`` (seconds; or
    ``timestamp``/``t``), then ``action`` (a number, or a list in JSON) or ``action_0``,
    ``action_1``, ... for a vector, and optionally ``reward``, ``terminated``, ``truncated``.
    JSON is a list of such objects, or an object holding that list under ``"steps"``.

    Raises:
        ValueError: naming the file and the row that is wrong.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: action log not found")
    text = p.read_text(encoding="utf-8-sig")
    rows: list[_Row] = []
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            data = data.get("steps")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{p}: expected a list of row objects (or {{'steps': [...]}})")
        if not data:
            raise ValueError(f"{p}: the action log has no rows")
        by = _key_kind(list(data[0]), f"{p} entry 0")
        for i, record in enumerate(data):
            where = f"{p} entry {i}"
            _key_kind(list(record), where)
            rows.append(_row_from_record(record, where, by))
    elif p.suffix.lower() in (".csv", ".tsv", ".txt"):
        dialect = "excel-tab" if p.suffix.lower() == ".tsv" else "excel"
        reader = csv.DictReader(text.splitlines(), dialect=dialect)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if not fields:
            raise ValueError(f"{p}: empty CSV (expected a header row)")
        reader.fieldnames = fields
        by = _key_kind(fields, f"{p} header")
        for line, record in enumerate(reader, start=2):
            where = f"{p} line {line}"
            if None in record:
                raise ValueError(f"{where}: more values than header columns")
            rows.append(_row_from_record(record, where, by))
        if not rows:
            raise ValueError(f"{p}: the action log has no rows")
    else:
        raise ValueError(f"{p}: unknown action log format (expected .csv, .tsv or .json)")
    return ActionLog(path=p, by=by, rows=rows)


def _check_action(row: _Row, space: Mapping[str, Any]) -> np.ndarray:
    if space["type"] == "Discrete":
        n, start = int(space["n"]), int(space.get("start", 0))
        value = row.action
        if value.shape != (1,) or value[0] != round(value[0]):
            raise ValueError(f"{row.where}: action {value.tolist()} is not one integer")
        a = int(value[0])
        if not start <= a < start + n:
            raise ValueError(
                f"{row.where}: action {a} outside Discrete({n}) [{start}, {start + n})"
            )
        return np.array(a, dtype=np.int64)
    shape = tuple(space["shape"])
    size = int(np.prod(shape))
    if row.action.size != size:
        raise ValueError(
            f"{row.where}: action has {row.action.size} values, the action space needs {size}"
        )
    low = np.asarray(space["low"], dtype=np.float64)
    high = np.asarray(space["high"], dtype=np.float64)
    if np.any(row.action < low - 1e-6) or np.any(row.action > high + 1e-6):
        raise ValueError(
            f"{row.where}: action {row.action.tolist()} outside the bounds {low.tolist()} .. "
            f"{high.tolist()}"
        )
    return np.clip(row.action, low, high).astype(np.float32).reshape(shape)


def _rows_by_frame(log: ActionLog, num_frames: int) -> list[list[_Row]]:
    """For each frame 0..N-1, the rows that fall on it (by index)."""
    out: list[list[_Row]] = [[] for _ in range(num_frames)]
    for row in log.rows:
        if row.key != round(row.key) or row.key < 0:
            raise ValueError(f"{row.where}: frame {row.key:g} is not a frame index >= 0")
        k = int(row.key)
        if k >= num_frames:
            raise ValueError(
                f"{row.where}: frame {k} is past the video's last frame {num_frames - 1} "
                f"({num_frames} frames): misaligned action log"
            )
        if out[k]:
            raise ValueError(f"{row.where}: second row for frame {k} (first: {out[k][0].where})")
        out[k].append(row)
    for k in range(num_frames - 1):
        if not out[k]:
            raise ValueError(
                f"{log.path}: no action row for frame {k} (the video has {num_frames} frames, so "
                f"frames 0..{num_frames - 2} each need one)"
            )
    return out


def _rows_by_time(log: ActionLog, num_frames: int, fps: float, max_hold: float) -> list[list[_Row]]:
    """For each frame, the rows whose time is nearest to it; checks coverage and order."""
    out: list[list[_Row]] = [[] for _ in range(num_frames)]
    previous: _Row | None = None
    duration = (num_frames - 1) / fps
    for row in log.rows:
        if previous is not None and row.key < previous.key:
            raise ValueError(
                f"{row.where}: time {row.key:g} s is before the previous row's {previous.key:g} s "
                "(rows must be in time order)"
            )
        k = int(math.floor(row.key * fps + 0.5))
        if k < 0:
            raise ValueError(f"{row.where}: time {row.key:g} s is negative")
        if k >= num_frames:
            raise ValueError(
                f"{row.where}: time {row.key:g} s is past the video's end ({duration:.3f} s, "
                f"{num_frames} frames at {fps:g} fps): misaligned log or wrong --fps"
            )
        out[k].append(row)
        previous = row
    if not out[0]:
        first = log.rows[0]
        raise ValueError(
            f"{first.where}: the action log starts at {first.key:g} s, after the video's first "
            f"frame (0 s): no action for frame 0"
        )
    last_time = 0.0
    for k in range(num_frames - 1):
        if out[k]:
            last_time = k / fps
        elif k / fps - last_time > max_hold + 1e-9:
            raise ValueError(
                f"{log.path}: no action row between {last_time:.3f} s and {k / fps:.3f} s (frame "
                f"{k}); an action is held at most {max_hold:g} s (--max-hold): misaligned or "
                "incomplete log"
            )
    return out


def align_actions(
    log: ActionLog,
    num_frames: int,
    action_space: Mapping[str, Any],
    *,
    fps: float | None = None,
    max_hold: float = 1.0,
    end: Literal["truncated", "terminated"] = "truncated",
) -> dict[str, np.ndarray]:
    """Per-step arrays of an episode of ``num_frames`` frames from its action log.

    Args:
        log: the parsed action log.
        num_frames: frames of the episode (``T + 1``).
        action_space: the store's action space description.
        fps: frames per second (needed for a log keyed by time).
        max_hold: longest gap in seconds a time-keyed action is held before it is an error.
        end: the end flag of the last step when the log has no terminated/truncated column
            (a recording that simply stops is ``truncated``).

    Returns:
        ``action (T, ...)``, ``reward (T,)`` float32, ``terminated``/``truncated (T,)`` bool.

    Raises:
        ValueError: naming the log and the row: missing, duplicate, out-of-range or misaligned
            rows, bad actions, an end flag before the last step.
    """
    if num_frames < 2:
        raise ValueError(f"{log.path}: the episode has {num_frames} frame(s); it needs at least 2")
    if log.by == "frame":
        per_frame = _rows_by_frame(log, num_frames)
    else:
        if fps is None or fps <= 0:
            raise ValueError(
                f"{log.path}: the log is keyed by time, so the frame rate is needed (pass --fps)"
            )
        per_frame = _rows_by_time(log, num_frames, fps, max_hold)
    num_steps = num_frames - 1
    actions: list[np.ndarray] = []
    rewards = np.zeros(num_steps, dtype=np.float32)
    held: _Row | None = None
    end_row: _Row | None = None
    for t in range(num_steps):
        if per_frame[t]:
            held = per_frame[t][-1]
        assert held is not None  # frame 0 always has a row (checked above)
        actions.append(_check_action(held, action_space))
        rewards[t] = sum(r.reward for r in per_frame[t])
        for r in per_frame[t]:
            if r.terminated or r.truncated:
                if t < num_steps - 1:
                    flag = "terminated" if r.terminated else "truncated"
                    raise ValueError(
                        f"{r.where}: {flag} at frame {t}, but the video goes on to frame "
                        f"{num_frames - 1}; cut the video there or split it into episodes"
                    )
                end_row = r
    terminated = np.zeros(num_steps, dtype=bool)
    truncated = np.zeros(num_steps, dtype=bool)
    if end_row is not None:
        if end_row.terminated:
            terminated[-1] = True
        else:
            truncated[-1] = True
    elif end == "terminated":
        terminated[-1] = True
    else:
        truncated[-1] = True
    return {
        "action": np.stack(actions),
        "reward": rewards,
        "terminated": terminated,
        "truncated": truncated,
    }


# ------------------------------------------------------------------------------ frames
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


# ------------------------------------------------------------------------------ import
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
    if isinstance(data, dict) and isinstance(data.get("dreamer"), dict):
        data = data["dreamer"]
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
