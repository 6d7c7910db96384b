"""Generation 2's contender for ``dreamlab compare-models``: :func:`build_rssm`.

A :data:`~dreamlab.eval.contender.ContenderBuilder`: ``build(ctx) -> Contender``. The RSSM and its
actor-critic are trained by the Dreamer update (one world-model step and one imagination step) on
windows of ``ctx.data`` (the episodes every generation shares), offline: no new episodes are
collected. ``3000 * ctx.scale`` updates (the online ``catch-dreamer`` reaches 98 % with ~2,900),
checkpointed in ``ctx.out`` so a killed build resumes.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from dreamlab.data.store import EpisodeStore
from dreamlab.eval.contender import CompareContext, Contender, num_params
from dreamlab.generations.rssm.config import DreamerConfig
from dreamlab.generations.rssm.trainer import DreamerTrainer, Replay
from dreamlab.generations.rssm.worldmodel import rssm_start_states
from dreamlab.progress import tqdm
from dreamlab.rundir import RunError
from dreamlab.train.imagination import ImaginationConfig

__all__ = ["RSSM_UPDATES", "build_rssm", "train_rssm_offline"]

RSSM_UPDATES = 3000
"""offline Dreamer updates at ``scale=1``"""


def train_rssm_offline(
    ctx: CompareContext,
    updates: int,
    *,
    batch_size: int = 16,
    seq_len: int = 32,
    model_size: str = "tiny",
) -> Any:
    """The Dreamer update, ``updates`` times, on windows of ``ctx.data`` (no collection).

    Checkpoints every 250 updates and at the end in ``ctx.out`` (a :class:`DreamerTrainer`
    directory); a rerun resumes from the last one. Returns the trainer.
    """
    data: EpisodeStore = ctx.data
    longest = max(data.lengths) if len(data) else 0
    seq_len = min(seq_len, int(longest))
    if seq_len < 2:
        raise RunError(f"{data.path}: episodes too short for RSSM training windows")
    cfg = DreamerConfig(
        preset="compare-models",
        env=ctx.env,
        env_kwargs=dict(ctx.env_kwargs),
        model_size=model_size,
        imagination=ImaginationConfig(actor_lr=1e-4, critic_lr=2e-4, entropy=3e-3, max_starts=512),
        batch_size=batch_size,
        seq_len=seq_len,
        seed=ctx.seed,
        progress=False,
        tensorboard=False,
    )
    tr = DreamerTrainer(cfg, ctx.out)
    tr.try_resume()
    tr.replay = Replay(cfg.seq_len)
    for i in data.indices:
        tr.replay.add(data.episode(i))
    t0, seconds0 = time.perf_counter(), tr.seconds
    bar = tqdm(
        total=updates, initial=tr.updates, desc="rssm", disable=not ctx.progress, file=sys.stderr
    )
    while tr.updates < updates:
        metrics = tr.update()
        bar.update(1)
        if tr.updates % 50 == 0:
            bar.set_postfix(img=f"{metrics['model/image']:.3g}")
        if tr.updates % 250 == 0 or tr.updates == updates:
            tr.seconds = seconds0 + time.perf_counter() - t0
            tr.save()
    bar.close()
    return tr


def build_rssm(ctx: CompareContext) -> Contender:
    """Generation 2: an RSSM and an actor-critic trained in its imagination, offline on
    ``ctx.data``."""
    updates = max(1, round(RSSM_UPDATES * ctx.scale))
    tr = train_rssm_offline(ctx, updates)
    agent = tr.agent()
    world_model = agent.world_model
    ac = agent.actor_critic.eval()

    def act(features: torch.Tensor) -> torch.Tensor:
        return ac.to_env(ac.policy(features).mode())

    return Contender(
        name="RSSM + actor-critic (Dreamer)",
        generation=2,
        world_model=world_model,
        policy=agent,
        dream_policy=act,
        dream_start=rssm_start_states(world_model, ctx.data, frames="first", max_episodes=200),
        params_world_model=num_params(world_model.rssm),
        params_agent=num_params(ac.actor, ac.critic),
        train_seconds=tr.seconds,
        notes={"updates": tr.updates, "batch_size": tr.cfg.batch_size, "seq_len": tr.cfg.seq_len},
    )
