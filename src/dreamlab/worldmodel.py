"""The ``WorldModel`` protocol every dream runs on (each generation implements it).

A world model carries its recurrent state explicitly as a dict of batch-first tensors, so the
same object serves thousands of parallel dreams and an agent acting in the real environment:

- real env: ``observe -> features -> act -> step`` (step only advances memory);
- dream:    ``features -> act -> step`` (step also imagines the next observation).

A controller therefore cannot tell reality from a dream. Other model families (RSSM, diffusion,
token transformers) implement the same five methods and plug into ``dreamlab.dream`` unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

State = dict[str, torch.Tensor]
"""Recurrent state of a batch of dreams: named tensors, each with the batch as first axis."""

StartLatents = dict[str, torch.Tensor]
"""A bank of N real start points, each tensor ``(N, ...)``; a dream begins from one row."""


@runtime_checkable
class WorldModel(Protocol):
    """What a dream needs from a world model. All tensors are batch-first.

    ``action`` given to :meth:`step` is the env action in tensor form: float ``(B, A)`` for
    boxes, or int64 indices ``(B,)`` for discrete spaces (the model encodes them itself, e.g.
    one-hot). ``action_dim`` is the size of that encoded action.
    """

    feature_dim: int
    action_dim: int

    @property
    def device(self) -> torch.device:
        """Where the model and its state tensors live."""
        ...

    def initial_state(self, batch_size: int) -> State:
        """Empty memory for ``batch_size`` dreams."""
        ...

    def observe(self, state: State, frames: torch.Tensor) -> State:
        """Put real frames ``(B, 3, H, W)`` in ``[0, 1]`` into the state."""
        ...

    def step(
        self,
        state: State,
        action: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        """Imagine one step: ``(next state, reward (B,) float32, terminated (B,) bool)``."""
        ...

    def decode(self, state: State) -> torch.Tensor:
        """What the model "sees": frames ``(B, 3, H, W)`` in ``[0, 1]``."""
        ...

    def features(self, state: State) -> torch.Tensor:
        """Controller input ``(B, F)``."""
        ...

    def start_state(self, start: StartLatents, generator: torch.Generator | None = None) -> State:
        """A state for B dreams beginning at B rows of a start bank (each tensor ``(B, ...)``)."""
        ...


def select_state(mask: torch.Tensor, new: State, old: State) -> State:
    """Per-dream choice between two states: row i from ``new`` where ``mask[i]``, else ``old``.

    Args:
        mask: ``(B,)`` bool.
        new: state with batch B.
        old: state with batch B and the same keys.
    """
    out: State = {}
    for key, old_value in old.items():
        m = mask.view(-1, *([1] * (old_value.dim() - 1)))  # (B, 1, ...)
        out[key] = torch.where(m, new[key], old_value)
    return out


def index_state(state: State, index: torch.Tensor) -> State:
    """Rows ``index`` of every tensor of ``state``."""
    return {key: value[index] for key, value in state.items()}


@dataclass
class ActionSpec:
    """The env's action space in the few numbers a world model and a controller need."""

    kind: Literal["discrete", "continuous"]
    """'discrete' (Gymnasium Discrete, fed one-hot) or 'continuous' (a 1-D Box)"""
    n: int
    """number of choices (discrete) or size of the action vector (continuous)"""
    low: list[float] = field(default_factory=list)
    """per-dimension lower bound (continuous only)"""
    high: list[float] = field(default_factory=list)
    """per-dimension upper bound (continuous only)"""

    @classmethod
    def from_space(cls, space: Any) -> ActionSpec:
        """Read a gymnasium-like space: ``Discrete`` (has ``.n``) or a 1-D ``Box``."""
        if isinstance(space, ActionSpec):
            return space
        if hasattr(space, "n"):
            return cls("discrete", int(space.n))
        shape = tuple(getattr(space, "shape", ()) or ())
        if len(shape) != 1 or not hasattr(space, "low"):
            raise ValueError(
                f"action space {space!r}: expected Discrete(n) or a 1-D Box for a world model"
            )
        low = [float(v) for v in np.asarray(space.low).ravel()]
        high = [float(v) for v in np.asarray(space.high).ravel()]
        return cls("continuous", shape[0], low, high)

    def to_space(self) -> Any:
        """The matching gymnasium space."""
        import gymnasium as gym

        if self.kind == "discrete":
            return gym.spaces.Discrete(self.n)
        return gym.spaces.Box(
            np.asarray(self.low, np.float32), np.asarray(self.high, np.float32), dtype=np.float32
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def thin_bank(bank: dict[str, Any], max_rows: int | None) -> dict[str, Any]:
    """At most ``max_rows`` rows of every array of a start bank, evenly spaced."""
    n = len(next(iter(bank.values())))
    if max_rows is None or n <= max_rows:
        return bank
    keep = np.linspace(0, n - 1, max_rows).round().astype(np.int64)
    return {key: value[keep] for key, value in bank.items()}


def check_start_latents(start: StartLatents) -> int:
    """Validate a start bank (non-empty, every tensor with the same number of rows N); return N."""
    if not start:
        raise ValueError("start latents: empty mapping; expected e.g. {'mu': (N, Z), ...}")
    sizes = {key: int(value.shape[0]) for key, value in start.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"start latents: every tensor needs the same number of rows, got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("start latents: zero rows; need at least one start point")
    if any(not torch.isfinite(v).all() for v in start.values() if v.is_floating_point()):
        raise ValueError("start latents: contain NaN or inf")
    return n


__all__ = [
    "ActionSpec",
    "StartLatents",
    "State",
    "WorldModel",
    "check_start_latents",
    "index_state",
    "select_state",
    "thin_bank",
]
