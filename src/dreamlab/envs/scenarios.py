"""Scenario words of Catch, read from pixels: the prompt vocabulary of the token world model.

Each ball of an episode is one scenario. Its words come from the frames alone (through
:func:`dreamlab.envs.catch.locate_objects`), so they label any stored Catch episode and score
imagined ones the same way:

- ``fast`` / ``slow``: the ball's horizontal speed ``|vx|`` (median of ``|dx|`` over its first
  transitions) above / at most ``speed_threshold`` px/step (half the env's maximum by default,
  so each word has probability 1/2 under the env's uniform draw);
- ``from-left`` / ``from-right``: where it enters, left or right of the field's centre line.

A prompt is a set of words encoded as a bit mask (bit i = ``CATCH_WORDS[i]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dreamlab.envs.catch import CatchConfig, locate_objects

__all__ = [
    "CATCH_WORDS",
    "BallScenario",
    "ball_scenarios",
    "parse_prompt",
    "prompt_mask",
    "scenario_masks",
]

CATCH_WORDS: tuple[str, ...] = ("fast", "slow", "from-left", "from-right")
"""prompt vocabulary of Catch, in bit order"""


@dataclass
class BallScenario:
    """One ball as seen in a sequence of frames."""

    start: int
    """index of the frame where the ball enters (0 = already in flight at the first frame)"""
    end: int
    """index one past its last frame"""
    entry_x: float
    """ball centroid column in its first frame (pixels)"""
    speed: float
    """median |dx| over its first transitions (px/step); NaN with fewer than 2 sightings"""
    words: tuple[str, ...]
    """its scenario words"""


def parse_prompt(prompt: str | Sequence[str] | None, vocabulary: Sequence[str]) -> list[str]:
    """Split ``"fast from-left"`` (or take a list) and check every word is in ``vocabulary``.

    Raises:
        ValueError: naming the unknown words and listing the vocabulary.
    """
    if prompt is None:
        return []
    words = prompt.replace(",", " ").split() if isinstance(prompt, str) else list(prompt)
    unknown = [w for w in words if w not in vocabulary]
    if unknown:
        known = ", ".join(vocabulary) if vocabulary else "(none: this model has no prompts)"
        raise ValueError(f"unknown prompt word(s) {unknown}; the vocabulary is: {known}")
    return words


def prompt_mask(words: Sequence[str], vocabulary: Sequence[str]) -> int:
    """Bit mask of ``words`` (each must be in ``vocabulary``)."""
    return sum(1 << list(vocabulary).index(w) for w in parse_prompt(list(words), vocabulary))


def ball_scenarios(
    frames: np.ndarray,
    config: CatchConfig | None = None,
    speed_threshold: float | None = None,
    speed_frames: int = 4,
) -> list[BallScenario]:
    """The balls of a frame sequence ``(T, S, S, 3)`` and their scenario words.

    A new ball starts at the first frame and wherever the ball is seen clearly higher (4 px)
    than at its previous sighting (balls only fall, so a jump up is a new entry).

    Args:
        frames: real or imagined frames, uint8 or float in [0, 1].
        config: the env's geometry (default ``CatchConfig(frame_size=S)``).
        speed_threshold: ``fast`` above this |vx| (default ``ball_speed_x / 2``).
        speed_frames: transitions from the entry used to measure the speed.
    """
    frames = np.asarray(frames)
    size = frames.shape[-2]
    c = config if config is not None else CatchConfig(frame_size=size, paddle_width=size * 3 // 16)
    threshold = c.ball_speed_x / 2 if speed_threshold is None else speed_threshold
    loc = locate_objects(frames, c)
    xs, ys, seen = loc["ball_x"], loc["ball_y"], loc["ball_visible"]
    starts = [0]
    last_y = None
    for t in range(len(frames)):
        if not seen[t]:
            continue
        if last_y is not None and ys[t] < last_y - 4.0:
            starts.append(t)
        last_y = ys[t]
    bounds = [*starts, len(frames)]
    centre = (size - 1) / 2.0
    out = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        vis = [t for t in range(s, e) if seen[t]]
        if not vis:
            continue
        first = vis[0]
        window = [t for t in vis if t <= first + speed_frames]
        dx = [abs(xs[b] - xs[a]) / (b - a) for a, b in zip(window[:-1], window[1:], strict=True)]
        speed = float(np.median(dx)) if dx else float("nan")
        words = []
        if dx:
            words.append("fast" if speed > threshold else "slow")
        words.append("from-left" if xs[first] < centre else "from-right")
        out.append(BallScenario(s, e, float(xs[first]), speed, tuple(words)))
    return out


def scenario_masks(frames: np.ndarray, config: CatchConfig | None = None) -> np.ndarray:
    """Per-frame prompt bit masks ``(T,)`` int64: the words of the ball in flight."""
    masks = np.zeros(len(frames), np.int64)
    for ball in ball_scenarios(frames, config):
        masks[ball.start : ball.end] = prompt_mask(ball.words, CATCH_WORDS)
    return masks
