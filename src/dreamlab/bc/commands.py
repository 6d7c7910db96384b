"""``dreamlab train-bc``: demonstrations and a BC policy inside a run directory.

This module works at the level of :mod:`dreamlab.generations.vmc.run` (run directories), on top of the
library functions in :mod:`dreamlab.bc.data` and :mod:`dreamlab.bc.train`::

    RUN/demos/      the demonstrations (an episode store), unless --demos names another store
    RUN/bc/         BC from pixels: config.json, model.safetensors, metrics.jsonl, bc.json
    RUN/bc_latent/  BC on the world model's [z, h] (V and M of --world-model-run, default RUN)

``dreamlab evaluate --run RUN --agent bc bc_latent`` then scores them beside the other agents.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import EpisodeStore
from dreamlab.envs.policies import POLICY_NAMES
from dreamlab.train.fit import FitResult, TrainConfig

__all__ = [
    "DEFAULT_LATENT_TRAIN",
    "DEFAULT_PIXEL_TRAIN",
    "TrainBCArgs",
    "collect_demos",
    "train_bc_cmd",
    "train_bc_in",
]

DEFAULT_PIXEL_TRAIN = TrainConfig(
    epochs=4.0, batch_size=64, lr=1e-3, log_every=50, checkpoint_every=500, tensorboard=False
)
"""BC from pixels: 4 passes over the demonstration steps (Catch, 42k steps: ~2,600 steps)"""
DEFAULT_LATENT_TRAIN = TrainConfig(
    epochs=30.0, batch_size=256, lr=1e-3, log_every=50, checkpoint_every=1000, tensorboard=False
)
"""BC on [z, h]: a small MLP on fixed features; many cheap passes"""


def collect_demos(
    env: str,
    out: Path,
    *,
    policy: str = "expert",
    episodes: int | None = None,
    min_steps: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    env_kwargs: dict[str, Any] | None = None,
) -> EpisodeStore:
    """Collect demonstrations with a named policy into the store at ``out`` (resumable).

    Args:
        env: preset name or env id.
        policy: a :data:`dreamlab.envs.policies.POLICY_NAMES` policy (``expert`` for Catch).
        episodes: at least this many episodes.
        min_steps: keep adding episodes until the store holds at least this many env steps
            (how the comparison gives BC as many env frames as the world model saw).
        seed: episode ``i`` is played with seed ``seed + i``.
        workers: collection processes (default: one per CPU).
        env_kwargs: the env's constructor keywords (the world model's env, e.g. discrete actions).
    """
    if policy not in POLICY_NAMES:
        raise ValueError(f"collect_demos: policy={policy!r}; expected one of {list(POLICY_NAMES)}")
    if episodes is None and min_steps is None:
        raise ValueError("collect_demos: give episodes or min_steps")
    target = max(1, episodes or 0)
    while True:
        collect(
            CollectConfig(
                env=env,
                out=out,
                episodes=target,
                policy=policy,
                seed=seed,
                workers=workers,
                progress=progress,
                env_kwargs=dict(env_kwargs or {}),
            )
        )
        store = EpisodeStore.open(out)
        if min_steps is None or store.num_steps >= min_steps:
            return store
        mean_len = max(1.0, store.num_steps / max(1, len(store)))
        target = len(store) + math.ceil((min_steps - store.num_steps) / mean_len)


def train_bc_in(
    out_dir: Path,
    demos: EpisodeStore,
    inputs: Literal["pixels", "latent"],
    train: TrainConfig,
    *,
    world_model_run: Path | None = None,
    frame_stack: int = 3,
    hidden: tuple[int, ...] = (256,),
    seed: int = 0,
) -> FitResult:
    """Train one BC policy on ``demos`` into ``out_dir``; ``latent`` reads V+M of a run."""
    from dreamlab.bc.train import bc_config_for, train_bc

    if inputs == "pixels":
        cfg = bc_config_for(demos, "pixels", frame_stack=frame_stack, hidden=hidden)
        return train_bc(demos, out_dir, cfg, train, seed=seed)
    if inputs != "latent":
        raise ValueError(f"train-bc: inputs={inputs!r}; expected 'pixels' or 'latent'")
    if world_model_run is None:
        raise ValueError("train-bc: --inputs latent needs a run with vae/ and mdnrnn/")
    from dreamlab.generations.vmc.run import Run

    wm_run = Run.open(world_model_run)
    world_model = wm_run.world_model("zh")
    cfg = bc_config_for(demos, "features", feature_dim=world_model.feature_dim, hidden=hidden)
    return train_bc(
        demos,
        out_dir,
        cfg,
        train,
        world_model=world_model,
        source={"world_model_run": str(world_model_run), "features": "zh"},
        seed=seed,
    )


@dataclass
class TrainBCArgs:
    """Train a behavioral-cloning policy on expert demonstrations into RUN/bc or RUN/bc_latent."""

    run: Path
    """run directory (created from --preset if it has no config.json)"""
    preset: str | None = None
    """pipeline preset for a run without config.json (default: catch)"""
    inputs: Literal["pixels", "latent"] = "pixels"
    """'pixels': own small CNN on stacked frames (RUN/bc); 'latent': MLP on V+M's [z, h] (RUN/bc_latent)"""
    demos: str = "expert"
    """demonstrations: a policy name collected into RUN/demos (expert), or an episode store directory"""
    demo_episodes: int | None = None
    """episodes to collect; default: as many env steps as RUN/data holds (else 300 episodes)"""
    world_model_run: Path | None = None
    """run whose vae/ and mdnrnn/ give the latent features (default: RUN itself)"""
    frame_stack: int = 3
    """frames the pixel policy sees at once (a single frame cannot show the ball's motion)"""
    hidden: tuple[int, ...] = (256,)
    """hidden layer sizes of the policy's MLP head"""
    epochs: float | None = None
    """passes over the demonstration steps (default: 4 for pixels, 30 for latent)"""
    steps: int | None = None
    """optimizer steps (overrides epochs)"""
    batch_size: int | None = None
    """samples per step (default: 64 for pixels, 256 for latent)"""
    lr: float | None = None
    """learning rate (default 1e-3)"""
    seed: int = 0
    """seed of the demonstrations (episode i: seed + i), the initialisation and the batches"""
    progress: bool = True
    """show progress bars"""


def train_bc_cmd(args: TrainBCArgs) -> FitResult:
    """The ``train-bc`` command: demonstrations (if needed), then one BC policy."""
    from dreamlab.generations.vmc.run import Run

    root = Path(args.run)
    run = Run.open(root, args.preset if (root / "config.json").exists() else args.preset or "catch")
    demos_path = Path(args.demos)
    if args.demos in POLICY_NAMES:
        min_steps = None
        if args.demo_episodes is None and (root / "data" / "store.json").exists():
            min_steps = run.data().num_steps
        demos = collect_demos(
            run.config.env,
            root / "demos",
            policy=args.demos,
            episodes=args.demo_episodes or (None if min_steps else 300),
            min_steps=min_steps,
            seed=args.seed,
            progress=args.progress,
        )
    elif (demos_path / "store.json").exists():
        demos = EpisodeStore.open(demos_path)
    else:
        raise ValueError(
            f"train-bc: --demos {args.demos!r} is neither a policy ({', '.join(POLICY_NAMES)}) nor "
            "an episode store directory"
        )
    base = DEFAULT_PIXEL_TRAIN if args.inputs == "pixels" else DEFAULT_LATENT_TRAIN
    given = {
        k: v
        for k, v in {
            "epochs": args.epochs,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
        }.items()
        if v is not None
    }
    train = dataclasses.replace(base, progress=args.progress, seed=args.seed, **given)
    name = "bc" if args.inputs == "pixels" else "bc_latent"
    result = train_bc_in(
        root / name,
        demos,
        args.inputs,
        train,
        world_model_run=args.world_model_run or root,
        frame_stack=args.frame_stack,
        hidden=tuple(args.hidden),
        seed=args.seed,
    )
    print(
        f"train-bc: {name} trained {result.step} steps on {demos.num_steps} demonstration steps "
        f"({len(demos)} episodes of {demos.path}); evaluate with "
        f"`dreamlab evaluate --run {root} --agent {name}`"
    )
    return result
