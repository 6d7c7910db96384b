"""The settings of one V/M/C run: :class:`RunConfig` (saved in ``RUN/config.json`` as
``{"kind": "vmc", "config": ...}``), the named presets it starts from, and the pipeline's stages.

=====================  ======================================================================
preset                 what it is
=====================  ======================================================================
catch                  the demo: 64x64 Catch, one round of the paper's iterative procedure
catch-debug            seconds, plumbing only (tests)
catch-test             32x32 Catch with small V and M: the whole pipeline in about a minute
carracing              the paper's CarRacing settings
carracing-small        a few hundred episodes, a short CMA-ES
doom-takecover         the paper's VizDoom take-cover experiment sized for a 2-core CPU
doom-takecover-small   the same, smaller (a first look in ~15 minutes)
doom-takecover-paper   the paper's sizes (10,000 rollouts, M 512): for a GPU or Ray
doom-takecover-debug   seconds per stage, plumbing only (the slow test)
=====================  ======================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from dreamlab.checkpoint import CheckpointError, config_from_dict
from dreamlab.models.mdnrnn import MDNRNNConfig
from dreamlab.models.vae import VAEConfig
from dreamlab.rundir import RunError
from dreamlab.train.evolve import EvolveConfig
from dreamlab.train.fit import TrainConfig

__all__ = ["KIND", "PRESETS", "STAGES", "RunConfig", "get_run_preset"]

KIND = "vmc"
"""the generation's key in the registry and in ``RUN/config.json``"""

STAGES = (
    "collect",
    "vae",
    "encode",
    "mdnrnn",
    "controller",
    "iterate",
    "controller_vonly",
    "evaluate",
    "dream",
    "checks",
    "report",
)
"""the pipeline's stages, in order (``dreamlab pipeline --until STAGE`` stops after one)"""


@dataclass
class RunConfig:
    """Every setting of one experiment; saved in ``runs/NAME/config.json``."""

    preset: str = "catch"
    """name of the preset these settings started from"""
    env: str = "catch"
    """environment: preset name, registered Gymnasium id, or pkg.module:Class"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the environment's constructor"""
    seed: int = 0
    """seed of every stage"""
    collect_episodes: int = 300
    """real episodes collected with the collection policy"""
    collect_policy: str = "preset"
    """collection policy: random, brownian, expert, or 'preset' (the env preset's choice)"""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """V's architecture"""
    vae_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, batch_size=100))
    """V's training loop"""
    mdnrnn: MDNRNNConfig = field(default_factory=MDNRNNConfig)
    """M's architecture (z_dim and action_dim are set from V and the env)"""
    mdnrnn_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=10, batch_size=32, lr=1e-3)
    )
    """M's training loop"""
    seq_len: int = 32
    """steps per training sub-sequence of M"""
    seq_pad: bool = False
    """M also trains on episodes shorter than ``seq_len``: each is one window from its first
    step, zero-padded and masked out of the loss. With a ``seq_len`` longer than most episodes
    M learns every death with the memory of the whole episode before it, as it runs in a dream
    that starts at an episode's first frame"""
    controller_hidden: int = 0
    """0 = the paper's linear C; >0 = one hidden layer (the paper's ablation)"""
    controller_mapping: Literal["auto", "carracing"] = "auto"
    """how C's tanh outputs map to actions ('carracing': steer, gas, brake)"""
    controller_normalize: bool = False
    """standardize C's inputs by the feature mean/std of random-action dreams (measured before
    CMA-ES, stored in C's config), so one step size fits z and h alike"""
    dream_starts: Literal["first", "all", "memory"] = "first"
    """where C's training dreams begin: real episodes' first frames (the paper), any real frame
    with M's memory at zero ('all'), or any real frame with the memory M had there when it ran
    over the real episode ('memory', as C's memory is when it acts in reality); with short
    dreams (evolve.max_episode_steps) every dream is a few steps of imagination from a real
    situation"""
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    """CMA-ES settings (backend 'dream' trains C inside the dream)"""
    iterations: int = 0
    """rounds of the paper's iterative procedure (its section 5) after the first C: that C plays
    ``iterate_episodes`` real episodes with exploration noise, M is fine-tuned on every real
    episode so far, and C is trained afresh in the new dream. Random play rarely puts the
    paddle under the ball, so M learns catches from few examples; the agent's own play shows
    them. 0 = train once on the collected data (the paper's CarRacing and Doom runs)"""
    iterate_episodes: int = 200
    """real episodes each round's C plays to collect the next round's data"""
    iterate_noise: float = 0.3
    """exploration noise of that play: Gaussian with this fraction of each Box action's
    half-range, or the chance of a random Discrete action"""
    iterate_epochs: float = 15.0
    """passes over all real data so far when M is fine-tuned for the next round"""
    iterate_keep_best: bool = False
    """each round's C is the best of its CMA-ES means and the previous round's C, all scored in
    the round's dream (the new C reads the previous one's input statistics, so both are the same
    parameters). A round's short search from scratch often ended below the previous C in its own
    dream and in reality (catch-test: round 0 caught 0.58, round 1 0.45), and starting the search
    at the previous C kept a bad one (BENCHMARKS.md, issue 28)"""
    explore_generations: int | None = None
    """CMA-ES generations of the C's of rounds before the last (they only play to collect
    data), in one run without restarts; default: the controller's settings"""
    dream_precision: Literal["float32", "bfloat16", "auto"] = "float32"
    """precision of M's matmuls in C's training dreams: 'auto' = bfloat16 where the hardware has
    it natively (a GPU that supports it, a CPU with AVX512-BF16 or AMX), decided by the hardware
    and kept beside C (never by a timing: the same command gives the same C under any load).
    bfloat16 was 1.1-2.0x faster on some CPUs, 1.5x slower on one; C acts in reality with a
    float32 M either way"""
    dream_device: str = "cpu"
    """torch device of C's training dreams ("cuda" on a GPU: the whole population's dreams run
    there as one batch)"""
    dream_termination: Literal["threshold", "sample"] = "threshold"
    """dream episodes end when M's termination probability > 0.5, or by sampling it (the
    paper's Doom dream: deaths are rare, so a threshold would almost never end a dream)"""
    vonly_ablation: bool = True
    """also train the V-only controller (C reads z alone)"""
    vonly_generations: int | None = None
    """CMA-ES generations of the V-only ablation, in one run without restarts (default: the
    controller's settings); on Catch its dream score stops rising within 50 generations"""
    eval_episodes: int = 100
    """real-env episodes per agent in the evaluate stage"""
    dream_checks: bool = False
    """the ``checks`` stage: measure the known ways a C trained in the dream fails in reality
    (M's death recall on held-out episodes, reward/done alignment, temperature, dream starts,
    episode boundaries, survival in the dream vs reality) into ``checks.json`` and
    ``survival.png`` (:mod:`~dreamlab.generations.vmc.dream_checks`)"""
    check_episodes: int = 100
    """held-out episodes (and as many training ones) for those checks"""
    dream_horizon: int = 30
    """open-loop steps in the dream-vs-reality video"""
    dream_context: int = 2
    """real frames the model sees before it dreams in that video"""

    def to_json(self) -> dict[str, Any]:
        """The settings as plain JSON values (nested configs as dicts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config.json") -> RunConfig:
        """Settings from :meth:`to_json`'s dict, every field's type checked; unknown fields (and
        missing ones, in a file that lost keys since it was written) are a :class:`RunError`
        naming ``source`` and the field."""
        try:
            return config_from_dict(cls, data, source)
        except CheckpointError as e:
            raise RunError(str(e)) from None


# ------------------------------------------------------------------------------------ presets
def _catch() -> RunConfig:
    return RunConfig(
        preset="catch",
        env="catch",
        collect_episodes=300,
        collect_policy="random",
        # The 3x3 ball is 0.2% of a frame: with the plain loss V never learns it (docs/vm.md).
        # V learns the ball after a plateau whose length is set by updates, not frames: batch 32
        # with the ball weighted 20x leaves it by step ~330 on every seed tried, and 0.8 epochs
        # draw the ball as well as 2 epochs of batch 64 at 10x did, in 40% of the time
        # (BENCHMARKS.md, "Where the demo's time went")
        vae=VAEConfig(z_dim=32, foreground_weight=20.0),
        vae_train=TrainConfig(
            epochs=0.8, batch_size=32, lr=1e-3, log_every=25, checkpoint_every=200
        ),
        mdnrnn=MDNRNNConfig(hidden_size=256),
        # 100 passes: M's next-z error keeps falling long after 20 (BENCHMARKS.md); 60 made a
        # weaker round-0 C whose play taught the next M less (0.89 in the end against 0.95)
        mdnrnn_train=TrainConfig(
            epochs=100, batch_size=32, lr=1e-3, log_every=25, checkpoint_every=500
        ),
        seq_len=32,
        # C trains in 40-step dreams begun at any real frame (with the memory M had there, as
        # in reality), on standardized [z, h]: from whole 200-step dreams and raw features it
        # caught 0.61 in reality (BENCHMARKS.md, issue 4)
        controller_normalize=True,
        dream_starts="memory",
        evolve=EvolveConfig(
            generations=300,
            population_size=32,
            rollouts_per_candidate=16,
            sigma0=0.5,
            # Two whole CMA-ES runs race (two processes) and the one whose mean scores best in
            # the dream is C: single runs caught 0.71-0.90 in reality, ranked by dream score; a
            # 100-generation head start did not pick well, four runs overrun 10 minutes
            # (BENCHMARKS.md)
            restarts=2,
            restart_generations=300,
            # C is the mean with the best score on 1,024 dreams, checked every 25 generations:
            # 256 dreams every 50 picked a worse mean (0.75 vs 0.87 real, BENCHMARKS.md)
            eval_every=25,
            eval_rollouts=1024,
            # a harder dream than reality, so C cannot exploit M's errors (the paper's Doom: 1.15)
            temperature=1.2,
            max_episode_steps=40,
            real_eval_every=50,
            real_eval_episodes=16,
        ),
        # The paper's iterative procedure, once: round 0's C (150 generations) plays 200 real
        # episodes, M is fine-tuned on them and the random play, and C is trained again. On one
        # V+M, four CMA-ES seeds caught 0.86-0.95 after it, 0.77-0.90 before (BENCHMARKS.md)
        iterations=1,
        explore_generations=150,
        iterate_episodes=200,
        iterate_noise=0.3,
        iterate_epochs=15.0,
        # float32 dreams on every machine, so the demo's numbers are the same everywhere
        # (bfloat16 was 1.6x faster on one CPU, 1.5x slower on another; BENCHMARKS.md)
        dream_precision="float32",
        eval_episodes=100,
        vonly_generations=50,
    )


def _catch_debug() -> RunConfig:
    cfg = _catch()
    cfg.preset = "catch-debug"
    cfg.collect_episodes = 20
    quiet = {"progress": False, "tensorboard": False, "log_every": 10, "checkpoint_every": 20}
    cfg.vae_train = TrainConfig(steps=30, batch_size=32, lr=1e-3, **quiet)
    cfg.mdnrnn = MDNRNNConfig(hidden_size=32)
    cfg.mdnrnn_train = TrainConfig(steps=30, batch_size=8, lr=1e-3, **quiet)
    cfg.seq_len = 16
    cfg.evolve = EvolveConfig(
        generations=2,
        population_size=4,
        rollouts_per_candidate=2,
        eval_every=0,
        max_episode_steps=50,
        progress=False,
        tensorboard=False,
    )
    cfg.vonly_generations = None
    cfg.explore_generations = None
    cfg.iterate_episodes = 4
    cfg.iterate_epochs = 1.0
    cfg.eval_episodes = 4
    cfg.dream_horizon = 10
    return cfg


def _catch_test() -> RunConfig:
    """Catch on 32x32 frames with small V and M: the whole pipeline learns in about a minute.

    C is trained as the demo trains it (40-step dreams from real frames with M's memory there,
    standardized inputs), and the iterative round keeps round 0's C unless its own search scores
    better in the new dream (``iterate_keep_best``): with whole 80-step dreams from first frames,
    seed 0's C held the paddle at a wall, which M's dream rewarded and reality did not (it caught
    no more than random), and a round's search from scratch often ended below round 0's C
    (BENCHMARKS.md, issue 28)."""
    quiet = {"progress": False, "tensorboard": False, "log_every": 50, "checkpoint_every": 500}
    return RunConfig(
        preset="catch-test",
        env="catch-32",
        collect_episodes=100,
        collect_policy="random",
        vae=VAEConfig(
            frame_size=32,
            z_dim=16,
            enc_channels=(16, 32, 64, 128),
            dec_channels=(64, 32, 16),
            dec_dense=256,
            foreground_weight=10.0,
        ),
        vae_train=TrainConfig(steps=600, batch_size=32, lr=2e-3, **quiet),
        mdnrnn=MDNRNNConfig(hidden_size=64),
        mdnrnn_train=TrainConfig(steps=2000, batch_size=32, lr=2e-3, **quiet),
        seq_len=16,
        controller_normalize=True,
        dream_starts="memory",
        evolve=EvolveConfig(
            generations=60,
            population_size=16,
            rollouts_per_candidate=8,
            eval_every=10,
            # the means and round 0's C are compared on 256 dreams (64 ranked them by noise)
            eval_rollouts=256,
            temperature=1.2,
            max_episode_steps=40,
            progress=False,
            tensorboard=False,
        ),
        iterate_keep_best=True,
        eval_episodes=50,
        dream_horizon=12,
    )


def _carracing() -> RunConfig:
    return RunConfig(
        preset="carracing",
        env="carracing",
        collect_episodes=10_000,
        collect_policy="preset",
        vae=VAEConfig(z_dim=32),
        vae_train=TrainConfig(epochs=10, batch_size=100, lr=1e-4, checkpoint_every=2000),
        mdnrnn=MDNRNNConfig(hidden_size=256),
        mdnrnn_train=TrainConfig(epochs=20, batch_size=100, lr=1e-3, checkpoint_every=2000),
        seq_len=999,
        controller_mapping="carracing",
        evolve=EvolveConfig(
            generations=2000,
            population_size=64,
            rollouts_per_candidate=16,
            eval_every=25,
            eval_rollouts=1024,
            backend="processes",
            max_episode_steps=1000,
        ),
        eval_episodes=100,
    )


def _carracing_small() -> RunConfig:
    cfg = _carracing()
    cfg.preset = "carracing-small"
    cfg.collect_episodes = 200
    cfg.vae_train = TrainConfig(epochs=3, batch_size=100, lr=1e-4, checkpoint_every=500)
    cfg.mdnrnn_train = TrainConfig(epochs=10, batch_size=16, lr=1e-3, checkpoint_every=500)
    cfg.seq_len = 100
    cfg.evolve = dataclasses.replace(
        cfg.evolve,
        generations=30,
        population_size=16,
        rollouts_per_candidate=2,
        eval_every=10,
        eval_rollouts=16,
        backend="dream",
        temperature=1.0,
    )
    cfg.eval_episodes = 10
    return cfg


def _doom() -> RunConfig:
    """The paper's Doom experiment sized for a 2-core CPU (BENCHMARKS.md, "DoomTakeCover"): fewer
    episodes, a 256-unit M, a shorter CMA-ES; the paper's sizes are ``doom-takecover-paper``."""
    return RunConfig(
        preset="doom-takecover",
        env="doom-takecover",
        # 3,000 episodes (~1M frames, ~10 minutes with both cores): 3,000 deaths for M. The
        # random actions are sticky (each repeats the last with probability 0.8): from white-
        # noise actions, which jitter in place, M never sees what holding a direction does, and
        # in its dream "always move right" survived 1,571 steps (random: 194) while it survives
        # ~230 in reality (BENCHMARKS.md, "DoomTakeCover")
        collect_episodes=3000,
        collect_policy="brownian",
        vae=VAEConfig(z_dim=64),
        vae_train=TrainConfig(
            steps=2000, batch_size=100, lr=1e-3, log_every=50, checkpoint_every=250
        ),
        mdnrnn=MDNRNNConfig(hidden_size=256, termination_pos_weight=1.0),
        mdnrnn_train=TrainConfig(
            steps=2400, batch_size=32, lr=1e-3, log_every=50, checkpoint_every=250
        ),
        # Windows of 300 steps from an episode's first step hold half the episodes whole
        # (padded and masked; median length ~300), so M learns those deaths with the memory of
        # the whole episode, as it runs in a dream begun at an episode's first frame
        seq_len=300,
        seq_pad=True,
        controller_normalize=True,
        evolve=EvolveConfig(
            generations=100,
            population_size=32,
            rollouts_per_candidate=8,
            sigma0=0.5,
            eval_every=25,
            eval_rollouts=512,
            # tau 1.0, not the paper's 1.15: on this M (256 units, 3,000 episodes) three CMA-ES
            # seeds at 1.0 gave C's of 695-846 real steps, two runs at 1.15 381 and 679, one at
            # 1.3 664, one at 0.1 278 (it exploits the dream; BENCHMARKS.md, the temperature table)
            temperature=1.0,
            max_episode_steps=2100,
            # most dreams die within a few hundred steps, a few live to 2,100: step only the
            # live ones
            compact_dreams=True,
            # the generation's best candidate in 16 real episodes every 50 generations: a
            # curve of reality beside the dream's (up to a minute each; C never sees it)
            real_eval_every=50,
            real_eval_episodes=16,
        ),
        # a death is drawn from M's probability each step (the paper's Doom dream); M is trained
        # unweighted, so that probability is calibrated
        dream_termination="sample",
        # float32 on every machine: the quoted C's were trained in float32 dreams (auto took
        # bfloat16 on another CPU and gave 735 ± 454 there; BENCHMARKS.md)
        dream_precision="float32",
        vonly_ablation=False,
        eval_episodes=100,
        # No round of the iterative procedure: at tau 1.0 one (`--iterations 1`: C plays 200
        # episodes, M is fine-tuned on them, C trains again) changed C by -109 and +8 real steps
        # on two V/M runs, inside CMA-ES's spread (at 1.15: +334; BENCHMARKS.md)
        iterations=0,
        iterate_episodes=200,
        iterate_noise=0.3,
        iterate_epochs=15.0,
        dream_checks=True,
    )


def _doom_paper() -> RunConfig:
    """The paper's sizes (10,000 rollouts, z 64, M 512, CMA-ES 64 x 16 in a 2,100-step dream at
    tau 1.15): V, M and the dreams on a GPU when the machine has one (the preset is made there),
    collection with ``dreamlab collect --ray`` on a cluster."""
    cfg = _doom()
    cfg.preset = "doom-takecover-paper"
    cfg.collect_episodes = 10_000
    gpu = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.vae_train = TrainConfig(
        epochs=10, batch_size=100, lr=1e-4, checkpoint_every=2000, device=gpu
    )
    cfg.mdnrnn = MDNRNNConfig(hidden_size=512, termination_pos_weight=1.0)
    cfg.mdnrnn_train = TrainConfig(
        epochs=20, batch_size=100, lr=1e-3, checkpoint_every=2000, device=gpu
    )
    cfg.dream_device = gpu
    cfg.seq_len = 500
    cfg.controller_normalize = False
    cfg.evolve = dataclasses.replace(
        cfg.evolve,
        generations=2000,
        population_size=64,
        rollouts_per_candidate=16,
        sigma0=0.1,
        eval_rollouts=1024,
        real_eval_episodes=64,
        real_eval_backend="processes",
        temperature=1.15,  # the paper's, for its M
    )
    return cfg


def _doom_small() -> RunConfig:
    cfg = _doom()
    cfg.preset = "doom-takecover-small"
    cfg.collect_episodes = 400
    cfg.vae_train = TrainConfig(steps=800, batch_size=100, lr=1e-3, checkpoint_every=200)
    cfg.mdnrnn_train = TrainConfig(steps=800, batch_size=32, lr=1e-3, checkpoint_every=200)
    cfg.evolve = dataclasses.replace(cfg.evolve, generations=40, eval_rollouts=256)
    return cfg


def _doom_debug() -> RunConfig:
    """Seconds of every Doom stage: plumbing only (the slow test)."""
    quiet = {"progress": False, "tensorboard": False, "log_every": 10, "checkpoint_every": 20}
    cfg = _doom()
    cfg.preset = "doom-takecover-debug"
    cfg.collect_episodes = 6
    cfg.vae = VAEConfig(z_dim=16)
    cfg.vae_train = TrainConfig(steps=20, batch_size=16, lr=1e-3, **quiet)
    cfg.mdnrnn = MDNRNNConfig(hidden_size=32, termination_pos_weight=1.0)
    cfg.mdnrnn_train = TrainConfig(steps=20, batch_size=4, lr=1e-3, **quiet)
    cfg.seq_len = 200
    cfg.evolve = dataclasses.replace(
        cfg.evolve,
        generations=2,
        population_size=4,
        rollouts_per_candidate=2,
        eval_every=0,
        max_episode_steps=300,
        real_eval_every=0,
        progress=False,
        tensorboard=False,
    )
    cfg.eval_episodes = 3
    cfg.check_episodes = 3
    cfg.dream_horizon = 10
    cfg.iterations = 1  # the slow test runs the iterative procedure's Doom plumbing too
    cfg.iterate_episodes = 2
    cfg.iterate_epochs = 1.0
    return cfg


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "catch": _catch,
    "catch-debug": _catch_debug,
    "catch-test": _catch_test,
    "carracing": _carracing,
    "carracing-small": _carracing_small,
    "doom-takecover": _doom,
    "doom-takecover-small": _doom_small,
    "doom-takecover-paper": _doom_paper,
    "doom-takecover-debug": _doom_debug,
}
"""preset name -> a function making a fresh :class:`RunConfig`"""


def get_run_preset(name: str) -> RunConfig:
    """A fresh copy of the named pipeline preset."""
    if name not in PRESETS:
        raise RunError(f"unknown pipeline preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()
