"""The paper's iterative procedure (its section 5): C plays, M learns from that play, C trains
again in the new dream.

With ``RunConfig.iterations = N`` the controller stage trains round 0's C
(:func:`stage_first_controller`), and the iterate stage runs rounds 1..N (:func:`stage_iterate`):
round R-1's C plays real episodes with exploration noise (:func:`stage_explore`), M is fine-tuned
on every real episode so far (:func:`stage_finetune_mdnrnn`), and a new C is trained. Earlier
rounds live in ``rounds/R/``; the last round's M and C are the run's ``mdnrnn/`` and
``controller/``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dreamlab.data.store import EpisodeStore
from dreamlab.envs.policies import NoisyPolicy
from dreamlab.eval.evaluate import evaluate_policy
from dreamlab.generations.vmc.agent import VMCAgent
from dreamlab.generations.vmc.config import RunConfig
from dreamlab.generations.vmc.controller import stage_controller
from dreamlab.generations.vmc.run import Run
from dreamlab.rundir import RunError, timed
from dreamlab.train.batches import sequence_batches
from dreamlab.train.encode import encode_store
from dreamlab.train.evolve import EvolveConfig
from dreamlab.train.fit import fit

__all__ = [
    "stage_explore",
    "stage_finetune_mdnrnn",
    "stage_first_controller",
    "stage_iterate",
]


def _check_iterations(cfg: RunConfig) -> None:
    """Raise :class:`RunError` for iteration settings that cannot run."""
    if cfg.iterations < 0:
        raise RunError(f"iterations must be >= 0, got {cfg.iterations}")
    if cfg.iterations == 0:
        return
    if cfg.iterate_episodes < 1:
        raise RunError(f"iterate_episodes must be >= 1, got {cfg.iterate_episodes}")
    if not 0.0 <= cfg.iterate_noise <= 1.0:
        raise RunError(f"iterate_noise must be in [0, 1], got {cfg.iterate_noise}")
    if cfg.iterate_epochs <= 0:
        raise RunError(f"iterate_epochs must be > 0, got {cfg.iterate_epochs}")
    if cfg.explore_generations is not None and cfg.explore_generations < 1:
        raise RunError(f"explore_generations must be >= 1, got {cfg.explore_generations}")
    if cfg.evolve.backend != "dream":
        raise RunError("iterations train C in the dream of each round; use evolve.backend 'dream'")


def _explore_evolve(cfg: RunConfig) -> EvolveConfig:
    """CMA-ES settings of the C's of rounds before the last: ``explore_generations`` in one
    run (they only play to collect data), or the controller's settings."""
    if cfg.explore_generations is None:
        return cfg.evolve
    return dataclasses.replace(cfg.evolve, generations=cfg.explore_generations, restarts=1)


def stage_explore(run: Run, round_: int, progress: bool = True) -> EpisodeStore:
    """Round ``round_``'s C plays ``iterate_episodes`` real episodes with exploration noise
    into ``rounds/R/data/``, encoded by V into ``rounds/R/latents/`` (both resume)."""
    cfg = run.config
    out = run.round_dir(round_)
    seed = cfg.seed + 100_000 * (round_ + 1)
    source = run.data().meta
    policy_name = f"controller of round {round_}, noise {cfg.iterate_noise}"
    meta = dataclasses.replace(source, extra={"collect": {"seed": seed, "policy": policy_name}})
    store = EpisodeStore.open_or_create(out / "data", meta)
    missing = store.missing(cfg.iterate_episodes)
    if missing:
        name = str((out / "controller").relative_to(run.path))
        agent = VMCAgent(run.world_model("zh", round_=round_), run.controller(name))
        policy = NoisyPolicy(agent, run.action_space(), cfg.iterate_noise, seed=seed)
        result = evaluate_policy(
            run.make_env,
            policy,
            len(missing),
            env_name=cfg.env,
            seed=seed,
            record=False,
            progress=progress,
            indices=missing,
            desc=f"round {round_} plays",
            on_episode=lambda i, episode: store.append(
                episode, index=i, info={"policy": policy_name}
            ),
        )
        rate = result.summary().get("catch_rate")
        extra = "" if rate is None else f", catch rate {rate:.2f}"
        print(
            f"[dreamlab] round {round_}'s C played {len(missing)} episodes (noise "
            f"{cfg.iterate_noise}): return {np.mean(result.returns):.2f}{extra}",
            flush=True,
        )
    return encode_store(
        run.vae(), store, out / "latents", vae_source=str(run / "vae"), progress=progress
    )


def stage_finetune_mdnrnn(run: Run, round_: int) -> Any:
    """Round ``round_``'s M: the previous round's M trained ``iterate_epochs`` more passes over
    every real episode so far (random play and what each earlier C played)."""
    cfg = run.config
    stores = run.round_latents(round_)
    model = run.mdnrnn(round_ - 1)
    batches = sequence_batches(
        stores,
        cfg.seq_len,
        cfg.mdnrnn_train.batch_size,
        seed=cfg.seed + round_,
        pad_short=cfg.seq_pad,
    )
    tcfg = dataclasses.replace(cfg.mdnrnn_train, epochs=cfg.iterate_epochs, steps=None)
    total = tcfg.resolve_steps(sum(max(1, s.num_steps // cfg.seq_len) for s in stores))
    out = run.round_dir(round_) / "mdnrnn"
    return fit(model, batches, tcfg, out, total_steps=total, stage="mdnrnn")


def stage_first_controller(run: Run) -> Any:
    """The pipeline's controller stage: C in the dream of the M trained on the collected data
    (with ``iterations``, round 0's C, which plays to collect the next round's data)."""
    cfg = run.config
    _check_iterations(cfg)
    if cfg.iterations == 0:
        return stage_controller(run, "zh")
    return stage_controller(run, "zh", _explore_evolve(cfg), round_=0)


def stage_iterate(run: Run, progress: bool = True) -> None:
    """The paper's iterative procedure: for each round R = 1..``iterations``, the C of round
    R-1 plays real episodes (:func:`stage_explore`), M is fine-tuned on all real data
    (:func:`stage_finetune_mdnrnn`), and a new C is trained in that M's dream. The last
    round's M and C are the run's ``mdnrnn/`` and ``controller/``."""
    cfg = run.config
    _check_iterations(cfg)
    for r in range(1, cfg.iterations + 1):
        print(f"[dreamlab] round {r} of {cfg.iterations}", flush=True)
        timed(run.path, f"round{r}_explore", lambda r=r: stage_explore(run, r - 1, progress))
        timed(run.path, f"round{r}_mdnrnn", lambda r=r: stage_finetune_mdnrnn(run, r))
        ecfg = cfg.evolve if r == cfg.iterations else _explore_evolve(cfg)
        previous = str((run.round_dir(r - 1) / "controller").relative_to(run.path))
        held = previous if cfg.iterate_keep_best else None
        stage_controller(run, "zh", ecfg, round_=r, incumbent=held)
