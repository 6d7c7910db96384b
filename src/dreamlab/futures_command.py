"""``dreamlab futures`` on a run of any generation: K futures sampled from one real start point,
the imagined frames beside the real ones and a fan of the cumulative reward (how sure the world
model is of what comes next). The library is :mod:`dreamlab.eval.futures`; V/M/C runs may dream
in their ensemble of M (``--ensemble``, a disagreement panel)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamlab.data.store import STORE_FILE, EpisodeStore
from dreamlab.eval.futures import plot_futures_frames, plot_reward_fan, sample_futures
from dreamlab.generations import for_run
from dreamlab.generations.vmc.run import Run
from dreamlab.generations.vmc.uncertainty import ensemble_world_model
from dreamlab.io import atomic_write_json
from dreamlab.rundir import RunError
from dreamlab.worldmodel import WorldModel

__all__ = ["FuturesArgs", "futures"]


def _episodes(run: Path, data: Path | None) -> EpisodeStore:
    """The store of real episodes the futures start from: ``data``, or the run's own."""
    path = Path(data) if data is not None else for_run(run).episodes(run)
    if not (path / STORE_FILE).is_file():
        raise RunError(
            f"{path}: no episode store here; give the episodes to start from with --data STORE"
        )
    store = EpisodeStore.open(path)
    if "obs" not in store.meta.schema:
        raise RunError(f"{path}: holds {store.meta.kind}, not frames; give a store of frames")
    return store


@dataclass
class FuturesArgs:
    """Sample many futures from one real start point; plot the imagined frames and a reward fan."""

    run: Path
    """run directory of any generation, with a trained world model"""
    samples: int = 64
    """K futures sampled as one batch"""
    horizon: int = 30
    """imagined steps"""
    temperature: float = 1.0
    """sampling temperature tau (V/M/C's MDN; other generations sample at their own)"""
    data: Path | None = None
    """episode store giving the start and the actions (default: the one the run learned from)"""
    episode: int = 0
    """episode of that store (position in it) giving the start and the actions"""
    start: int = 0
    """first context frame in that episode"""
    context: int = 2
    """real frames the model observes before imagining"""
    ensemble: bool = False
    """V/M/C: imagine with the ensemble (RUN/mdnrnn_ensemble) instead of the single M; adds a
    disagreement panel"""
    seed: int = 0
    """seed of the sampling noise"""
    name: str = "futures"
    """output files RUN/NAME.png, RUN/NAME_reward.png, RUN/NAME.json"""


def futures(args: FuturesArgs) -> dict[str, Any]:
    """``dreamlab futures``: sample the futures, write the pictures and ``RUN/NAME.json``."""
    if args.samples < 1 or args.horizon < 1 or args.context < 1:
        raise ValueError(
            f"futures: samples, horizon and context must be >= 1, got {args.samples}, "
            f"{args.horizon}, {args.context}"
        )
    run = Path(args.run)
    generation = for_run(run)
    store = _episodes(run, args.data)
    if not 0 <= args.episode < len(store):
        raise ValueError(f"futures: --episode {args.episode} not in [0, {len(store)})")
    ep = store.episode(store.indices[args.episode])
    steps = len(ep["action"])
    last = args.start + args.context - 1  # the last context frame
    if args.start < 0 or last + args.horizon > steps:
        raise ValueError(
            f"futures: episode {args.episode} has {steps} steps; --start {args.start} with "
            f"--context {args.context} and --horizon {args.horizon} needs "
            f"{last + args.horizon}"
        )
    if args.ensemble and generation.kind != "vmc":
        raise RunError(
            f"--ensemble dreams in an ensemble of M (train-ensemble), which a {generation.kind} "
            "run does not have; leave it out"
        )
    world_model: WorldModel = (
        ensemble_world_model(Run.open(run))
        if args.ensemble
        else generation.load_world_model(run, "cpu")
    )
    result = sample_futures(
        world_model,
        np.array(ep["obs"][args.start : last + 1]),
        np.array(ep["action"][last : last + args.horizon]),
        args.samples,
        args.temperature,
        args.seed,
        context_actions=np.array(ep["action"][args.start : last]),
    )
    real = np.asarray(ep["obs"][last : last + args.horizon + 1])
    real_reward = np.asarray(ep["reward"][last : last + args.horizon], dtype=np.float64)
    frames_png, reward_png = run / f"{args.name}.png", run / f"{args.name}_reward.png"
    plot_futures_frames(result, frames_png, real=real)
    plot_reward_fan(result, reward_png, real_reward=real_reward)
    cumulative = result.cumulative_reward[:, -1]
    summary: dict[str, Any] = {
        "episode": args.episode,
        "start": args.start,
        "context": args.context,
        "horizon": args.horizon,
        "samples": args.samples,
        "temperature": args.temperature,
        "world_model": "ensemble" if args.ensemble else "single",
        "pixel_spread_mean_per_step": result.pixel_spread().mean(axis=(1, 2)).round(5).tolist(),
        "cumulative_reward_percentiles_5_50_95": np.percentile(cumulative, [5, 50, 95]).tolist(),
        "real_cumulative_reward": float(real_reward.sum()),
    }
    if result.disagreement is not None:
        summary["disagreement_median_per_step"] = (
            np.median(result.disagreement, axis=0).round(6).tolist()
        )
    atomic_write_json(run / f"{args.name}.json", summary)
    print(f"futures: {args.samples} samples x {args.horizon} steps -> {frames_png}, {reward_png}")
    return summary
