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

from typing import Any

import numpy as np

from dreamlab.generations.own import GENERIC, StoreFacts, foreground_weight, scaled
from dreamlab.generations.vmc.config import RunConfig
from dreamlab.models.mdnrnn import MDNRNNConfig
from dreamlab.models.vae import VAEConfig
from dreamlab.train.evolve import EvolveConfig
from dreamlab.train.fit import TrainConfig

__all__ = ["DREAM_STEP_BUDGET", "own_config"]

DREAM_STEP_BUDGET = 4_000_000
"""imagined steps CMA-ES may spend (population x rollouts x dream length x generations; dreams
that end early spend less)"""


def own_config(
    facts: StoreFacts,
    env: str,
    env_kwargs: dict[str, Any],
    seed: int = 0,
    scale: float = 1.0,
) -> RunConfig:
    """A V/M/C config sized from a store's :class:`~dreamlab.generations.own.StoreFacts` (its
    frames, action space and episode lengths), every training budget times ``scale``."""
    dream_steps, dies, frame_size = facts.dream_steps, facts.dies, facts.frame_size
    population, rollouts = 32, 8
    generations = int(np.clip(DREAM_STEP_BUDGET // (population * rollouts * dream_steps), 30, 200))
    generations = scaled(generations, scale)
    quiet = {"log_every": 50, "checkpoint_every": 500}
    vae_steps = int(np.clip(facts.frames // 16, 1000, 2000))  # two passes at batch 32, >= 1000
    return RunConfig(
        preset=GENERIC,
        env=env,
        env_kwargs=dict(env_kwargs),
        seed=seed,
        collect_episodes=facts.episodes,
        collect_policy="random",
        vae=VAEConfig(
            frame_size=frame_size,
            z_dim=32 if frame_size >= 64 else 16,
            foreground_weight=foreground_weight(facts.foreground_share),
        ),
        vae_train=TrainConfig(steps=scaled(vae_steps, scale), batch_size=32, lr=1e-3, **quiet),
        # deaths drawn from M's probability need it calibrated: unweighted (the Doom preset)
        mdnrnn=MDNRNNConfig(
            hidden_size=128 if frame_size >= 64 else 64,
            termination_pos_weight=1.0 if dies else MDNRNNConfig.termination_pos_weight,
        ),
        mdnrnn_train=TrainConfig(steps=scaled(1500, scale), batch_size=32, lr=2e-3, **quiet),
        seq_len=facts.seq_len,
        controller_normalize=True,
        evolve=EvolveConfig(
            generations=generations,
            population_size=population,
            rollouts_per_candidate=rollouts,
            sigma0=0.5,
            # C is the CMA-ES mean that scores best on 256 dreams (on catch-test, 64 ranked them
            # by noise; issue 28)
            eval_every=min(generations, max(5, generations // 8)),
            eval_rollouts=scaled(256, scale, least=16),
            temperature=1.15,
            max_episode_steps=dream_steps,
            compact_dreams=dies,
            seed=seed,
        ),
        dream_termination="sample" if dies else "threshold",
        dream_checks=dies,
        check_episodes=scaled(50, scale, least=4),
        iterations=1,
        # the round keeps round 0's C unless its own search beats it in the new dream (on Dodge
        # seed 2, round 0's C scored 7.54 in reality and the round's 4.92; issue 28's lesson)
        iterate_keep_best=True,
        iterate_episodes=scaled(100, scale, least=4),
        vonly_ablation=False,
        eval_episodes=scaled(50, scale, least=4),
        dream_horizon=min(20, dream_steps),
    )
