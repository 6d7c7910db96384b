"""Generation 1's contender for ``dreamlab compare-models``: :func:`build_vmc`.

A :data:`~dreamlab.eval.contender.ContenderBuilder`: ``build(ctx) -> Contender``, trained on
``ctx.data`` (the episodes every generation shares) inside ``ctx.out``, resumably. V, encode, M,
and C evolved in the dream, by the pipeline's own stage functions on a run directory ``ctx.out``
whose episodes are ``ctx.data``. Settings are the ``catch-test`` preset's (32x32 frames;
``catch`` for other sizes) with every training budget multiplied by ``ctx.scale``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from dreamlab.data.store import EpisodeStore
from dreamlab.eval.contender import CompareContext, Contender, num_params
from dreamlab.generations.vmc.agent import VMCAgent
from dreamlab.generations.vmc.config import RunConfig, get_run_preset
from dreamlab.generations.vmc.controller import stage_controller
from dreamlab.generations.vmc.run import Run
from dreamlab.generations.vmc.stages import stage_encode, stage_mdnrnn, stage_vae
from dreamlab.generations.vmc.worldmodel import start_latents_from_store
from dreamlab.rundir import RunError, store_action_space, timings
from dreamlab.train.fit import TrainConfig

__all__ = ["build_vmc", "scaled_run_config"]


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
    """A run directory whose episodes (and so its action space) are the comparison's shared
    store, not ``RUN/data``."""

    def __init__(self, path: Path, config: RunConfig, data: EpisodeStore):
        super().__init__(path, config)
        self._data = data

    def data(self) -> EpisodeStore:
        return self._data

    def action_space(self) -> Any:
        return store_action_space(self._data)


def build_vmc(ctx: CompareContext) -> Contender:
    """Generation 1: V (VAE) + M (MDN-RNN) + C (linear, CMA-ES in the dream) on ``ctx.data``."""
    data: EpisodeStore = ctx.data
    shape = data.meta.obs_shape
    if shape is None:
        raise RunError(f"{data.path}: holds no frames; V/M/C needs an observation store")
    run = _SharedDataRun(ctx.out, scaled_run_config(ctx, int(shape[0])), data)
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
    seconds = timings(run.path)
    cfg = run.config
    return Contender(
        name="V/M/C: VAE + MDN-RNN + CMA-ES",
        generation=1,
        world_model=world_model,
        policy=VMCAgent(world_model, controller),
        dream_policy=controller,
        dream_start=start_latents_from_store(run.latents()),
        params_world_model=num_params(world_model.vae, world_model.mdnrnn),
        params_agent=num_params(controller),
        train_seconds=sum(seconds.get(k, 0.0) for k in ("vae", "encode", "mdnrnn", "controller")),
        notes={
            "vae_steps": cfg.vae_train.steps,
            "mdnrnn_steps": cfg.mdnrnn_train.steps,
            "cma_es_generations": cfg.evolve.generations,
            "dream_temperature": cfg.evolve.temperature,
        },
    )
