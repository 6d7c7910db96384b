"""Uncertainty for a run directory: many sampled futures, an ensemble of M, pessimism.

Commands (each a thin wrapper over the function beside its dataclass, registered in
:mod:`dreamlab.cli`):

- (``dreamlab futures``, K futures from one real start point, serves every generation:
  :mod:`dreamlab.futures_command`; its ``--ensemble`` dreams in :func:`ensemble_world_model`);
- ``dreamlab train-ensemble``: M MDN-RNNs on bootstrap resamples -> ``RUN/mdnrnn_ensemble/<i>/``;
- ``dreamlab uncertainty``: disagreement vs real one-step error on fresh held-out episodes,
  on and off the training distribution -> ``RUN/uncertainty.json``, ``RUN/uncertainty.png``;
- ``dreamlab train-controller --pessimism L``: C trained in the ensemble's dream with the
  reward ``r - L * disagreement`` (see :func:`ensemble_world_model`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dreamlab.checkpoint import CheckpointError
from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import EpisodeStore
from dreamlab.generations.vmc.ensemble import EnsembleWorldModel
from dreamlab.generations.vmc.run import Run
from dreamlab.generations.vmc.train_ensemble import load_ensemble, member_dirs, train_ensemble
from dreamlab.generations.vmc.worldmodel import VMWorldModel
from dreamlab.io import atomic_write_json
from dreamlab.rundir import RunError, timed
from dreamlab.train.encode import encode_store

__all__ = [
    "ENSEMBLE_DIR",
    "TrainEnsembleArgs",
    "UncertaintyArgs",
    "controller_world_model",
    "ensemble_world_model",
    "measure_uncertainty",
    "stage_ensemble",
    "train_ensemble_cmd",
]

ENSEMBLE_DIR = "mdnrnn_ensemble"


# ------------------------------------------------------------------------------ ensemble
@dataclass
class TrainEnsembleArgs:
    """Train an ensemble of M (MDN-RNNs) on bootstrap resamples of the run's latent episodes."""

    run: Path
    """run directory holding latents/ (from `dreamlab encode`)"""
    members: int = 5
    """ensemble members trained into RUN/mdnrnn_ensemble/<i>/ (the run's own mdnrnn/ is used
    beside them as one more member by default)"""
    epochs: float | None = None
    """passes over the steps per member (default: the run's mdnrnn_train)"""
    steps: int | None = None
    """optimizer steps per member (overrides epochs)"""
    batch_size: int | None = None
    """sequences per step"""
    progress: bool = True
    """show progress bars"""


def stage_ensemble(
    run: Run,
    members: int = 5,
    *,
    epochs: float | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> list[Any]:
    """Train (or resume) ``members`` MDN-RNNs with the run's M config into ``RUN/mdnrnn_ensemble``."""
    cfg = run.config
    mcfg = run.mdnrnn().config  # the architecture the run's M was trained with
    given = {"epochs": epochs, "steps": steps, "batch_size": batch_size}
    train_cfg = dataclasses.replace(
        cfg.mdnrnn_train,
        progress=progress,
        **{k: v for k, v in given.items() if v is not None},
    )
    if steps is None and epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, steps=None)
    return timed(
        run.path,
        "ensemble",
        lambda: train_ensemble(
            run.latents(),
            mcfg,
            train_cfg,
            run / ENSEMBLE_DIR,
            members=members,
            seq_len=cfg.seq_len,
            seed=cfg.seed,
        ),
    )


def train_ensemble_cmd(args: TrainEnsembleArgs) -> list[Any]:
    """``dreamlab train-ensemble``: train the members, print one line each."""
    results = stage_ensemble(
        Run.open(args.run),
        args.members,
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        progress=args.progress,
    )
    for i, r in enumerate(results):
        nll = r.metrics.get(f"ensemble{i}/train/nll", float("nan"))
        print(f"member {i}: step {r.step}/{r.total_steps}, nll {nll:.4f} -> {r.out_dir}")
    return results


def ensemble_world_model(
    run: Run,
    features: Literal["zh", "z"] = "zh",
    *,
    pessimism: float = 0.0,
    members: int | None = None,
    include_run_model: bool = True,
    disagreement: Literal["z", "reward", "z+reward"] = "z",
    member_sampling: Literal["per_step", "per_dream"] = "per_step",
) -> EnsembleWorldModel:
    """The run's V with its ensemble of M as one world model.

    Args:
        run: run directory with ``vae/``, ``mdnrnn/`` and ``mdnrnn_ensemble/``.
        features: ``"zh"`` or ``"z"`` (V-only controllers).
        pessimism: lambda of ``reward - lambda * disagreement``.
        members: use the first ``members`` trained members (default all).
        include_run_model: member 0 is the run's own ``mdnrnn/`` (trained on all episodes),
            and C reads its memory: a controller trained in this dream then acts in the real
            env through the plain ``VMWorldModel`` with the same features.
        disagreement: what the penalty measures (see :class:`EnsembleWorldModel`).
        member_sampling: ``"per_step"`` (TS-1) or ``"per_dream"``.
    """
    root = run / ENSEMBLE_DIR
    if not member_dirs(root):
        raise RunError(
            f"{run.path}: no trained ensemble in {root}; run `dreamlab train-ensemble --run "
            f"{run.path}` first"
        )
    try:
        ensemble = load_ensemble(root, members)
    except CheckpointError as e:
        raise RunError(str(e)) from None
    models = ([run.mdnrnn()] if include_run_model else []) + ensemble
    return EnsembleWorldModel(
        run.vae(),
        models,
        run.action_space(),
        pessimism=pessimism,
        disagreement=disagreement,
        member_sampling=member_sampling,
        features=features,
        termination=run.config.dream_termination,
    )


# ------------------------------------------------------------------------------ measure
@dataclass
class UncertaintyArgs:
    """Measure whether ensemble disagreement predicts real prediction error, on and off the
    training distribution (fresh held-out episodes; nothing of the run is changed)."""

    run: Path
    """run directory holding vae/, mdnrnn/ and mdnrnn_ensemble/"""
    episodes: int = 50
    """held-out episodes per set"""
    off: list[str] = field(default_factory=lambda: ["catch-hard:random", "catch:expert"])
    """off-distribution sets as ENV:POLICY (the on-distribution set is the run's env and
    collection policy); frames must have the run's size"""
    seed: int = 100_000
    """episode seeds start here (far from the run's own collection seeds)"""
    progress: bool = True
    """show progress bars"""


def _held_out(
    run: Run, name: str, env: str, policy: str, episodes: int, seed: int, progress: bool
) -> EpisodeStore:
    """``RUN/uncertainty/NAME/latents``: fresh episodes of ``env`` / ``policy`` encoded by V."""
    root = run / "uncertainty" / name
    collect(
        CollectConfig(
            env=env,
            out=root / "data",
            episodes=episodes,
            policy=policy,
            seed=seed,
            progress=progress,
        )
    )
    return encode_store(
        run.vae(),
        EpisodeStore.open(root / "data"),
        root / "latents",
        vae_source=str(run / "vae"),
        progress=progress,
    )


def measure_uncertainty(args: UncertaintyArgs) -> dict[str, Any]:
    """``dreamlab uncertainty``: disagreement vs real error per set -> ``RUN/uncertainty.json``."""
    from dreamlab.generations.vmc.disagreement import (
        one_step_uncertainty,
        plot_uncertainty,
        summarize,
    )

    run = Run.open(args.run)
    cfg = run.config
    if args.episodes < 1:
        raise ValueError(f"uncertainty: --episodes must be >= 1, got {args.episodes}")
    sets = {"held-out": (cfg.env, cfg.collect_policy)}
    for spec in args.off:
        env, sep, policy = spec.partition(":")
        if not sep or not env or not policy:
            raise ValueError(f"uncertainty: --off {spec!r}: expected ENV:POLICY, e.g. catch:expert")
        sets[f"{env}-{policy}"] = (env, policy)
    ensemble = ensemble_world_model(run)
    results = {}
    for i, (name, (env, policy)) in enumerate(sets.items()):
        store = _held_out(
            run, name, env, policy, args.episodes, args.seed + 10_000 * i, args.progress
        )
        episodes = [store.episode(e) for e in store.indices[: args.episodes]]
        results[name] = one_step_uncertainty(ensemble, episodes)
    summary = {
        "members": ensemble.num_members,
        "sets": {name: {"env": e, "policy": p} for name, (e, p) in sets.items()},
        **summarize(results),
    }
    atomic_write_json(run / "uncertainty.json", summary)
    plot_uncertainty(results, run / "uncertainty.png")
    for name in sets:
        s = summary[name]
        print(
            f"{name:>20}: disagreement mean {s['z_disagreement_mean']:.4g}, error mean "
            f"{s['z_error_mean']:.4g}, spearman {s['spearman_z']:.3f}"
        )
    print(f"pooled spearman {summary['pooled']['spearman_z']:.3f} -> {run / 'uncertainty.json'}")
    return summary


def controller_world_model(
    run: Run, inputs: Literal["zh", "z"], pessimism: float | None
) -> VMWorldModel | EnsembleWorldModel:
    """The dream C trains in: the single V+M, or (``pessimism`` given) the ensemble with that
    penalty. Used by :func:`dreamlab.generations.vmc.controller.stage_controller` and the
    planner agent."""
    if pessimism is None:
        return run.world_model(inputs)
    if pessimism < 0:
        raise ValueError(f"--pessimism must be >= 0, got {pessimism}")
    return ensemble_world_model(run, inputs, pessimism=pessimism)
