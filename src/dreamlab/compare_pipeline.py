"""Contender builders of generations 1 and 2 for ``dreamlab compare-models``.

Each is a :data:`~dreamlab.eval.contender.ContenderBuilder`: ``build(ctx) -> Contender``, trained
on ``ctx.data`` (the episodes every generation shares) inside ``ctx.out``, resumably.

- :func:`build_vmc` (generation 1): V, encode, M, and C evolved in the dream, by the pipeline's own
  stage functions on a run directory ``ctx.out`` whose ``data/`` is ``ctx.data``. Settings are the
  ``catch-test`` preset's (32x32 frames; ``catch`` for other sizes) with every training budget
  multiplied by ``ctx.scale``.
- :func:`build_rssm` (generation 2): the RSSM and its actor-critic by the Dreamer update
  (one world-model step and one imagination step) on windows of ``ctx.data``, offline: no new
  episodes are collected. ``3000 * ctx.scale`` updates (the online ``catch-dreamer`` reaches 98 %
  with ~2,900).

This module sits at pipeline level (it drives :mod:`dreamlab.pipeline`'s stages), so
``dreamlab.eval.compare_models`` reaches it only by name, through its ``BUILDERS`` table.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dreamlab.data.store import EpisodeStore
from dreamlab.eval.contender import CompareContext, Contender
from dreamlab.pipeline import (
    Run,
    RunConfig,
    RunError,
    get_run_preset,
    stage_controller,
    stage_encode,
    stage_mdnrnn,
    stage_vae,
)
from dreamlab.progress import tqdm
from dreamlab.train.fit import TrainConfig

__all__ = ["build_rssm", "build_vmc", "num_params", "scaled_run_config", "train_rssm_offline"]

RSSM_UPDATES = 3000
"""offline Dreamer updates at ``scale=1``"""


def num_params(*modules: torch.nn.Module) -> int:
    """Trainable parameters of ``modules`` together."""
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def _scale_train(cfg: TrainConfig, scale: float) -> TrainConfig:
    if cfg.steps is not None:
        return dataclasses.replace(cfg, steps=max(1, round(cfg.steps * scale)))
    return dataclasses.replace(cfg, epochs=cfg.epochs * scale)


def scaled_run_config(ctx: CompareContext, frame_size: int) -> RunConfig:
    """The V/M/C settings for ``ctx``: ``catch-test``'s for 32x32 frames, else ``catch``'s, with
    V's and M's training and C's CMA-ES generations multiplied by ``ctx.scale``."""
    cfg = get_run_preset("catch-test" if frame_size == 32 else "catch")
    cfg.preset = f"compare-models ({cfg.preset} x {ctx.scale:g})"
    cfg.env = ctx.env
    cfg.seed = ctx.seed
    cfg.collect_episodes = len(ctx.data)
    cfg.vae_train = _scale_train(cfg.vae_train, ctx.scale)
    cfg.mdnrnn_train = _scale_train(cfg.mdnrnn_train, ctx.scale)
    generations = max(1, round(cfg.evolve.generations * ctx.scale))
    cfg.evolve = dataclasses.replace(
        cfg.evolve,
        generations=generations,
        eval_every=min(cfg.evolve.eval_every, generations),
        real_eval_every=0,  # the real env is compare-models' job, with the same seeds for all
        progress=ctx.progress,
        tensorboard=False,
    )
    cfg.vonly_ablation = False
    # every generation learns from the same shared episodes: no extra real play of its own
    cfg.iterations = 0
    return cfg


class _SharedDataRun(Run):
    """A run directory whose episodes are the comparison's shared store, not ``RUN/data``."""

    def __init__(self, path: Path, config: RunConfig, data: EpisodeStore, action_space: Any):
        super().__init__(path, config)
        self._data = data
        self._action_space = action_space

    def data(self) -> EpisodeStore:
        return self._data


def _action_space(ctx: CompareContext) -> Any:
    from dreamlab.envs import make_env

    env = make_env(ctx.env, **ctx.env_kwargs)
    try:
        return env.action_space
    finally:
        env.close()


def build_vmc(ctx: CompareContext) -> Contender:
    """Generation 1: V (VAE) + M (MDN-RNN) + C (linear, CMA-ES in the dream) on ``ctx.data``."""
    from dreamlab.agent import WorldModelAgent
    from dreamlab.worldmodel import start_latents_from_store

    data: EpisodeStore = ctx.data
    shape = data.meta.obs_shape
    if shape is None:
        raise RunError(f"{data.path}: holds no frames; V/M/C needs an observation store")
    run = _SharedDataRun(ctx.out, scaled_run_config(ctx, int(shape[0])), data, _action_space(ctx))
    run.save_config()
    for name, stage in (
        ("vae", lambda: stage_vae(run)),
        ("encode", lambda: stage_encode(run, progress=ctx.progress)),
        ("mdnrnn", lambda: stage_mdnrnn(run)),
        ("controller", lambda: stage_controller(run, "zh")),
    ):
        if ctx.progress:
            print(f"[compare-models] vmc: stage {name} ({ctx.out})", file=sys.stderr, flush=True)
        stage()
    world_model = run.world_model()
    controller = run.controller().eval()
    timings = run.timings()
    cfg = run.config
    return Contender(
        name="V/M/C: VAE + MDN-RNN + CMA-ES",
        generation=1,
        world_model=world_model,
        policy=WorldModelAgent(world_model, controller),
        dream_policy=controller,
        dream_start=start_latents_from_store(run.latents()),
        params_world_model=num_params(world_model.vae, world_model.mdnrnn),
        params_agent=num_params(controller),
        train_seconds=sum(timings.get(k, 0.0) for k in ("vae", "encode", "mdnrnn", "controller")),
        notes={
            "vae_steps": cfg.vae_train.steps,
            "mdnrnn_steps": cfg.mdnrnn_train.steps,
            "cma_es_generations": cfg.evolve.generations,
            "dream_temperature": cfg.evolve.temperature,
        },
    )


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
    from dreamlab.train.dreamer import DreamerConfig, DreamerTrainer, Replay
    from dreamlab.train.imagination import ImaginationConfig

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
    from dreamlab.rssm_worldmodel import rssm_start_states

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
