"""A diffusion run directory: its settings, its world model and its agent, loaded.

``pipeline`` writes the run, ``report`` reads it; both come here to open it (so neither imports
the other).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dreamlab.checkpoint import has_model, load_model
from dreamlab.generations.diffusion.agent import DiffusionAgent
from dreamlab.generations.diffusion.train import KIND, TrainDiffusionConfig, run_store
from dreamlab.generations.diffusion.worldmodel import DiffusionWorldModel
from dreamlab.models.diffusion import DiffusionModel
from dreamlab.rundir import RunError, read_run_config_of, store_action_space

__all__ = ["episodes_path", "load_diffusion_agent", "load_diffusion_world_model", "run_config"]


def run_config(path: Path) -> TrainDiffusionConfig:
    """The :class:`TrainDiffusionConfig` of the diffusion run at ``path`` (``out`` set to it).

    Raises:
        RunError: no run at ``path``, or a run of another generation.
    """
    data = read_run_config_of(path, KIND, "diffusion")
    if data is None:
        raise RunError(f"{path}: no run here (no config.json)")
    cfg = TrainDiffusionConfig.from_json(data, str(path / "config.json"))
    return dataclasses.replace(cfg, out=path)


def episodes_path(path: Path) -> Path:
    """The episode store the run trains on: its ``--data``, else ``RUN/data``."""
    cfg = run_config(path)
    return Path(cfg.data) if cfg.data is not None else path / "data"


def load_diffusion_world_model(path: Path, device: str = "cpu") -> DiffusionWorldModel:
    """The run's trained diffusion world model (``RUN/world_model``)."""
    if not has_model(path / "world_model"):
        raise RunError(f"{path}: no trained world model yet; run `dreamlab pipeline --run {path}`")
    store = run_store(run_config(path), path)
    model = load_model(path / "world_model", DiffusionModel, device=device)
    assert isinstance(model, DiffusionModel)
    return DiffusionWorldModel(model, store_action_space(store))


def load_diffusion_agent(path: Path, device: str = "cpu") -> DiffusionAgent:
    """The run's dream-trained Q-agent (``RUN/agent``) over its world model."""
    if not has_model(path / "agent"):
        raise RunError(f"{path}: no trained agent yet; run `dreamlab pipeline --run {path}`")
    return DiffusionAgent.load(load_diffusion_world_model(path, device), path / "agent", device)
