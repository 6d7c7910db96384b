"""A trained BC network as a policy, and the facts kept beside it (``bc.json``).

:class:`~dreamlab.agent.BCPolicy` (re-exported here) is the policy, with the Stable-Baselines3
``predict`` shape; it lives with the other agents that act on real frames (:mod:`dreamlab.agent`)
so that V/M/C's ``evaluate`` loads ``bc`` and ``bc_latent`` itself, without a registry. ``bc.json`` records what a
BC network was trained on (demos, the world model run whose features it reads, frames).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamlab.agent import BC_SOURCE_FILE as SOURCE_FILE
from dreamlab.agent import BCPolicy
from dreamlab.io import atomic_write_json, read_json

__all__ = ["SOURCE_FILE", "BCPolicy", "read_source", "write_source"]


def read_source(bc_dir: str | Path) -> dict[str, Any]:
    """``bc.json`` of a BC directory (empty when absent)."""
    path = Path(bc_dir) / SOURCE_FILE
    return dict(read_json(path, "BC source")) if path.exists() else {}


def write_source(bc_dir: str | Path, source: dict[str, Any]) -> None:
    atomic_write_json(Path(bc_dir) / SOURCE_FILE, source)
