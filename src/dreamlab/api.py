"""dreamlab from Python, the same for every generation: make or resume a run, load its world
model, load an agent. ``import dreamlab`` gives these names (``dreamlab.run_pipeline``, ...)
without importing torch until one is called.

    import dreamlab
    run = dreamlab.run_pipeline("runs/x", preset="catch")        # or env=..., data=...
    world_model = dreamlab.load_world_model(run)                  # a WorldModel, any generation
    agent = dreamlab.load_agent(run)                              # predict(obs, state, start)
    action, state = agent.predict(obs, None, episode_start=None)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from dreamlab.commands import run_pipeline as _run_pipeline
from dreamlab.generations import for_run
from dreamlab.generations.args import PipelineConfig
from dreamlab.worldmodel import WorldModel

__all__ = ["load_agent", "load_world_model", "run_pipeline"]


def run_pipeline(
    run: str | os.PathLike[str],
    preset: str | None = None,
    *,
    env: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    data: str | os.PathLike[str] | None = None,
    generation: Literal["vmc", "rssm", "diffusion", "tokens"] | None = None,
    scale: float | None = None,
    seed: int | None = None,
    until: str | None = None,
    iterations: int | None = None,
    progress: bool = True,
) -> Path:
    """Run or resume every stage of the run at ``run`` and return its directory, for every
    generation: a new run from ``preset`` (its generation's; ``catch`` when nothing is given),
    or a run of ``generation`` (V/M/C by default) sized from ``env`` (a Gymnasium id or
    ``pkg.module:Class``, whose module this call trusts) or from the episode store ``data``,
    every training budget times ``scale``; an existing run resumes with its own settings.

    Raises:
        RunError: what ``dreamlab pipeline`` refuses, as one sentence (docs/pipeline.md).
    """
    cfg = PipelineConfig(
        run=Path(run),
        preset=preset,
        env=env,
        env_kwargs=None if env_kwargs is None else json.dumps(env_kwargs),
        data=None if data is None else Path(data),
        generation=generation,
        scale=scale,
        seed=seed,
        until=until,
        iterations=iterations,
        progress=progress,
    )
    _run_pipeline(cfg)
    return Path(run)


def load_world_model(run: str | os.PathLike[str], device: str = "cpu") -> WorldModel:
    """The trained world model of the run at ``run`` (any generation) on ``device``: a
    :class:`~dreamlab.worldmodel.WorldModel` that dreams (``DreamEnv``, the planner, futures).

    Raises:
        RunError: no run there, or its world model is not trained yet.
    """
    path = Path(run)
    world_model = for_run(path).load_world_model(path, device)
    assert isinstance(world_model, WorldModel)
    return world_model


def load_agent(run: str | os.PathLike[str], name: str | None = None, device: str = "cpu") -> Any:
    """An agent of the run at ``run`` with an SB3-shaped ``predict(obs, state, episode_start)``
    that acts on real frames: the one the run trained in its dream (``name=None`` or
    ``"controller"``), ``"planner"`` (CEM/MPPI with default settings in the run's world model) or
    ``"random"``, for every generation; a V/M/C run also has the other agents ``dreamlab
    evaluate --agent`` names (``controller_round0``, ``controller_vonly``, ``bc``, ...), loaded
    on the CPU.

    Raises:
        RunError: no run there, an agent it does not have, or one not trained yet.
    """
    path = Path(run)
    generation = for_run(path)
    if name in ("random", "planner") and generation.kind != "vmc":
        from dreamlab.envs.policies import make_policy
        from dreamlab.plan.mpc import PlannerAgent
        from dreamlab.rundir import read_run_config, run_action_space

        found = read_run_config(path)
        assert found is not None  # for_run found the run
        config = found[1]
        space = run_action_space(path, config.get("env"), dict(config.get("env_kwargs") or {}))
        if name == "random":
            return make_policy("random", space, seed=0)
        return PlannerAgent(load_world_model(path, device), space)
    return generation.load_agent(path, device, name)
