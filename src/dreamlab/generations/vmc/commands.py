"""The commands that run one V/M/C stage on a run directory: ``dreamlab train-vae``, ``encode``,
``train-mdnrnn`` and ``train-controller``.

Each dataclass below is both a CLI command's arguments and the argument of the library function
beside it: ``dreamlab train-vae --run R --epochs 5`` is ``train_vae(TrainVAEArgs(run=R,
epochs=5))``. Overrides given on the command line are written into the run's ``config.json``, so
the file always says what was run; they are written only once the stage's inputs are found, so a
command that fails on a missing input leaves the run as it was.

Each command says in one line what it did: which stage it trained or encoded and to where, that it
resumed and from which step, or that the stage was already done and how to redo it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from dreamlab.data.store import EpisodeStore
from dreamlab.generations.vmc.controller import (
    check_controller_resume,
    stage_controller,
    vonly_evolve,
)
from dreamlab.generations.vmc.run import Run
from dreamlab.generations.vmc.stages import (
    mdnrnn_config,
    stage_encode,
    stage_mdnrnn,
    stage_vae,
    vae_config,
)
from dreamlab.train.fit import check_resume

__all__ = [
    "EncodeArgs",
    "TrainControllerArgs",
    "TrainMDNRNNArgs",
    "TrainVAEArgs",
    "encode",
    "train_controller",
    "train_mdnrnn",
    "train_vae",
]


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


def _override(obj: Any, **values: Any) -> Any:
    """``dataclasses.replace`` with only the values that are not None."""
    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(obj, **given) if given else obj


def train_vae(args: TrainVAEArgs) -> Any:
    """Train V with the run's settings and the overrides given (a new run: from ``--preset``)."""
    run = Run.open_or_create(args.run, args.preset)
    run.data()  # no episodes: one clear error before config.json is written
    cfg = run.config
    cfg.vae_train = _override(
        cfg.vae_train, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr
    )
    cfg.vae = _override(cfg.vae, z_dim=args.z_dim, kl_tolerance=args.kl_tolerance)
    # a V half trained with other settings refuses them before config.json records them
    check_resume(run / "vae", cfg.vae_train, vae_config(run))
    run.save_config()
    return stage_vae(run)


@dataclass
class EncodeArgs:
    """Encode every episode with V into latents/ (mu, logvar per frame)."""

    run: Path
    """run directory holding data/ and vae/"""


def encode(args: EncodeArgs) -> EpisodeStore:
    """Encode the run's episodes with its V."""
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
    """Train M with the run's settings and the overrides given."""
    run = Run.open(args.run)
    run.vae_config()  # missing inputs fail before config.json is rewritten
    run.latents()
    cfg = run.config
    cfg.mdnrnn_train = _override(
        cfg.mdnrnn_train, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size
    )
    cfg.mdnrnn = _override(cfg.mdnrnn, hidden_size=args.hidden_size, num_mixtures=args.num_mixtures)
    if args.seq_len is not None:
        cfg.seq_len = args.seq_len
    check_resume(run.round_dir(0) / "mdnrnn", cfg.mdnrnn_train, mdnrnn_config(run))
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
    seed: int | None = None
    """seed of CMA-ES and of its dreams (default: the run's); C's from several seeds measure
    how much one CMA-ES run's result is luck"""
    ray: bool = False
    """with --in real: evaluate candidates on a Ray cluster instead of local processes"""
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
    """Train C with the run's CMA-ES settings and the overrides given."""
    run = Run.open(args.run)
    run.vae_config()  # missing inputs fail before config.json is rewritten
    run.latents()
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
        seed=args.seed,
        ray_address=args.ray_address,
        workers=args.workers,
        backend=backend,
    )
    name = args.name or ("controller_vonly" if args.vonly else "controller")
    check_controller_resume(run, name, vonly_evolve(cfg) if args.vonly else cfg.evolve)
    if args.name is None:
        run.save_config()  # the run's own C: its settings are the run's from now on
    # a named C (e.g. the temperature table's controller_tau0.1) leaves the run's settings as
    # they are: its overrides are given again to resume it
    return stage_controller(
        run,
        "z" if args.vonly else "zh",
        vonly_evolve(cfg) if args.vonly else None,
        pessimism=args.pessimism,
        name=args.name,
    )
