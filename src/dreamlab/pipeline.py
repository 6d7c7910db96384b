"""The stages of one run directory, and the one-command pipeline over them.

``runs/NAME/`` holds everything one experiment made::

    config.json          the resolved RunConfig (every stage's settings)
    data/                real episodes (episode store)
    vae/                 V: config.json, model.safetensors, optimizer state, metrics, curves.png,
                         reconstructions.png
    latents/             every episode encoded by V (mu, logvar per frame)
    mdnrnn/              M: same files as vae/
    controller/          C trained in the dream (CMA-ES state, best/mean weights, metrics)
    controller_vonly/    the V-only ablation (C sees z but not M's memory h)
    rounds/R/            with ``iterations`` (the paper's iterative procedure), round R's M and
                         C, and the real episodes that C played (data/, latents/); the last
                         round's M and C are mdnrnn/ and controller/ above
    eval.json            real-env scores of every agent
    dream_vs_real.mp4    real | imagined, open loop; prediction_error.png
    report.md            the summary a person reads

Every stage is resumable and idempotent: run it again and it continues where it stopped (or
returns at once when it is done). So ``pipeline`` simply runs each stage in order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import tyro

from dreamlab.checkpoint import config_from_dict, has_model, load_model, read_config
from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.sampling import FrameSampler
from dreamlab.data.store import EpisodeStore
from dreamlab.dream import dream_feature_stats, frames_to_uint8
from dreamlab.envs import make_env
from dreamlab.envs.policies import make_policy
from dreamlab.eval.report import controller_path, controller_round
from dreamlab.io import atomic_write_json, read_json
from dreamlab.models import frames_to_tensor
from dreamlab.models.controller import Controller, ControllerConfig
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.models.vae import VAE, VAEConfig
from dreamlab.plan.mpc import PlannerAgent, PlannerConfig
from dreamlab.progress import tqdm
from dreamlab.train.encode import encode_store
from dreamlab.train.evolve import EvolveConfig, evolve, make_evaluator
from dreamlab.train.fit import TrainConfig, fit, frame_batches, sequence_batches
from dreamlab.viz import save_image_grid
from dreamlab.worldmodel import VMWorldModel, memory_start_latents, start_latents_from_store

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
    "report",
)
Stage = Literal[
    "collect",
    "vae",
    "encode",
    "mdnrnn",
    "controller",
    "iterate",
    "controller_vonly",
    "evaluate",
    "dream",
    "report",
]


class RunError(ValueError):
    """A run directory is missing a stage's input or holds a conflicting config."""


@dataclass
class RunConfig:
    """Every setting of one experiment; saved as ``runs/NAME/config.json``."""

    preset: str = "catch"
    """name of the preset these settings started from"""
    env: str = "catch"
    """environment: preset name, registered Gymnasium id, or pkg.module:Class"""
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
    explore_generations: int | None = None
    """CMA-ES generations of the C's of rounds before the last (they only play to collect
    data), in one run without restarts; default: the controller's settings"""
    dream_precision: Literal["float32", "bfloat16", "auto"] = "float32"
    """precision of M's matmuls in C's training dreams: 'auto' = bfloat16 on a GPU that has
    it, and on a CPU whichever of the two steps the dream faster there (measured at the start
    of each CMA-ES run; 1.6x faster on one CPU, 1.5x slower on another). C acts in reality
    with a float32 M either way"""
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
    dream_horizon: int = 30
    """open-loop steps in the dream-vs-reality video"""
    dream_context: int = 2
    """real frames the model sees before it dreams in that video"""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config.json") -> RunConfig:
        nested = {
            "vae": VAEConfig,
            "vae_train": TrainConfig,
            "mdnrnn": MDNRNNConfig,
            "mdnrnn_train": TrainConfig,
            "evolve": EvolveConfig,
        }
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RunError(f"{source}: unknown fields {unknown}")
        values = dict(data)
        for name, klass in nested.items():
            if name in values:
                values[name] = config_from_dict(klass, values[name], f"{source}:{name}")
        return cls(**values)


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
        # bfloat16 dreams where they are faster on this machine (measured; BENCHMARKS.md)
        dream_precision="auto",
        eval_episodes=100,
        vonly_generations=50,
    )


def _catch_debug() -> RunConfig:
    cfg = _catch()
    cfg.preset = "catch-debug"
    cfg.collect_episodes = 20
    cfg.vae_train = TrainConfig(
        steps=30,
        batch_size=32,
        lr=1e-3,
        log_every=10,
        checkpoint_every=20,
        progress=False,
        tensorboard=False,
    )
    cfg.mdnrnn = MDNRNNConfig(hidden_size=32)
    cfg.mdnrnn_train = TrainConfig(
        steps=30,
        batch_size=8,
        lr=1e-3,
        log_every=10,
        checkpoint_every=20,
        progress=False,
        tensorboard=False,
    )
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
    """Catch on 32x32 frames with small V and M: the whole pipeline learns in about a minute."""
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
        evolve=EvolveConfig(
            generations=60,
            population_size=16,
            rollouts_per_candidate=8,
            eval_every=10,
            eval_rollouts=64,
            temperature=1.2,
            max_episode_steps=80,
            progress=False,
            tensorboard=False,
        ),
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
    return RunConfig(
        preset="doom-takecover",
        env="doom-takecover",
        collect_episodes=10_000,
        collect_policy="random",
        vae=VAEConfig(z_dim=64),
        vae_train=TrainConfig(epochs=10, batch_size=100, lr=1e-4, checkpoint_every=2000),
        mdnrnn=MDNRNNConfig(hidden_size=512),
        mdnrnn_train=TrainConfig(epochs=20, batch_size=100, lr=1e-3, checkpoint_every=2000),
        seq_len=500,
        evolve=EvolveConfig(
            generations=2000,
            population_size=64,
            rollouts_per_candidate=16,
            eval_every=25,
            eval_rollouts=1024,
            temperature=1.15,
            max_episode_steps=2100,
            real_eval_every=25,
            real_eval_episodes=64,
        ),
        dream_termination="sample",
        vonly_ablation=False,
        eval_episodes=100,
    )


def _doom_small() -> RunConfig:
    cfg = _doom()
    cfg.preset = "doom-takecover-small"
    cfg.collect_episodes = 400
    cfg.vae_train = TrainConfig(epochs=2, batch_size=100, lr=1e-3, checkpoint_every=500)
    cfg.mdnrnn = MDNRNNConfig(hidden_size=256)
    cfg.mdnrnn_train = TrainConfig(epochs=10, batch_size=32, lr=1e-3, checkpoint_every=500)
    cfg.seq_len = 64
    cfg.evolve = dataclasses.replace(
        cfg.evolve,
        generations=100,
        population_size=32,
        rollouts_per_candidate=8,
        eval_every=25,
        eval_rollouts=256,
        real_eval_every=25,
        real_eval_episodes=16,
    )
    cfg.eval_episodes = 100
    return cfg


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "catch": _catch,
    "catch-debug": _catch_debug,
    "catch-test": _catch_test,
    "carracing": _carracing,
    "carracing-small": _carracing_small,
    "doom-takecover": _doom,
    "doom-takecover-small": _doom_small,
}


def get_run_preset(name: str) -> RunConfig:
    """A fresh copy of the named pipeline preset."""
    if name not in PRESETS:
        raise RunError(f"unknown pipeline preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()


# ------------------------------------------------------------------------------------ run dir
class Run:
    """A run directory and its resolved config."""

    def __init__(self, path: str | Path, config: RunConfig) -> None:
        self.path = Path(path)
        self.config = config
        self._action_space: Any = None

    @classmethod
    def open(cls, path: str | Path, preset: str | None = None) -> Run:
        """Open ``path``; create it from ``preset`` if it has no config yet.

        A run that exists keeps its own config: a different ``preset`` is an error, so that one
        directory never mixes two experiments.
        """
        root = Path(path)
        cfg_path = root / "config.json"
        if cfg_path.exists():
            config = RunConfig.from_json(read_json(cfg_path, "run config"), str(cfg_path))
            if preset is not None and preset != config.preset:
                raise RunError(
                    f"{root} was made with preset {config.preset!r}, not {preset!r}; use another "
                    "--run directory"
                )
            return cls(root, config)
        if preset is None:
            raise RunError(f"{root}: no config.json; start it with --preset NAME")
        run = cls(root, get_run_preset(preset))
        run.save_config()
        return run

    def save_config(self) -> None:
        atomic_write_json(self.path / "config.json", self.config.to_json())

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --------------------------------------------------------------- stage bookkeeping
    def record_time(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to the stage's wall time in ``timings.json`` (sums over resumes)."""
        path = self.path / "timings.json"
        times = read_json(path, "timings") if path.exists() else {}
        times[stage] = round(times.get(stage, 0.0) + seconds, 2)
        atomic_write_json(path, times)

    def timings(self) -> dict[str, float]:
        path = self.path / "timings.json"
        return read_json(path, "timings") if path.exists() else {}

    # --------------------------------------------------------------- loaders
    def data(self) -> EpisodeStore:
        if not (self.path / "data" / "store.json").exists():
            raise RunError(f"{self.path}: no episodes yet; run `dreamlab collect` first")
        return EpisodeStore.open(self.path / "data")

    def latents(self) -> EpisodeStore:
        if not (self.path / "latents" / "store.json").exists():
            raise RunError(f"{self.path}: no latents yet; run `dreamlab encode` first")
        return EpisodeStore.open(self.path / "latents")

    def model_dir(self, name: str, what: str, command: str) -> Path:
        """``RUN/name`` if it holds a checkpoint, else a clear error naming the stage to run."""
        if not has_model(self.path / name):
            raise RunError(f"{self.path}: no {what}; run `dreamlab {command}` first")
        return self.path / name

    def vae(self) -> VAE:
        return load_model(self.model_dir("vae", "trained V", "train-vae"))

    def vae_config(self) -> VAEConfig:
        """V's config without loading its weights."""
        return read_config(self.model_dir("vae", "trained V", "train-vae"))[1]

    def round_dir(self, round_: int | None = None) -> Path:
        """Where round ``round_`` of the iterative procedure keeps its M, its C and the real
        episodes that C played: ``rounds/R/``. The last round (``None``, or ``iterations``) is
        the run directory itself, so a run without iterations has only that one."""
        last = self.config.iterations
        if round_ is None or round_ == last:
            return self.path
        if not 0 <= round_ < last:
            raise RunError(f"{self.path}: round {round_} outside 0..{last} (iterations={last})")
        return self.path / "rounds" / str(round_)

    def round_latents(self, round_: int | None = None) -> list[EpisodeStore]:
        """The real data of round ``round_``'s M and dream starts: ``latents/`` (the collected
        episodes), then the episodes each earlier round's C played."""
        last = self.config.iterations if round_ is None else round_
        stores = [self.latents()]
        for r in range(last):
            path = self.round_dir(r) / "latents"
            if not (path / "store.json").exists():
                raise RunError(
                    f"{self.path}: round {r}'s C has not played yet (no {path}); run "
                    "`dreamlab pipeline` (its iterate stage)"
                )
            stores.append(EpisodeStore.open(path))
        return stores

    def mdnrnn(self, round_: int | None = None) -> MDNRNN:
        rel = (self.round_dir(round_) / "mdnrnn").relative_to(self.path)
        iterated = round_ is None and self.config.iterations > 0
        command = "pipeline --until iterate" if iterated else "train-mdnrnn"
        return load_model(self.model_dir(str(rel), "trained M", command))

    def controller(self, name: str = "controller") -> Controller:
        return load_model(self.model_dir(name, name, "train-controller"))

    def action_space(self) -> Any:
        """The env's action space; the env (a VizDoom or Box2D process for some presets) is
        made once per ``Run``, not at every stage that needs the space."""
        if self._action_space is None:
            env = make_env(self.config.env)
            try:
                self._action_space = env.action_space
            finally:
                env.close()
        return self._action_space

    def world_model(
        self,
        features: Literal["zh", "z"] = "zh",
        precision: Literal["float32", "bfloat16"] = "float32",
        round_: int | None = None,
    ) -> VMWorldModel:
        """V with the M of round ``round_`` (default: the last, ``mdnrnn/``)."""
        return VMWorldModel(
            self.vae(),
            self.mdnrnn(round_),
            self.action_space(),
            features=features,
            termination=self.config.dream_termination,
            precision=precision,
        )


def _timed(run: Run, stage: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        run.record_time(stage, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ stages
def stage_collect(run: Run, progress: bool = True) -> Any:
    """Collect ``collect_episodes`` real episodes into ``data/`` (appends what is missing)."""
    cfg = run.config
    return _timed(
        run,
        "collect",
        lambda: collect(
            CollectConfig(
                env=cfg.env,
                out=run / "data",
                episodes=cfg.collect_episodes,
                policy=cfg.collect_policy,
                seed=cfg.seed,
                progress=progress,
            )
        ),
    )


def stage_vae(run: Run) -> Any:
    """Train V on shuffled frames of ``data/``; write reconstructions and learning curves."""
    cfg = run.config
    store = run.data()
    frame_shape = store.meta.obs_shape
    vcfg = dataclasses.replace(cfg.vae, frame_size=int(frame_shape[0]))
    torch.manual_seed(cfg.seed)
    vae = VAE(vcfg)
    batches = frame_batches(store, cfg.vae_train.batch_size, seed=cfg.seed)
    total = cfg.vae_train.resolve_steps(store.num_frames)

    def train() -> Any:
        result = fit(vae, batches, cfg.vae_train, run / "vae", total_steps=total, stage="vae")
        real = FrameSampler(store, 10, seed=cfg.seed).sample()  # (10, H, W, 3)
        vae.eval()
        with torch.inference_mode():
            recon, _, _ = vae(frames_to_tensor(real))
        recon_u8 = frames_to_uint8(recon)  # (10, H, W, 3)
        save_image_grid(
            run / "vae" / "reconstructions.png", [real, recon_u8], labels=["real", "V(real)"]
        )
        return result

    return _timed(run, "vae", train)


def stage_encode(run: Run, progress: bool = True) -> EpisodeStore:
    """Encode every episode with V into ``latents/`` (skips episodes already encoded)."""
    return _timed(
        run,
        "encode",
        lambda: encode_store(
            run.vae(), run.data(), run / "latents", vae_source=str(run / "vae"), progress=progress
        ),
    )


def stage_mdnrnn(run: Run) -> Any:
    """Train M on sub-sequences of ``latents/`` (into ``rounds/0/mdnrnn/`` when the run
    iterates: the later rounds fine-tune it, see :func:`stage_iterate`)."""
    cfg = run.config
    latents = run.latents()
    vae_cfg = run.vae_config()  # M needs V's z size, not its weights
    space = run.action_space()
    action_dim = int(space.n) if hasattr(space, "n") else int(np.prod(space.shape))
    mcfg = dataclasses.replace(cfg.mdnrnn, z_dim=vae_cfg.z_dim, action_dim=action_dim)
    torch.manual_seed(cfg.seed)
    model = MDNRNN(mcfg)
    batches = sequence_batches(latents, cfg.seq_len, cfg.mdnrnn_train.batch_size, seed=cfg.seed)
    # One epoch = as many sequences as it takes to see every step once.
    total = cfg.mdnrnn_train.resolve_steps(max(1, latents.num_steps // cfg.seq_len))

    return _timed(
        run,
        "mdnrnn",
        lambda: fit(
            model,
            batches,
            cfg.mdnrnn_train,
            run.round_dir(0) / "mdnrnn",
            total_steps=total,
            stage="mdnrnn",
        ),
    )


def dream_precision(
    setting: Literal["float32", "bfloat16", "auto"],
    world_model_at: Callable[[Literal["float32", "bfloat16"]], VMWorldModel] | None = None,
    num_dreams: int = 512,
) -> Literal["float32", "bfloat16"]:
    """``RunConfig.dream_precision`` resolved for this machine.

    ``auto`` is bfloat16 on a CUDA GPU that supports it. On a CPU it is measured: where oneDNN
    has bfloat16 kernels, ``num_dreams`` dreams of ``world_model_at(precision)`` are stepped in
    each precision and bfloat16 is used where it is clearly faster (``BFLOAT16_MARGIN``).
    Autocast converts M's weights at every step, and whether bfloat16 pays for that depends on
    the CPU: 2.0x faster on one of this project's machines, 1.5x slower on another
    (BENCHMARKS.md). Without ``world_model_at`` a CPU gets float32.
    """
    if setting not in ("float32", "bfloat16", "auto"):
        raise RunError(f"dream_precision must be float32, bfloat16 or auto, got {setting!r}")
    if setting != "auto":
        return setting
    if world_model_at is None:
        return "float32"
    device = world_model_at("float32").device
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if not cpu_has_bfloat16():
        return "float32"
    float32 = dream_step_seconds(world_model_at("float32"), num_dreams)
    bfloat16 = dream_step_seconds(world_model_at("bfloat16"), num_dreams)
    # a clear margin, so that a busy moment during the probe does not flip the choice (and
    # with it the run's numbers) from one run to the next on the same machine
    return "bfloat16" if bfloat16 * BFLOAT16_MARGIN < float32 else "float32"


BFLOAT16_MARGIN = 1.25
"""``auto`` picks bfloat16 only where its dream steps are this many times faster"""


def cpu_has_bfloat16() -> bool:
    """Whether this CPU's oneDNN has bfloat16 kernels (AVX512-BF16, AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@torch.inference_mode()
def dream_step_seconds(world_model: VMWorldModel, num_dreams: int, steps: int = 12) -> float:
    """Median seconds of one step of ``num_dreams`` dreams (after two warm-up steps)."""
    state = world_model.initial_state(num_dreams)
    action = world_model.encode_action(torch.zeros(num_dreams, world_model.action_dim))
    generator = torch.Generator(device=world_model.device).manual_seed(0)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        state, _, _ = world_model.step(state, action, 1.0, generator)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def dream_start_bank(run: Run, world_model: VMWorldModel, round_: int | None = None) -> Any:
    """Where round ``round_``'s C dreams begin (``dream_starts``): rows of every real episode
    that round's M trained on (the collected ones, then what earlier rounds' C played)."""
    cfg = run.config
    banks = []
    for store in run.round_latents(round_):
        if cfg.dream_starts == "memory":
            banks.append(memory_start_latents(world_model, store))
        else:
            banks.append(start_latents_from_store(store, frames=cfg.dream_starts))
    return {key: torch.cat([bank[key] for bank in banks]) for key in banks[0]}


def _check_iterations(cfg: RunConfig) -> None:
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
    from dreamlab.agent import WorldModelAgent
    from dreamlab.envs.policies import NoisyPolicy
    from dreamlab.eval.evaluate import evaluate_policy

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
        agent = WorldModelAgent(run.world_model("zh", round_=round_), run.controller(name))
        policy = NoisyPolicy(agent, run.action_space(), cfg.iterate_noise, seed=seed)
        result = evaluate_policy(
            lambda: make_env(cfg.env),
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
        stores, cfg.seq_len, cfg.mdnrnn_train.batch_size, seed=cfg.seed + round_
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
        _timed(run, f"round{r}_explore", lambda r=r: stage_explore(run, r - 1, progress))
        _timed(run, f"round{r}_mdnrnn", lambda r=r: stage_finetune_mdnrnn(run, r))
        ecfg = cfg.evolve if r == cfg.iterations else _explore_evolve(cfg)
        stage_controller(run, "zh", ecfg, round_=r)


def _controller_config(run: Run, world_model: VMWorldModel, inputs: Literal["zh", "z"]) -> Any:
    cfg = run.config
    return ControllerConfig.from_action_space(
        world_model.feature_dim,
        run.action_space(),
        mapping=cfg.controller_mapping,
        hidden_size=cfg.controller_hidden,
        inputs=inputs,
    )


def stage_controller(
    run: Run,
    inputs: Literal["zh", "z"] = "zh",
    evolve_cfg: EvolveConfig | None = None,
    *,
    pessimism: float | None = None,
    name: str | None = None,
    round_: int | None = None,
) -> Any:
    """Train C by CMA-ES (in the dream by default) into ``controller/`` (or ``controller_vonly/``).

    ``pessimism`` (lambda >= 0) trains in the dream of the run's ensemble of M with the reward
    ``r - lambda * disagreement`` (docs/uncertainty.md); ``name`` picks another directory. With
    ``evolve.restarts > 1`` the restarts are raced first (:func:`race_restarts`) and the winner
    continues to ``evolve.generations``. ``round_`` trains an earlier round's C of the
    iterative procedure, in that round's dream, into ``rounds/R/controller/``.
    """
    cfg = run.config
    ecfg = evolve_cfg or cfg.evolve
    if cfg.dream_starts not in ("first", "all", "memory"):
        raise RunError(f"dream_starts must be 'first', 'all' or 'memory', got {cfg.dream_starts!r}")
    last = round_ is None or round_ == cfg.iterations
    if not last and pessimism is not None:
        raise RunError("--pessimism trains the last round's C (the ensemble is of the last M)")
    if name is None:
        name = "controller" if inputs == "zh" else "controller_vonly"
        if not last:
            name = str((run.round_dir(round_) / name).relative_to(run.path))
    key = name if last else f"round{round_}_controller"
    rnd = None if last else round_

    def work() -> Any:
        seed = race_restarts(run, inputs, ecfg, name, pessimism, rnd) if ecfg.restarts > 1 else None
        final = ecfg if seed is None else dataclasses.replace(ecfg, seed=seed, restarts=1)
        return _evolve_controller(run, inputs, final, name, pessimism, rnd)

    return _timed(run, key, work)


RESTARTS_FILE = "restarts.json"


def _restart_job(
    run_path: str,
    inputs: Literal["zh", "z"],
    ecfg: EvolveConfig,
    name: str,
    pessimism: float | None,
    round_: int | None = None,
) -> float:
    """One raced restart: returns the best many-rollout score of its mean."""
    result = _evolve_controller(Run.open(Path(run_path)), inputs, ecfg, name, pessimism, round_)
    if result.best_eval_return is None:
        raise RunError(f"restart {name}: no evaluation of the mean ran")
    return float(result.best_eval_return)


def race_restarts(
    run: Run,
    inputs: Literal["zh", "z"],
    ecfg: EvolveConfig,
    name: str,
    pessimism: float | None = None,
    round_: int | None = None,
) -> int:
    """Race ``ecfg.restarts`` CMA-ES runs and seed ``run/name`` with the winner's state.

    Restart r (seed ``ecfg.seed + r``) runs ``restart_generations`` generations in
    ``run/name/restarts/seed_S/``; dream backends run them in parallel processes, one per CPU
    core (the batched dream does not get faster with more threads; on a machine whose cores
    share one physical core, as this project's 2-core one, processes do not help either;
    BENCHMARKS.md). The restart
    whose mean scored best on ``eval_rollouts`` episodes is copied into ``run/name/`` (CMA-ES state
    last, so its presence marks a finished copy), and its seed is returned: continuing with that
    seed resumes the winner exactly. Killed at any point, a rerun resumes each restart, or skips
    the race when the copy was finished.
    """
    import os
    import shutil
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from dreamlab.io import atomic_path
    from dreamlab.train.evaluators import child_threads
    from dreamlab.train.evolve import STATE_FILE

    out = run / name
    record = out / RESTARTS_FILE
    if (out / STATE_FILE).exists():
        if not record.exists():
            raise RunError(
                f"{out} holds a CMA-ES state from a run without restarts; use another --name or "
                "remove the directory"
            )
        return int(read_json(record)["chosen_seed"])
    probe = dataclasses.replace(
        ecfg, generations=ecfg.restart_generations, restarts=1, progress=False, tensorboard=False
    )
    seeds = [ecfg.seed + r for r in range(ecfg.restarts)]
    names = {seed: f"{name}/restarts/seed_{seed}" for seed in seeds}
    jobs = {seed: dataclasses.replace(probe, seed=seed) for seed in seeds}
    workers = min(len(seeds), os.cpu_count() or 1) if ecfg.backend == "dream" else 1
    print(
        f"[dreamlab] racing {len(seeds)} CMA-ES restarts for {probe.generations} generations "
        f"({workers} at a time)",
        flush=True,
    )
    scores: dict[int, float] = {}
    bar = tqdm(total=len(seeds), desc="restarts", unit="run", disable=not ecfg.progress)
    try:
        if workers == 1:
            for seed in seeds:
                scores[seed] = _restart_job(
                    str(run.path), inputs, jobs[seed], names[seed], pessimism, round_
                )
                bar.update(1)
        else:
            # one torch thread per worker process: the processes share the cores
            with ProcessPoolExecutor(
                workers,
                mp_context=get_context("spawn"),
                initializer=torch.set_num_threads,
                initargs=(1,),
            ) as pool:
                with child_threads(1):  # the workers start at these submits
                    futures = {
                        seed: pool.submit(
                            _restart_job,
                            str(run.path),
                            inputs,
                            jobs[seed],
                            names[seed],
                            pessimism,
                            round_,
                        )
                        for seed in seeds
                    }
                for seed, future in futures.items():
                    scores[seed] = future.result()
                    bar.update(1)
    finally:
        bar.close()
    chosen = max(seeds, key=lambda s: scores[s])
    for seed in seeds:
        mark = "  <- continues" if seed == chosen else ""
        print(f"[dreamlab]   seed {seed}: mean scores {scores[seed]:.3f} in the dream{mark}")
    atomic_write_json(
        record,
        {
            "restart_generations": probe.generations,
            "scores": {str(s): scores[s] for s in seeds},
            "chosen_seed": chosen,
        },
    )
    winner = run / names[chosen]
    files = sorted(p for p in winner.iterdir() if p.is_file() and p.name != STATE_FILE)
    for src in [*files, winner / STATE_FILE]:
        with atomic_path(out / src.name, suffix=src.suffix) as tmp:
            shutil.copyfile(src, tmp)
    return chosen


def _evolve_controller(
    run: Run,
    inputs: Literal["zh", "z"],
    ecfg: EvolveConfig,
    name: str,
    pessimism: float | None,
    round_: int | None = None,
) -> Any:
    from dreamlab.agent import WorldModelAgentFactory
    from dreamlab.train.evaluators import EnvRollout, LocalEvaluator
    from dreamlab.uncertainty import controller_world_model

    cfg = run.config
    if pessimism is not None:
        world_model = controller_world_model(run, inputs, pessimism)
    else:
        # Run loads V and M on the CPU
        precision = dream_precision(
            cfg.dream_precision,
            lambda p: run.world_model(inputs, p, round_),
            ecfg.population_size * ecfg.rollouts_per_candidate,
        )
        world_model = run.world_model(inputs, precision, round_)
    ccfg = _controller_config(run, world_model, inputs)
    if cfg.dream_starts == "memory" and pessimism is not None:
        raise RunError(
            "dream_starts='memory' computes one M's memory; the ensemble's dream "
            "(--pessimism) keeps one per member, so use dream_starts='all' with it"
        )
    start = dream_start_bank(run, world_model, round_)
    if cfg.controller_normalize:
        saved = read_config(run / name)[1] if has_model(run / name) else None
        if saved is not None and saved.normalizes_inputs and saved.feature_dim == ccfg.feature_dim:
            # resuming: keep the statistics the saved CMA-ES state was searched under
            mean_list, std_list = saved.input_mean, saved.input_std
        else:
            mean, std = dream_feature_stats(
                world_model, start, run.action_space(), temperature=ecfg.temperature, seed=cfg.seed
            )
            mean_list, std_list = mean.tolist(), std.tolist()
        ccfg = dataclasses.replace(ccfg, input_mean=mean_list, input_std=std_list)
    torch.manual_seed(cfg.seed)
    controller = Controller(ccfg)
    rollout = EnvRollout(
        cfg.env,
        WorldModelAgentFactory(run / "vae", run.round_dir(round_) / "mdnrnn", ccfg),
        # the real check plays whole episodes even when training dreams are short
        max_episode_steps=ecfg.max_episode_steps if ecfg.backend != "dream" else None,
    )
    backend = make_evaluator(
        ecfg, controller, world_model=world_model, start_latents=start, rollout=rollout
    )
    real: Any = None
    if ecfg.real_eval_every and ecfg.backend == "dream":
        if ecfg.real_eval_backend == "local":
            real = LocalEvaluator(rollout)
        else:
            real = make_evaluator(
                dataclasses.replace(ecfg, backend="processes"), controller, rollout=rollout
            )
    try:
        return evolve(controller, backend, ecfg, run / name, real_backend=real)
    finally:
        backend.close()
        if real is not None:
            real.close()


def _agent(
    run: Run,
    which: str,
    planner: PlannerConfig | None = None,
    pessimism: float | None = None,
    precision: Literal["float32", "bfloat16"] = "float32",
) -> Any:
    """The policy called ``which``: random, expert, controller, controller_vonly, bc, bc_latent,
    or planner (CEM/MPPI in the run's dream; in the ensemble's with ``pessimism``)."""
    from dreamlab.agent import WorldModelAgent

    if which in ("random", "expert"):
        return make_policy(which, run.action_space(), seed=run.config.seed)
    if which in ("bc", "bc_latent"):
        from dreamlab.bc.policy import BCPolicy

        # bc_latent reads the V+M recorded in its bc.json (`dreamlab train-bc --inputs latent`)
        return BCPolicy.load(run.model_dir(which, f"{which} policy", "train-bc"))
    if which == "planner":
        from dreamlab.uncertainty import controller_world_model

        world_model = (
            run.world_model("zh", precision)
            if pessimism is None
            else controller_world_model(run, "zh", pessimism)
        )
        return PlannerAgent(world_model, run.action_space(), planner)
    features: Literal["zh", "z"] = "z" if which == "controller_vonly" else "zh"
    round_ = controller_round(which)
    return WorldModelAgent(
        run.world_model(features, round_=round_), run.controller(controller_path(which))
    )


def evaluate_agent(
    run: Run,
    which: str,
    episodes: int,
    *,
    video: bool = True,
    progress: bool = True,
    planner: PlannerConfig | None = None,
    pessimism: float | None = None,
    precision: Literal["float32", "bfloat16"] = "float32",
) -> dict[str, Any]:
    """Score one agent in the real env; write ``eval_<which>_{best,worst}.mp4``.

    A planner's entry also records its settings and speed (``planning``: median ms per batched
    call, decisions per second over the evaluation's lockstep batch).
    """
    from dreamlab.eval.evaluate import evaluate_policy
    from dreamlab.viz import write_video

    cfg = run.config
    policy = _agent(run, which, planner, pessimism, precision)
    result = evaluate_policy(
        lambda: make_env(cfg.env),
        policy,
        episodes,
        env_name=cfg.env,
        seed=cfg.seed + 10_000,
        record=video,
        progress=progress,
    )
    summary = {"agent": which, **result.summary()}
    if isinstance(policy, PlannerAgent):
        summary["planner"] = policy.config.to_dict()
        summary["pessimism"] = pessimism
        summary["precision"] = precision
        summary["planning"] = policy.timing()
    if video and result.best_frames is not None and result.worst_frames is not None:
        write_video(run / f"eval_{which}_best.mp4", result.best_frames, fps=15)
        write_video(run / f"eval_{which}_worst.mp4", result.worst_frames, fps=15)
        summary["videos"] = [f"eval_{which}_best.mp4", f"eval_{which}_worst.mp4"]
    return summary


def _vonly_evolve(cfg: RunConfig) -> EvolveConfig:
    """The V-only ablation's CMA-ES settings: the run's, or with ``vonly_generations`` one run of
    that many generations (no race: its dream score plateaus early for every seed)."""
    if cfg.vonly_generations is None:
        return cfg.evolve
    return dataclasses.replace(cfg.evolve, generations=cfg.vonly_generations, restarts=1)


def stage_evaluate(
    run: Run,
    agents: list[str] | None = None,
    episodes: int | None = None,
    progress: bool = True,
    *,
    planner: PlannerConfig | None = None,
    pessimism: float | None = None,
    precision: Literal["float32", "bfloat16"] = "float32",
) -> dict[str, Any]:
    """Evaluate every available agent in the real env; write ``eval.json``.

    ``eval.json`` keeps the controller's numbers at the top level (``env``, ``episodes``,
    ``mean_return``, ``std_return``, ``catch_rate`` for Catch) and every agent under ``agents``.
    """
    cfg = run.config
    n = episodes or cfg.eval_episodes
    if agents is None:
        # what iterating bought: each earlier round's C, scored like the final one
        agents = ["random", *(f"controller_round{r}" for r in range(cfg.iterations)), "controller"]
        if cfg.vonly_ablation and has_model(run / "controller_vonly"):
            agents.append("controller_vonly")
        if cfg.env.startswith("catch") or "Catch" in cfg.env:
            agents.insert(1, "expert")

    def work() -> dict[str, Any]:
        path = run / "eval.json"
        previous = read_json(path, "eval") if path.exists() else {"agents": {}}
        scores = dict(previous.get("agents", {}))
        for which in agents:
            scores[which] = evaluate_agent(
                run,
                which,
                n,
                progress=progress,
                planner=planner,
                pessimism=pessimism,
                precision=precision,
            )
        main = scores.get("controller") or next(iter(scores.values()))
        out = {k: v for k, v in main.items() if k not in ("agent", "videos")}
        out["agents"] = scores
        atomic_write_json(path, out)
        return out

    return _timed(run, "evaluate", work)


def stage_dream(run: Run) -> dict[str, Any]:
    """Dream vs reality: open-loop video and prediction error against the horizon."""
    from dreamlab.eval.dream_vs_real import dream_vs_real

    cfg = run.config
    store = run.data()
    need = cfg.dream_context + cfg.dream_horizon - 1
    rng = np.random.default_rng(cfg.seed)
    candidates = [i for i, n in zip(store.indices, store.lengths, strict=True) if n >= need]
    if not candidates:
        raise RunError(f"{run.path}: no episode has {need} steps for the dream-vs-real video")
    chosen = rng.choice(candidates, size=min(16, len(candidates)), replace=False)
    episodes = [store.episode(int(i)) for i in sorted(chosen)]
    return _timed(
        run,
        "dream",
        lambda: dream_vs_real(
            run.world_model(),
            episodes,
            run.path,
            context=cfg.dream_context,
            horizon=cfg.dream_horizon,
            temperature=cfg.evolve.temperature,
            seed=cfg.seed,
        ),
    )


@dataclass
class PipelineConfig:
    """Run every stage of a world-model experiment in one run directory, resumably."""

    run: Path = Path("runs/demo")
    """run directory (created from --preset, or resumed)"""
    preset: str = "catch"
    """pipeline preset: catch, catch-debug, carracing, carracing-small, doom-takecover, doom-takecover-small; Dreamer: catch-dreamer, carracing-dreamer (docs/dreamer.md)"""
    until: Stage = "report"
    """stop after this stage"""
    progress: bool = True
    """show progress bars"""
    iterations: int | None = None
    """rounds of the paper's iterative procedure (C plays, M is fine-tuned, C trains again);
    default: the preset's (catch: 1). Set when the run directory is created"""
    seed: int | None = None
    """seed of every stage, CMA-ES's included (default: the preset's, 0). Set when the run
    directory is created"""


def run_pipeline(cfg: PipelineConfig) -> Run | Path:
    """collect -> V -> encode -> M -> C in the dream (+ V-only ablation) -> evaluate -> report.

    Dreamer presets (``catch-dreamer``, ``carracing-dreamer``, see
    :mod:`dreamlab.dreamer_pipeline`) and Dreamer run directories run the online Dreamer loop
    instead; that returns the run directory's path.
    """
    from dreamlab.dreamer_pipeline import DREAMER_PRESETS, is_dreamer_run, run_dreamer_pipeline
    from dreamlab.eval.report import write_report

    if cfg.preset in DREAMER_PRESETS or is_dreamer_run(cfg.run):
        preset = cfg.preset if cfg.preset in DREAMER_PRESETS else None
        return run_dreamer_pipeline(cfg.run, preset, cfg.progress)
    if cfg.iterations is not None and cfg.iterations < 0:
        raise RunError(f"--iterations must be >= 0, got {cfg.iterations}")
    fresh = not (Path(cfg.run) / "config.json").exists()
    run = Run.open(cfg.run, cfg.preset)
    if cfg.iterations is not None and cfg.iterations != run.config.iterations:
        if not fresh:
            raise RunError(
                f"{run.path} was made with iterations={run.config.iterations}; its M and C "
                "live where that number puts them, so use another --run directory"
            )
        run.config.iterations = cfg.iterations
        run.save_config()
    if cfg.seed is not None and cfg.seed != run.config.seed:
        if not fresh:
            raise RunError(
                f"{run.path} was made with seed={run.config.seed}; a run directory holds one "
                "seed's models, so use another --run directory"
            )
        run.config.seed = cfg.seed
        run.config.evolve.seed = cfg.seed  # CMA-ES too: one --seed changes every stage
        run.save_config()
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("collect", lambda: stage_collect(run, cfg.progress)),
        ("vae", lambda: stage_vae(run)),
        ("encode", lambda: stage_encode(run, cfg.progress)),
        ("mdnrnn", lambda: stage_mdnrnn(run)),
        ("controller", lambda: stage_first_controller(run)),
        ("iterate", lambda: stage_iterate(run, cfg.progress)),
        (
            "controller_vonly",
            lambda: (
                stage_controller(run, "z", _vonly_evolve(run.config))
                if run.config.vonly_ablation
                else None
            ),
        ),
        ("evaluate", lambda: stage_evaluate(run, progress=cfg.progress)),
        ("dream", lambda: stage_dream(run)),
        ("report", lambda: write_report(run)),
    ]
    t0 = time.perf_counter()
    for name, fn in steps:
        print(f"[dreamlab] stage {name} ({run.path})", flush=True)
        fn()
        if name == cfg.until:
            break
    print(
        f"[dreamlab] pipeline done in {time.perf_counter() - t0:.0f} s: {run.path}/report.md",
        flush=True,
    )
    return run


# ------------------------------------------------------------------------------------ commands
# Each dataclass below is both a CLI command's arguments and the argument of the library function
# beside it: `dreamlab train-vae --run R --epochs 5` is `train_vae(TrainVAEArgs(run=R, epochs=5))`.
# Overrides given on the command line are written into the run's config.json, so the file always
# says what was run.


@dataclass
class TrainVAEArgs:
    """Train V (the VAE) on the run's episodes."""

    run: Path
    """run directory holding data/ (from `dreamlab collect`)"""
    preset: str | None = None
    """pipeline preset for a run without config.json (default: catch)"""
    epochs: float | None = None
    """passes over the frames (overrides the preset)"""
    steps: int | None = None
    """optimizer steps (overrides epochs)"""
    batch_size: int | None = None
    """frames per step"""
    lr: float | None = None
    """learning rate"""
    z_dim: int | None = None
    """size of z"""
    kl_tolerance: float | None = None
    """KL floor as a fraction of z_dim nats (0 disables)"""


def _open_for_stage(run: Path, preset: str | None) -> Run:
    if (Path(run) / "config.json").exists():
        return Run.open(run, preset)
    return Run.open(run, preset or "catch")


def _override(obj: Any, **values: Any) -> Any:
    """``dataclasses.replace`` with only the values that are not None."""
    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(obj, **given) if given else obj


def train_vae(args: TrainVAEArgs) -> Any:
    run = _open_for_stage(args.run, args.preset)
    cfg = run.config
    cfg.vae_train = _override(
        cfg.vae_train, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr
    )
    cfg.vae = _override(cfg.vae, z_dim=args.z_dim, kl_tolerance=args.kl_tolerance)
    run.save_config()
    return stage_vae(run)


@dataclass
class EncodeArgs:
    """Encode every episode with V into latents/ (mu, logvar per frame)."""

    run: Path
    """run directory holding data/ and vae/"""


def encode(args: EncodeArgs) -> EpisodeStore:
    return stage_encode(Run.open(args.run))


@dataclass
class TrainMDNRNNArgs:
    """Train M (the MDN-RNN) on the run's latents."""

    run: Path
    """run directory holding latents/ (from `dreamlab encode`)"""
    epochs: float | None = None
    """passes over the steps (overrides the preset)"""
    steps: int | None = None
    """optimizer steps (overrides epochs)"""
    batch_size: int | None = None
    """sequences per step"""
    seq_len: int | None = None
    """steps per training sequence"""
    hidden_size: int | None = None
    """LSTM size"""
    num_mixtures: int | None = None
    """Gaussians per latent dimension"""


def train_mdnrnn(args: TrainMDNRNNArgs) -> Any:
    run = Run.open(args.run)
    cfg = run.config
    cfg.mdnrnn_train = _override(
        cfg.mdnrnn_train, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size
    )
    cfg.mdnrnn = _override(cfg.mdnrnn, hidden_size=args.hidden_size, num_mixtures=args.num_mixtures)
    if args.seq_len is not None:
        cfg.seq_len = args.seq_len
    run.save_config()
    return stage_mdnrnn(run)


@dataclass
class TrainControllerArgs:
    """Train C by CMA-ES, inside the dream (default) or in the real env."""

    run: Path
    """run directory holding vae/, mdnrnn/ and latents/"""
    in_: Annotated[Literal["dream", "real"], tyro.conf.arg(name="in")] = "dream"
    """where candidates are scored: 'dream' (batched rollouts inside the world model) or 'real'"""
    temperature: float | None = None
    """dream temperature tau (the paper's Doom: 1.15)"""
    generations: int | None = None
    """CMA-ES generations"""
    population_size: int | None = None
    """candidates per generation"""
    rollouts_per_candidate: int | None = None
    """episodes per candidate"""
    sigma0: float | None = None
    """initial CMA-ES step size"""
    restarts: int | None = None
    """independent CMA-ES runs raced for --restart-generations; the best continues"""
    restart_generations: int | None = None
    """generations each raced restart runs before the best is chosen"""
    ray: bool = False
    """with --where real: evaluate candidates on a Ray cluster instead of local processes"""
    ray_address: str | None = None
    """Ray cluster address ('auto' for a running one); None starts a local Ray"""
    workers: int | None = None
    """worker processes / Ray CPUs for real-env rollouts (0 = all)"""
    vonly: bool = False
    """train the V-only ablation (C reads z alone) into controller_vonly/"""
    pessimism: float | None = None
    """train in the dream of the run's ensemble (`dreamlab train-ensemble`) with reward
    r - PESSIMISM * disagreement (0 = the ensemble's dream without a penalty)"""
    name: str | None = None
    """controller directory under the run (default controller/ or controller_vonly/)"""


def train_controller(args: TrainControllerArgs) -> Any:
    run = Run.open(args.run)
    cfg = run.config
    backend = "dream" if args.in_ == "dream" else ("ray" if args.ray else "processes")
    cfg.evolve = _override(
        cfg.evolve,
        temperature=args.temperature,
        generations=args.generations,
        population_size=args.population_size,
        rollouts_per_candidate=args.rollouts_per_candidate,
        sigma0=args.sigma0,
        restarts=args.restarts,
        restart_generations=args.restart_generations,
        ray_address=args.ray_address,
        workers=args.workers,
        backend=backend,
    )
    run.save_config()
    return stage_controller(
        run,
        "z" if args.vonly else "zh",
        _vonly_evolve(cfg) if args.vonly else None,
        pessimism=args.pessimism,
        name=args.name,
    )


@dataclass
class EvaluateArgs:
    """Run agents in the real env; write eval.json and videos of the best and worst episodes."""

    run: Path
    """run directory"""
    episodes: int = 100
    """episodes per agent"""
    agent: list[str] = field(default_factory=lambda: ["controller"])
    """agents to score: controller, controller_vonly, random, expert, bc, bc_latent, planner"""
    planner: Annotated[PlannerConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=PlannerConfig
    )
    """settings of the planner agent (CEM/MPPI over imagined action sequences)"""
    pessimism: float | None = None
    """planner only: plan in the run's ensemble dream (`dreamlab train-ensemble`) with reward
    r - PESSIMISM * disagreement"""
    precision: Literal["float32", "bfloat16"] = "float32"
    """planner only: run M's matmuls under bfloat16 autocast (~1.5x faster decisions on CPUs with
    bf16 support, same catch rate on Catch; BENCHMARKS.md)"""


def evaluate(args: EvaluateArgs) -> dict[str, Any]:
    run = Run.open(args.run)
    out = stage_evaluate(
        run,
        agents=list(args.agent),
        episodes=args.episodes,
        planner=args.planner,
        pessimism=args.pessimism,
        precision=args.precision,
    )
    for name, a in out["agents"].items():
        extra = f", catch rate {a['catch_rate']:.2f}" if "catch_rate" in a else ""
        if "planning" in a and a["planning"].get("calls"):
            extra += f", {a['planning']['decisions_per_s']:.1f} decisions/s"
        print(
            f"{name:>18}: return {a['mean_return']:.2f} ± {a['std_return']:.2f} over "
            f"{a['episodes']} episodes{extra}"
        )
    return out


@dataclass
class DreamArgs:
    """Render a dream decoded by V, and dream vs reality side by side."""

    run: Path
    """run directory holding vae/, mdnrnn/ and latents/"""
    video: Path | None = None
    """where to write the decoded dream (.mp4 or .gif); default RUN/dream.mp4"""
    steps: int = 150
    """dream length in steps"""
    temperature: float = 1.0
    """sampling temperature tau"""
    agent: Literal["controller", "random"] = "controller"
    """who acts in the dream (the trained controller if there is one, else random)"""
    seed: int = 0
    """seed of the dream"""
    prompt: str | None = None
    """scenario words for a token run (train-tokens), e.g. "fast from-left" (docs/tokens.md)"""
    guidance: float = 3.0
    """classifier-free guidance scale of the prompt (token runs)"""


def dream(args: DreamArgs) -> Path:
    from dreamlab.dream import DreamEnv
    from dreamlab.token_pipeline import dream_tokens, is_token_run
    from dreamlab.viz import write_video

    if is_token_run(args.run):
        return dream_tokens(
            args.run,
            args.video,
            args.steps,
            args.temperature,
            args.agent,
            args.seed,
            args.prompt,
            args.guidance,
        )
    if args.prompt is not None:
        raise ValueError(
            f"{args.run}: --prompt needs a token run (dreamlab train-tokens); this run's V+M "
            "model has no prompt vocabulary"
        )
    run = Run.open(args.run)
    world_model = run.world_model()
    space = run.action_space()
    env = DreamEnv(
        world_model,
        start_latents_from_store(run.latents()),
        space,
        temperature=args.temperature,
        max_episode_steps=args.steps,
        render_mode="rgb_array",
    )
    controller = None
    if args.agent == "controller" and has_model(run / "controller"):
        controller = run.controller()
    space.seed(args.seed)
    obs, _ = env.reset(seed=args.seed)
    frames = [env.render()]
    for _ in range(args.steps):
        if controller is None:
            action = space.sample()
        else:
            with torch.inference_mode():
                action = controller(torch.as_tensor(obs)[None])[0].numpy()
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(env.render())
        if terminated or truncated:
            break
    out = args.video or (run / "dream.mp4")
    write_video(out, np.stack(frames), fps=15)
    stage_dream(run)
    print(f"dream: {len(frames)} frames -> {out}; dream vs real -> {run / 'dream_vs_real.mp4'}")
    return Path(out)


@dataclass
class ReportArgs:
    """Write report.md for a run directory from what its stages saved."""

    run: Path
    """run directory"""


def report(args: ReportArgs) -> Path:
    from dreamlab.eval.report import write_report

    path = write_report(Run.open(args.run))
    print(path)
    return path
