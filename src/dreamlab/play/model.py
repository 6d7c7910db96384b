"""Find what a run dreams with: its world model, action space, env and real start frames.

Everything downstream (the play server, dream export) talks to the world model only through the
``WorldModel`` protocol (``initial_state``, ``observe``, ``step``, ``decode``), so every
generation plays: the run's recorded kind picks its generation in the registry
(:mod:`dreamlab.generations`), whose ``load_world_model`` gives the model; the env and its
action space come from the run's config and its episode store's metadata.

Dreams start from a real frame: ``observe(initial_state(1), frame)``, with the frame taken from
the real env's reset (when the real env is shown beside the dream, so both start alike) or from
the first frames of the run's episodes. That needs no model-specific start bank. Loading only
reads the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.worldmodel import WorldModel

__all__ = ["PlayModel", "load_play_model", "model_frame_shape"]


@dataclass
class PlayModel:
    """A world model ready to be played, and what it needs around it."""

    world_model: WorldModel
    """any model behind the WorldModel protocol"""
    action_space: Any
    """the env's Gymnasium action space (Discrete or 1-D Box)"""
    start_frames: np.ndarray
    """real frames dreams may start from, uint8 (N, H, W, 3)"""
    env_id: str | None = None
    """env for the real view beside the dream (None: no real view)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """constructor keywords of that env"""
    name: str = "world model"
    """shown on the page, e.g. 'V+M (runs/demo)'"""
    max_episode_steps: int = 1000
    """a dream is truncated after this many steps"""

    def make_real_env(self) -> Any:
        """A fresh real env (frames of the model's size), or None when the run names none."""
        if self.env_id is None:
            return None
        from dreamlab.envs import make_env

        return make_env(self.env_id, **self.env_kwargs)


def model_frame_shape(world_model: WorldModel) -> tuple[int, int]:
    """``(H, W)`` of the frames a world model decodes (and so observes)."""
    with torch.inference_mode():
        frames = world_model.decode(world_model.initial_state(1))  # (1, 3, H, W)
    return int(frames.shape[-2]), int(frames.shape[-1])


def _first_frames(run: Path, max_starts: int) -> np.ndarray | None:
    """First frames of up to ``max_starts`` episodes of ``RUN/data`` (evenly spaced)."""
    from dreamlab.data.store import STORE_FILE, EpisodeStore

    if not (run / "data" / STORE_FILE).is_file():
        return None
    store = EpisodeStore.open(run / "data")
    indices = list(store.indices)
    if not indices or "obs" not in store.meta.schema:
        return None
    if len(indices) > max_starts:
        keep = np.linspace(0, len(indices) - 1, max_starts).round().astype(np.int64)
        indices = [indices[i] for i in keep]
    frames = []
    for i in indices:
        with store.reader(i) as reader:
            frames.append(reader.read_rows("obs", np.array([0]))[0])
    return np.stack(frames)  # (N, H, W, 3)


def _env_frames(env_id: str, env_kwargs: dict[str, Any], count: int) -> np.ndarray:
    from dreamlab.envs import make_env

    env = make_env(env_id, **env_kwargs)
    try:
        return np.stack([env.reset(seed=s)[0] for s in range(count)])  # (count, H, W, 3)
    finally:
        env.close()


SHORT_NAMES = {"vmc": "V+M", "rssm": "RSSM", "diffusion": "Diffusion", "tokens": "Tokens"}
"""how the page names each generation's world model"""


def load_play_model(run: str | Path, *, device: str = "cpu", max_starts: int = 64) -> PlayModel:
    """Load the world model of a run directory for playing.

    Args:
        run: run directory of any generation with a trained world model.
        device: torch device of the model.
        max_starts: at most this many real start frames are kept.

    Raises:
        ValueError: not a run directory, no trained world model, or start frames of another size
            than the model's.
    """
    from dreamlab.generations import for_run
    from dreamlab.rundir import read_run_config, run_action_space

    path = Path(run)
    found = read_run_config(path)
    if found is None:
        raise ValueError(f"{path}: not a run directory (no config.json)")
    generation = for_run(path)
    config = found[1]
    env_id = config.get("env")
    env_kwargs = dict(config.get("env_kwargs") or {})
    model = PlayModel(
        world_model=generation.load_world_model(path, device),
        action_space=run_action_space(path, env_id, env_kwargs),
        start_frames=np.zeros((0, 1, 1, 3), np.uint8),
        env_id=None if env_id is None else str(env_id),
        env_kwargs=env_kwargs,
        name=f"{SHORT_NAMES.get(generation.kind, generation.kind)} ({run})",
        max_episode_steps=int(
            (config.get("evolve") or {}).get("max_episode_steps", config.get("max_steps", 1000))
        ),
    )
    height, width = model_frame_shape(model.world_model)
    frames = _first_frames(path, max_starts)
    if frames is None and model.env_id is not None:
        frames = _env_frames(model.env_id, model.env_kwargs, min(8, max_starts))
    if frames is None or len(frames) == 0:
        raise ValueError(f"{path}: no episodes in data/ and no env to start dreams from")
    if frames.shape[1:3] != (height, width):
        raise ValueError(
            f"{path}: start frames are {frames.shape[2]}x{frames.shape[1]}, the world model "
            f"decodes {width}x{height}"
        )
    model.start_frames = frames
    return model
