"""A V/M/C run for a user's own environment or recorded data, sized from them.

``dreamlab pipeline --env pkg.module:Class --run R`` (or a Gymnasium id, or ``--data DIR`` for an
episode store made by ``collect``, ``import`` or ``import-minari``) starts a run from the
``generic`` preset: the episodes come first (collected with a random policy, or linked from
``--data``), then every size is read from them, not from Catch:

- V's frame size from the stored frames, M's and C's action layout from the store's action space;
- M's training window from the episode lengths (at most 32 steps, at most the median length);
- the dream's length from the longest episodes (the 95th percentile, +20 %), so a dream can last
  as long as a real episode (an env that ends on a time limit as well as one that ends on failure);
- CMA-ES's generations from a budget of imagined steps (fewer generations for longer dreams);
- one round of the paper's iterative procedure (C's own play fine-tunes M; the round keeps the
  previous C unless its own search scores better in the new dream), no V-only ablation.

What made the Doom run work carries over to an env whose episodes end on failure (any collected
episode ends ``terminated``): M learns deaths unweighted, so its probability is calibrated, and
the dream draws each death from it (``dream_termination='sample'``; a 0.5 threshold almost never
ends a dream, so the dream never kills and C learns nothing about dying); only live dreams are
stepped; the ``checks`` stage measures M's deaths on held-out episodes and survival in the dream
beside reality. Every run measures whether its dream is kinder than reality (``kindness.json``,
the report's first section after the scores).

The resolved config is written to ``RUN/config.json`` (env and env keywords included), so
``dreamlab pipeline --run R`` resumes it like any preset's run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import STORE_FILE, EpisodeStore
from dreamlab.envs.trust import check_env_trusted
from dreamlab.generations.vmc.config import RunConfig
from dreamlab.models.mdnrnn import MDNRNNConfig
from dreamlab.models.vae import VAEConfig
from dreamlab.rundir import RunError, store_action_space
from dreamlab.train.evolve import EvolveConfig
from dreamlab.train.fit import TrainConfig

__all__ = [
    "DREAM_STEP_BUDGET",
    "GENERIC",
    "failure_share",
    "foreground_share",
    "generic_config",
    "prepare_data",
]

GENERIC = "generic"
"""the preset name a run sized from its env and data records"""
DREAM_STEP_BUDGET = 4_000_000
"""imagined steps CMA-ES may spend (population x rollouts x dream length x generations; dreams
that end early spend less)"""
COLLECT_EPISODES = 200
"""random-policy episodes collected for a new run"""


def _link_store(source: Path, target: Path) -> None:
    """Copy the episode store ``source`` to ``target`` (hard links where the disk allows), the
    run's own ``data/``; written beside and renamed, so a killed copy leaves nothing half-made."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, partial, copy_function=link)
    os.replace(partial, target)


def _check_store(store: EpisodeStore) -> tuple[int, ...]:
    """The frame shape of ``store``, checked usable by V/M/C: square RGB frames and a
    ``Discrete(n)`` or 1-D ``Box`` action space (else :class:`RunError`)."""
    shape = tuple(store.meta.schema["obs"].shape)
    if len(shape) != 3 or shape[-1] != 3 or shape[0] != shape[1]:
        raise RunError(
            f"{store.path}: frames of shape {shape}; V needs square RGB frames (S, S, 3) — "
            "make_env resizes an env's frames to 64x64"
        )
    space = store_action_space(store)
    if not (hasattr(space, "n") or len(getattr(space, "shape", ()) or ()) == 1):
        raise RunError(f"{store.path}: action space {space}; expected Discrete(n) or a 1-D Box")
    return shape


def prepare_data(
    run: Path,
    env: str | None,
    env_kwargs: dict[str, Any],
    data: Path | None,
    seed: int,
    progress: bool,
) -> tuple[EpisodeStore, str, dict[str, Any]]:
    """``RUN/data`` for a new generic run: ``data`` linked in, or ``COLLECT_EPISODES`` random
    episodes of ``env`` collected (resumably). Returns the store and the env it came from.

    Raises:
        RunError: ``data`` is not an episode store of frames, or names another env than ``env``.
    """
    target = run / "data"
    if data is not None:
        data = Path(data)
        if not (data / STORE_FILE).is_file():
            raise RunError(f"{data}: not an episode store (no {STORE_FILE}); make one with collect")
        store = EpisodeStore.open(data)
        if store.meta.kind != "observations" or "obs" not in store.meta.schema:
            raise RunError(f"{data}: holds {store.meta.kind}, not frames; give the store of frames")
        recorded = str((store.meta.preset or {}).get("name") or store.meta.env_id)
        if env is not None and env not in (recorded, store.meta.env_id):
            raise RunError(
                f"{data}: its episodes come from env {recorded!r}, not {env!r}; give that env's "
                "data or leave out --env"
            )
        check_env_trusted(recorded, str(data / STORE_FILE))  # the run will make this env
        _check_store(store)  # before anything is written
        if not (target / STORE_FILE).is_file():
            run.mkdir(parents=True, exist_ok=True)
            _link_store(data, target)
        kwargs = dict((store.meta.preset or {}).get("env_kwargs") or {})
        return EpisodeStore.open(target), recorded, {**kwargs, **env_kwargs}
    if env is None:
        raise RunError(f"{run}: no run here; start one with --preset NAME, --env ENV or --data DIR")
    collect(
        CollectConfig(
            env=env,
            out=target,
            episodes=COLLECT_EPISODES,
            policy="random",
            seed=seed,
            env_kwargs=dict(env_kwargs),
            progress=progress,
        )
    )
    return EpisodeStore.open(target), env, dict(env_kwargs)


def foreground_share(store: EpisodeStore, frames: int = 256) -> float:
    """Share of pixels that differ from their frame's median colour (V's ``foreground``), over
    up to ``frames`` frames spread across the store."""
    from dreamlab.models import foreground_weights, frames_to_tensor

    indices = list(store.indices)
    rows = []
    per_episode = max(1, frames // max(1, len(indices)))
    for i in indices[: frames // per_episode]:
        obs = store.episode(i)["obs"]
        rows.append(np.asarray(obs[:: max(1, len(obs) // per_episode)][:per_episode]))
    x = frames_to_tensor(np.concatenate(rows))
    weights = foreground_weights(x, 1.0, 0.1)  # 1 on background, 2 on foreground
    return float((weights - 1.0).mean())


def failure_share(store: EpisodeStore) -> float:
    """Share of ``store``'s episodes whose last step is ``terminated`` (ended by the env, not by a
    time limit): > 0 for an env that ends on failure."""
    ends = [bool(np.asarray(store.episode(i)["terminated"])[-1:].any()) for i in store.indices]
    return float(np.mean(ends)) if ends else 0.0


def generic_config(
    store: EpisodeStore, env: str, env_kwargs: dict[str, Any], seed: int = 0
) -> RunConfig:
    """A V/M/C config sized from ``store`` (its frames, action space and episode lengths).

    Raises:
        RunError: frames that are not square RGB images, or an unusable action space.
    """
    shape = _check_store(store)
    lengths = np.asarray(store.lengths, dtype=np.int64)
    if len(lengths) == 0:
        raise RunError(f"{store.path}: holds no episodes")
    frames = int(lengths.sum() + len(lengths))
    dream_steps = int(np.clip(np.ceil(np.percentile(lengths, 95) * 1.2), 10, 1000))
    seq_len = int(np.clip(np.median(lengths), 4, 32))
    population, rollouts = 32, 8
    generations = int(np.clip(DREAM_STEP_BUDGET // (population * rollouts * dream_steps), 30, 200))
    dies = failure_share(store) > 0
    quiet = {"log_every": 50, "checkpoint_every": 500}
    frame_size = int(shape[0])
    # V's loss on small objects sits on a background-only plateau unless they weigh enough of it
    # (Catch: 0.7 % of the pixels at weight 20, docs/vm.md). Two 8x8 objects on 64x64 (3.1 %):
    # at 13 % of the loss V learned one object in 600 steps, not the other; at 25 % (weight 8)
    # it never drew Dodge's falling rock in 2,000 steps, at 62 % (weight 20) it drew it by step
    # 500 (docs/envs.md): weight = 0.6 / their share, 1..20
    share = foreground_share(store)
    fg_weight = float(np.clip(0.6 / max(share, 1e-6), 1.0, 20.0)) if share < 0.1 else 0.0
    vae_steps = int(np.clip(frames // 16, 1000, 2000))  # two passes at batch 32, >= 1000 steps
    return RunConfig(
        preset=GENERIC,
        env=env,
        env_kwargs=dict(env_kwargs),
        seed=seed,
        collect_episodes=len(lengths),
        collect_policy="random",
        vae=VAEConfig(
            frame_size=frame_size,
            z_dim=32 if frame_size >= 64 else 16,
            foreground_weight=fg_weight,
        ),
        vae_train=TrainConfig(steps=vae_steps, batch_size=32, lr=1e-3, **quiet),
        # deaths drawn from M's probability need it calibrated: unweighted (the Doom preset)
        mdnrnn=MDNRNNConfig(
            hidden_size=128 if frame_size >= 64 else 64,
            termination_pos_weight=1.0 if dies else MDNRNNConfig.termination_pos_weight,
        ),
        mdnrnn_train=TrainConfig(steps=1500, batch_size=32, lr=2e-3, **quiet),
        seq_len=seq_len,
        controller_normalize=True,
        evolve=EvolveConfig(
            generations=generations,
            population_size=population,
            rollouts_per_candidate=rollouts,
            sigma0=0.5,
            # C is the CMA-ES mean that scores best on 256 dreams (on catch-test, 64 ranked them
            # by noise; issue 28)
            eval_every=max(5, generations // 8),
            eval_rollouts=256,
            temperature=1.15,
            max_episode_steps=dream_steps,
            compact_dreams=dies,
            seed=seed,
        ),
        dream_termination="sample" if dies else "threshold",
        dream_checks=dies,
        check_episodes=50,
        iterations=1,
        # the round keeps round 0's C unless its own search beats it in the new dream (on Dodge
        # seed 2, round 0's C scored 7.54 in reality and the round's 4.92; issue 28's lesson)
        iterate_keep_best=True,
        iterate_episodes=100,
        vonly_ablation=False,
        eval_episodes=50,
        dream_horizon=min(20, dream_steps),
    )
