"""Action logs of recorded episodes: parsing them and aligning their rows with the frames.

An action log (CSV or JSON) pairs a recording with the actions taken; its rows are keyed by frame
index or by timestamp:

- a video of ``N`` frames is an episode of ``T = N - 1`` steps: the action of step ``t`` is the
  one taken at frame ``t`` and leads to frame ``t + 1`` (the last frame is the final observation);
- keyed by ``frame``: every frame ``0 .. N-2`` needs exactly one row (a row for the last frame is
  allowed and ignored, since no step follows it);
- keyed by ``time`` (seconds): a row applies from the frame nearest its time until the next row
  (sample and hold, as control logs are written); a gap longer than ``max_hold`` seconds, a log
  that starts after the first frame or runs past the video is an error (usually a wrong
  ``--fps``). Rewards of all rows falling on a frame are summed into that step.

Action spaces given on the command line (``discrete:3``, ``box:-1,0,0:1,1,1``) are parsed by
:func:`parse_action_space` into the store's JSON description.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["ActionLog", "align_actions", "parse_action_space", "read_action_log"]

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
