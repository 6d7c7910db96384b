"""Generation 3 in ``dreamlab compare-models``: the diffusion world model and the Q-agent trained
in its dream, on the comparison's episodes."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from dreamlab.generations.diffusion.train import (
    TrainDiffusionConfig,
    fit_world_model,
    train_agent,
)
from dreamlab.generations.diffusion.worldmodel import diffusion_start_states
from dreamlab.models.diffusion import parameter_counts
from dreamlab.rundir import store_action_space
from dreamlab.worldmodel import ActionSpec

__all__ = ["build_contender"]


def build_contender(ctx: Any) -> Any:
    """Generation 3 for ``dreamlab compare-models``: the diffusion world model and the Q-agent
    trained in its dream, on ``ctx.data``, resumably in ``ctx.out``; ``ctx.scale`` scales the
    world-model steps, the dream rounds, the dreams and the gradient steps."""
    from dreamlab.eval.contender import Contender

    t0 = time.perf_counter()
    scale = float(ctx.scale)
    if scale <= 0:
        raise ValueError(f"build_contender: scale must be > 0, got {scale}")
    spec = ActionSpec.from_space(store_action_space(ctx.data))
    if spec.kind != "discrete":
        raise ValueError(
            "diffusion contender: the dream-trained agent needs a Discrete action space, got "
            f"{spec.kind}({spec.n})"
        )
    out = Path(ctx.out)
    defaults = TrainDiffusionConfig()
    wm, fit_res = fit_world_model(
        ctx.data,
        spec,
        out / "world_model",
        preset="tiny",
        steps=max(2, round(defaults.steps * scale)),
        batch_size=defaults.batch_size,
        lr=defaults.lr,
        seed=ctx.seed,
        progress=ctx.progress,
    )
    a = defaults.agent
    acfg = dataclasses.replace(
        a,
        rounds=max(1, round(a.rounds * scale)),
        num_dreams=max(8, round(a.num_dreams * min(1.0, 5 * scale))),
        dream_steps=max(4, round(a.dream_steps * min(1.0, 5 * scale))),
        updates_per_round=max(1, round(a.updates_per_round * scale)),
        eps_decay_rounds=max(1, round(a.eps_decay_rounds * scale)),
        seed=ctx.seed,
        progress=ctx.progress,
    )
    agent, agent_res = train_agent(wm, ctx.data, spec, acfg, out / "agent")
    counts = parameter_counts(wm.model)
    start = diffusion_start_states(wm, ctx.data, frames="first")
    return Contender(
        name="diffusion (EDM, DIAMOND-style) + Q-learning in the dream",
        generation=3,
        world_model=wm,
        policy=agent,
        dream_policy=agent.act,
        dream_start=start,
        params_world_model=counts["total"],
        params_agent=sum(p.numel() for p in agent.qnet.parameters()),
        train_seconds=fit_res.seconds + agent_res.seconds,
        notes={
            "sampler": wm.model.config.sampler,
            "denoising_steps": wm.model.config.num_steps,
            "world_model_steps": fit_res.step,
            "agent_rounds": agent_res.rounds,
            "agent_transitions": agent_res.transitions,
            "build_seconds_this_call": time.perf_counter() - t0,
        },
    )
