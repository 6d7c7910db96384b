"""Compare the generations of world models on the same episodes: ``dreamlab compare-models``.

Every generation (V/M/C, RSSM + actor-critic, diffusion, tokens) is a *contender*: its
registry entry (:mod:`dreamlab.generations`) names it (``contender_name``, the name given to
``--models``) and gives its builder ``build_contender(ctx) -> Contender``
(:mod:`dreamlab.eval.contender`). All of them

- learn from **the same episodes**: one store collected once (``OUT/data``, or ``--data STORE``);
- are measured on **the same held-out episodes** (``OUT/heldout``, other seeds, same policy) by
  :mod:`dreamlab.eval.fidelity`: open-loop MSE / PSNR vs horizon against the copy-last-frame
  baseline, the Catch position probe, reward and termination recall per class, action
  controllability, imagination speed;
- have their agent scored in the real env on the same seeds, and inside their own dream (the
  dream-vs-real gap).

Each contender builds in ``OUT/<name>/`` (resumable) and its measured row is cached in
``OUT/<name>/row.json``, so a rerun after a kill redoes only what is unfinished. Output:
``OUT/compare.json``, and from :mod:`dreamlab.compare_report` ``OUT/report.md``,
``OUT/fidelity.png``, ``OUT/probe.png`` (Catch) and ``OUT/frames.png``. See ``docs/compare.md``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.compare_report import write_report
from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import EpisodeStore
from dreamlab.dream import DreamVecEnv
from dreamlab.eval.catch_probe import catch_config_for
from dreamlab.eval.contender import CompareContext, Contender, ContenderBuilder
from dreamlab.eval.fidelity import FidelityConfig, measure_fidelity
from dreamlab.generations import all_generations
from dreamlab.io import atomic_write_bytes, atomic_write_json, jsonable, read_json

__all__ = [
    "CompareModelsArgs",
    "compare_models",
    "contenders",
    "dream_return",
    "resolve_builder",
]

ROW_FILE = "row.json"
FRAMES_FILE = "open_loop.safetensors"
REAL_EVAL_SEED = 1_000_000_000
HELDOUT_SEED = 500_000_000


@dataclass
class CompareModelsArgs:
    """Train every world-model generation on the same episodes and measure them alike."""

    models: list[str] = field(default_factory=lambda: list(contenders()))
    """contenders to compare, in table order: vmc, rssm, diffusion, tokens"""
    out: Path = Path("runs/compare_models")
    """output directory (resumable: each contender builds in OUT/NAME/)"""
    data: Path | None = None
    """reuse this episode store for training (default: collect OUT/data)"""
    env: str = "catch-32"
    """env preset the episodes come from (ignored with --data: the store's env is used)"""
    env_kwargs: dict[str, int | float | bool | str] = field(
        default_factory=lambda: {"discrete": True}
    )
    """env constructor keywords (default: Catch's discrete actions left / stay / right)"""
    episodes: int = 200
    """training episodes to collect (with the collection policy)"""
    collect_policy: str = "random"
    """policy of the training and held-out episodes: random, brownian, expert, preset"""
    heldout_episodes: int = 16
    """held-out episodes (other seeds, same policy) for the fidelity measures"""
    scale: float = 1.0
    """fraction of every generation's default training budget"""
    context: int = 5
    """real frames each model observes before imagining open loop"""
    horizon: int = 20
    """open-loop steps (the table reports 1, 5, 10, 20)"""
    eval_episodes: int = 100
    """real-env episodes per agent (same seeds for every agent)"""
    dream_episodes: int = 100
    """episodes of each agent inside its own dream"""
    speed_batch: int = 64
    """dreams stepped together when timing imagination"""
    seed: int = 0
    """seed of everything"""
    num_threads: int = 1
    """torch CPU threads"""
    progress: bool = True
    """show progress"""


# ------------------------------------------------------------------------------------ builders
def contenders() -> dict[str, ContenderBuilder]:
    """``--models`` name -> builder of every generation that can be compared, in registry order
    (a generation's ``contender_name`` and ``build_contender``)."""
    return {
        g.contender_name: g.build_contender
        for g in all_generations()
        if g.contender_name is not None and g.build_contender is not None
    }


def resolve_builder(name: str) -> ContenderBuilder:
    """The builder of the generation named ``name`` in ``--models``.

    Raises:
        ValueError: no generation is compared under that name (the message lists the names).
    """
    known = contenders()
    if name not in known:
        raise ValueError(f"compare-models: unknown model {name!r}; known: {', '.join(known)}")
    return known[name]


# ------------------------------------------------------------------------------------ measures
@torch.inference_mode()
def dream_return(
    world_model: Any,
    start: dict[str, torch.Tensor],
    action_space: Any,
    act: Callable[[torch.Tensor], torch.Tensor],
    episodes: int,
    max_steps: int,
    seed: int = 0,
) -> float:
    """Mean return of policy ``act(features (N, F)) -> actions`` over ``episodes`` dreams."""
    env = DreamVecEnv(
        world_model, start, action_space, episodes, max_episode_steps=max_steps, autoreset=False
    )
    obs = env.reset_tensor(seed=seed)
    total = torch.zeros(episodes)
    alive = torch.ones(episodes, dtype=torch.bool)
    for _ in range(max_steps):
        obs, reward, terminated, truncated, _ = env.step_tensor(act(obs))
        total += reward.float().cpu() * alive
        alive &= ~(terminated | truncated).cpu()
        if not bool(alive.any()):
            break
    return float(total.mean())


@dataclass
class _Shared:
    """What every contender is measured against."""

    args: CompareModelsArgs
    data: EpisodeStore
    heldout: list[dict[str, np.ndarray]]
    env: str
    env_kwargs: dict[str, Any]
    action_space: Any
    fidelity: FidelityConfig
    settings: dict[str, Any]
    """what a cached row must have been measured with to be reused"""


def _measure(name: str, contender: Contender, shared: _Shared, seconds: float) -> dict[str, Any]:
    from dreamlab.envs import make_env
    from dreamlab.eval.evaluate import evaluate_policy

    args = shared.args
    t0 = time.perf_counter()
    fid = measure_fidelity(
        contender.world_model,
        shared.heldout,
        shared.action_space,
        shared.fidelity,
        catch=catch_config_for(shared.env, shared.env_kwargs),
    )
    real = evaluate_policy(
        lambda: make_env(shared.env, **shared.env_kwargs),
        contender.policy,
        args.eval_episodes,
        env_name=shared.env,
        seed=REAL_EVAL_SEED,
        record=False,
        progress=False,
    ).summary()
    max_steps = 2 * int(np.max(shared.data.lengths))
    dream = dream_return(
        contender.world_model,
        contender.dream_start,
        shared.action_space,
        contender.dream_policy,
        args.dream_episodes,
        max_steps,
        args.seed,
    )
    out_dir = args.out / name
    # one held-out episode, real and imagined, for the frame grid (no pickles: safetensors)
    from safetensors.numpy import save as safetensors_bytes

    atomic_write_bytes(
        out_dir / FRAMES_FILE,
        safetensors_bytes(
            {
                "imagined": np.ascontiguousarray(fid.open_loop.imagined[0]),
                "real": np.ascontiguousarray(fid.open_loop.real[0]),
            }
        ),
    )
    return {
        "name": name,
        "label": contender.name,
        "generation": contender.generation,
        "params_world_model": int(contender.params_world_model),
        "params_agent": int(contender.params_agent),
        "train_seconds": float(contender.train_seconds),
        "build_seconds": round(seconds, 2),
        "measure_seconds": round(time.perf_counter() - t0, 2),
        "real": jsonable(real),
        "dream_return": dream,
        "dream_minus_real": dream - float(real["mean_return"]),
        "fidelity": fid.to_json(),
        "notes": jsonable(contender.notes),
        "settings": shared.settings,
    }


def _row(name: str, builder: ContenderBuilder, shared: _Shared) -> dict[str, Any]:
    """The measured row of one contender: ``OUT/name/row.json`` if it is current, else build."""
    args = shared.args
    out_dir = args.out / name
    row_path = out_dir / ROW_FILE
    if row_path.exists() and (out_dir / FRAMES_FILE).exists():
        row = read_json(row_path, f"{name} row")
        if row.get("settings") == shared.settings:
            if args.progress:
                print(f"[compare-models] {name}: measured before ({row_path})", file=sys.stderr)
            return row
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = CompareContext(
        data=shared.data,
        env=shared.env,
        env_kwargs=dict(shared.env_kwargs),
        out=out_dir,
        seed=args.seed,
        scale=args.scale,
        progress=args.progress,
    )
    if args.progress:
        print(f"[compare-models] {name}: building in {out_dir}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    contender = builder(ctx)
    built = time.perf_counter() - t0
    if not isinstance(contender, Contender):
        raise ValueError(f"compare-models: builder of {name!r} returned {type(contender).__name__}")
    if args.progress:
        print(f"[compare-models] {name}: measuring", file=sys.stderr, flush=True)
    row = _measure(name, contender, shared, built)
    atomic_write_json(row_path, row)
    return row


# ------------------------------------------------------------------------------------ data
def _collect(
    out: Path,
    episodes: int,
    seed: int,
    env: str,
    env_kwargs: dict[str, Any],
    policy: str,
) -> EpisodeStore:
    """Collect (or complete) ``episodes`` episodes into ``out``; one worker, numpy envs are fast."""
    collect(
        CollectConfig(
            env=env,
            out=out,
            episodes=episodes,
            policy=policy,
            seed=seed,
            workers=1,
            env_kwargs=dict(env_kwargs),
            progress=False,
        )
    )
    return EpisodeStore.open(out)


def _data(args: CompareModelsArgs) -> tuple[EpisodeStore, str, dict[str, Any], str]:
    """The training store and the env (name, kwargs) and collection policy it comes from."""
    if args.data is None:
        store = _collect(
            args.out / "data",
            args.episodes,
            args.seed,
            args.env,
            args.env_kwargs,
            args.collect_policy,
        )
        return store, args.env, dict(args.env_kwargs), args.collect_policy
    if not (Path(args.data) / "store.json").exists():
        raise ValueError(f"compare-models: --data {args.data} is not an episode store")
    store = EpisodeStore.open(args.data)
    if store.meta.obs_shape is None:
        raise ValueError(f"compare-models: --data {args.data} holds no frames")
    preset = store.meta.preset
    if not preset:
        raise ValueError(f"compare-models: --data {args.data} does not record its env preset")
    policy = str(store.meta.extra.get("collect", {}).get("policy", args.collect_policy))
    return store, str(preset["name"]), dict(preset.get("env_kwargs", {})), policy


# ------------------------------------------------------------------------------------ command
def compare_models(args: CompareModelsArgs) -> Path:
    """Build (or reuse) every selected contender, measure them alike; returns ``report.md``."""
    from dreamlab.envs import make_env

    if not args.models:
        raise ValueError("compare-models: --models is empty")
    if len(set(args.models)) != len(args.models):
        raise ValueError(f"compare-models: --models lists a model twice: {args.models}")
    if args.scale <= 0:
        raise ValueError(f"compare-models: --scale must be > 0, got {args.scale}")
    for name in (
        "episodes",
        "heldout_episodes",
        "eval_episodes",
        "dream_episodes",
        "context",
        "horizon",
        "speed_batch",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"compare-models: --{name.replace('_', '-')} must be >= 1")
    builders = {name: resolve_builder(name) for name in args.models}  # fail before any work
    torch.set_num_threads(args.num_threads)
    data, env, env_kwargs, policy = _data(args)  # a bad --data fails before OUT is made
    args.out.mkdir(parents=True, exist_ok=True)
    held_store = _collect(
        args.out / "heldout",
        args.heldout_episodes,
        HELDOUT_SEED + args.seed,
        env,
        env_kwargs,
        policy,
    )
    heldout = [held_store.episode(i) for i in held_store.indices]
    probe_env = make_env(env, **env_kwargs)
    try:
        action_space = probe_env.action_space
    finally:
        probe_env.close()
    fidelity = FidelityConfig(
        context=args.context,
        horizon=args.horizon,
        report_horizons=tuple(h for h in (1, 5, 10, 20, 50) if h <= args.horizon),
        speed_batch=args.speed_batch,
        seed=args.seed,
    )
    settings: dict[str, Any] = {
        "scale": args.scale,
        "seed": args.seed,
        "data": {"path": str(data.path), "episodes": len(data), "steps": int(data.num_steps)},
        "heldout": {"episodes": len(heldout), "steps": int(held_store.num_steps)},
        "fidelity": {
            **dataclasses.asdict(fidelity),
            "report_horizons": list(fidelity.report_horizons),
        },
        "eval_episodes": args.eval_episodes,
        "dream_episodes": args.dream_episodes,
    }
    shared = _Shared(args, data, heldout, env, env_kwargs, action_space, fidelity, settings)
    rows = {name: _row(name, builder, shared) for name, builder in builders.items()}

    summary = {
        "args": jsonable(dataclasses.asdict(args)),
        "env": env,
        "env_kwargs": env_kwargs,
        "collect_policy": policy,
        "data": settings["data"],
        "heldout": {"path": str(held_store.path), **settings["heldout"]},
        "models": rows,
    }
    atomic_write_json(args.out / "compare.json", summary)
    frame_files = {name: args.out / name / FRAMES_FILE for name in rows}
    text = write_report(args.out, summary, rows, frame_files, REAL_EVAL_SEED)
    if args.progress:
        print(text, file=sys.stderr)
    return args.out / "report.md"
