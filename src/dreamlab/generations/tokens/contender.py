"""Generation 4 as a ``dreamlab compare-models`` contender."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dreamlab.generations.tokens.config import token_preset
from dreamlab.generations.tokens.train import train_tokens

__all__ = ["build_contender"]


def build_contender(ctx: Any) -> Any:
    """Generation 4 for ``dreamlab compare-models``: train (resumably) in ``ctx.out``."""
    from dreamlab.eval.contender import Contender

    cfg = dataclasses.replace(
        token_preset("tiny"), env=ctx.env, env_kwargs=dict(ctx.env_kwargs), seed=ctx.seed
    )
    if ctx.scale != 1.0:
        cfg = cfg.scaled(ctx.scale)
    store_path = Path(ctx.data.path) if hasattr(ctx.data, "path") else Path(ctx.data)
    run = train_tokens(cfg, ctx.out, data=store_path, progress=ctx.progress, evaluate=False)
    assert run.agent is not None
    wm = run.world_model
    return Contender(
        name="tokens (VQ + transformer) + actor-critic",
        generation=4,
        world_model=wm,
        policy=run.agent,
        dream_policy=run.agent.dream_policy,
        dream_start=run.bank,
        params_world_model=sum(p.numel() for p in wm.tokenizer.parameters())
        + sum(p.numel() for p in wm.transformer.parameters()),
        params_agent=sum(p.numel() for p in run.agent.actor_critic.parameters()),
        train_seconds=run.seconds,
        notes={"tokens_per_frame": wm.n_tokens, "context_steps": wm.window},
    )
