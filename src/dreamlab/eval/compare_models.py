"""Compare the generations of world models on the same episodes: ``dreamlab compare-models``.

Every generation (V/M/C, RSSM + actor-critic, diffusion, tokens) is a *contender*: a builder
``build(ctx) -> Contender`` (:mod:`dreamlab.eval.contender`) named in :data:`BUILDERS` as a
``"module:function"`` string and imported only when selected. All of them

- learn from **the same episodes**: one store collected once (``OUT/data``, or ``--data STORE``);
- are measured on **the same held-out episodes** (``OUT/heldout``, other seeds, same policy) by
  :mod:`dreamlab.eval.fidelity`: open-loop MSE / PSNR vs horizon against the copy-last-frame
  baseline, the Catch position probe, reward and termination recall per class, action
  controllability, imagination speed;
- have their agent scored in the real env on the same seeds, and inside their own dream (the
  dream-vs-real gap).

Each contender builds in ``OUT/<name>/`` (resumable) and its measured row is cached in
``OUT/<name>/row.json``, so a rerun after a kill redoes only what is unfinished. Output:
``OUT/compare.json``, ``OUT/report.md``, ``OUT/fidelity.png``, ``OUT/probe.png`` (Catch) and
``OUT/frames.png``. See ``docs/compare.md``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import EpisodeStore
from dreamlab.dream import DreamVecEnv
from dreamlab.eval.contender import CompareContext, Contender, ContenderBuilder
from dreamlab.eval.fidelity import FidelityConfig, catch_config_for, measure_fidelity
from dreamlab.io import atomic_path, atomic_write_json, atomic_write_text, read_json

__all__ = [
    "BUILDERS",
    "CompareModelsArgs",
    "compare_models",
    "dream_return",
    "resolve_builder",
]

BUILDERS: dict[str, str] = {
    "vmc": "dreamlab.compare_pipeline:build_vmc",
    "rssm": "dreamlab.compare_pipeline:build_rssm",
    "diffusion": "dreamlab.diffusion_pipeline:build_contender",
    "tokens": "dreamlab.token_pipeline:build_contender",
}
"""contender name -> ``"module:function"`` of its builder (imported only when selected)"""

ROW_FILE = "row.json"
FRAMES_FILE = "open_loop.safetensors"
REAL_EVAL_SEED = 1_000_000_000
HELDOUT_SEED = 500_000_000


@dataclass
class CompareModelsArgs:
    """Train every world-model generation on the same episodes and measure them alike."""

    models: list[str] = field(default_factory=lambda: list(BUILDERS))
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
def resolve_builder(name: str) -> ContenderBuilder:
    """Import the builder registered as ``name`` in :data:`BUILDERS`.

    Raises:
        ValueError: unknown name, or its module / function does not exist (yet).
    """
    if name not in BUILDERS:
        raise ValueError(f"compare-models: unknown model {name!r}; known: {', '.join(BUILDERS)}")
    target = BUILDERS[name]
    module_name, _, func_name = target.partition(":")
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ValueError(
            f"compare-models: model {name!r} needs module {module_name} ({target}), which does "
            "not exist yet; leave it out of --models"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"compare-models: model {name!r}: importing {module_name} failed: {e}"
        ) from e
    builder = getattr(module, func_name, None)
    if not callable(builder):
        raise ValueError(f"compare-models: model {name!r}: {module_name} has no {func_name}()")
    return builder


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
    from safetensors.numpy import save_file

    with atomic_path(out_dir / FRAMES_FILE, suffix=".safetensors") as tmp:
        save_file(
            {
                "imagined": np.ascontiguousarray(fid.open_loop.imagined[0]),
                "real": np.ascontiguousarray(fid.open_loop.real[0]),
            },
            str(tmp),
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
        "real": _jsonable(real),
        "dream_return": dream,
        "dream_minus_real": dream - float(real["mean_return"]),
        "fidelity": fid.to_json(),
        "notes": _jsonable(contender.notes),
        "settings": shared.settings,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


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


# ------------------------------------------------------------------------------------ output
def _fmt(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(float(x), spec)


def _plot_curves(
    rows: dict[str, dict[str, Any]], panels: list[tuple[str, str, str]], path: Path
) -> None:
    """One panel per (section, key, label); every model a line, the copy-last baseline dashed."""
    fig = Figure(figsize=(4.2 * len(panels), 3.3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    first = next(iter(rows.values()))["fidelity"]
    for i, (section, key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name, row in rows.items():
            curve = np.array(row["fidelity"][section][key]["curve"], dtype=float)
            ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
        base_section = "copy_last" if section == "open_loop" else "probe_copy_last"
        if first.get(base_section) and key in first[base_section]:
            curve = np.array(first[base_section][key]["curve"], dtype=float)
            steps = np.arange(1, len(curve) + 1)
            ax.plot(steps, curve, "k--", label="copy last frame")
        ax.set_xlabel("imagined steps (open loop)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def _frame_grid(args: CompareModelsArgs, names: list[str], path: Path) -> None:
    from safetensors.numpy import load_file

    from dreamlab.viz import save_image_grid

    frames = {name: load_file(str(args.out / name / FRAMES_FILE)) for name in names}
    real = frames[names[0]]["real"]
    save_image_grid(
        path,
        [real, *(frames[n]["imagined"] for n in names)],
        labels=["real", *names],
    )


def _report(summary: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    args = summary["args"]
    first = next(iter(rows.values()))["fidelity"]
    horizons = list(first["open_loop"]["mse"]["at"])
    mid = horizons[min(1, len(horizons) - 1)]
    last = horizons[-1]
    classes: list[str] = []
    for row in rows.values():
        for c in row["fidelity"]["recall"]["reward"]:
            if c not in classes:
                classes.append(c)
    classes.sort(key=float)
    catch = "catch_rate" in next(iter(rows.values()))["real"]
    data = summary["data"]
    lines = [
        f"# World-model generations on `{summary['env']}` {summary['env_kwargs']}",
        "",
        f"Every model trained on the same {data['episodes']} episodes ({data['steps']} steps, "
        f"`{data['path']}`, policy {summary['collect_policy']}) at scale {args['scale']:g} of its "
        f"default budget; measured on the same {summary['heldout']['episodes']} held-out episodes "
        f"(`{summary['heldout']['path']}`). Real scores: {args['eval_episodes']} episodes, seeds "
        f"{REAL_EVAL_SEED}+; dream: {args['dream_episodes']} dreams of each agent in its own "
        "model.",
        "",
        "| model | gen | params model | params agent | train s | real return"
        + (" | catch rate" if catch else "")
        + f" | dream return | dream - real | MSE @{mid} | MSE @{last} | reward recall | "
        "end recall | control | steps/s |",
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if catch else "") + "---:|" * 8,
    ]
    for name, row in rows.items():
        fid, real = row["fidelity"], row["real"]
        rate = f" | {real['catch_rate']:.2f}" if catch else ""
        lines.append(
            f"| {name} | {row['generation']} | {row['params_world_model']:,} | "
            f"{row['params_agent']:,} | {row['train_seconds']:.0f} | {real['mean_return']:.2f}"
            f"{rate} | {row['dream_return']:.2f} | {row['dream_minus_real']:+.2f} | "
            f"{_fmt(fid['open_loop']['mse']['at'][mid])} | "
            f"{_fmt(fid['open_loop']['mse']['at'][last])} | "
            f"{_fmt(fid['recall']['reward_balanced'], '.2f')} | "
            f"{_fmt(fid['recall']['terminated']['true']['recall'], '.2f')} | "
            f"{_fmt(fid['control']['pairwise_mse'], '.4f')} | "
            f"{fid['speed']['steps_per_s']:,.0f} |"
        )
    base = first["copy_last"]
    lines.append(
        f"| copy last frame | | | | | | {'| ' if catch else ''}| | "
        f"{_fmt(base['mse']['at'][mid])} | {_fmt(base['mse']['at'][last])} | | | 0 | |"
    )
    lines += [
        "",
        "reward recall: mean over the reward classes of the fraction of real steps of that class "
        "whose teacher-forced predicted reward rounds to it; end recall: fraction of real episode "
        "ends predicted; control: mean pixel MSE between the next frames imagined for different "
        "actions from the same state (same random numbers), 0 for a model that ignores actions; "
        f"steps/s: imagined transitions per second, {args['speed_batch']} dreams at once.",
        "",
        "## Open loop: observe "
        f"{first['config']['context']} real frames, then imagine with the real actions",
        "",
        "| model | "
        + " | ".join(f"MSE @{h}" for h in horizons)
        + " | "
        + " | ".join(f"PSNR @{h}" for h in horizons)
        + " | "
        + " | ".join(f"reward err @{h}" for h in horizons)
        + " |",
        "|---|" + "---:|" * (3 * len(horizons)),
    ]
    for name, row in [*rows.items(), ("copy last frame", None)]:
        f = first["copy_last"] if row is None else row["fidelity"]["open_loop"]
        rew = (
            ["" for _ in horizons]
            if row is None
            else [_fmt(f["reward_abs"]["at"][h], ".3f") for h in horizons]
        )
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(f["mse"]["at"][h]) for h in horizons)
            + " | "
            + " | ".join(_fmt(f["psnr"]["at"][h], ".1f") for h in horizons)
            + " | "
            + " | ".join(rew)
            + " |"
        )
    lines += ["", "![fidelity vs horizon](fidelity.png)", ""]
    if first["probe"] is not None:
        lines += [
            "## Position probe (Catch): ball x / ball y / paddle x error in pixels "
            "(ball-visible agreement)",
            "",
            "| model | " + " | ".join(f"@{h}" for h in horizons) + " |",
            "|---|" + "---:|" * len(horizons),
        ]
        for name, row in [*rows.items(), ("copy last frame", None)]:
            p = first["probe_copy_last"] if row is None else row["fidelity"]["probe"]
            cells = [
                f"{_fmt(p['ball_x_err']['at'][h], '.1f')} / {_fmt(p['ball_y_err']['at'][h], '.1f')}"
                f" / {_fmt(p['paddle_x_err']['at'][h], '.1f')} "
                f"({_fmt(p['ball_visible_agreement']['at'][h], '.2f')})"
                for h in horizons
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "![position probe vs horizon](probe.png)", ""]
    else:
        lines += ["Position probe skipped: not a Catch env.", ""]
    lines += [
        "## Reward and termination recall (teacher-forced one-step), controllability",
        "",
        "| model | "
        + " | ".join(f"reward {c}" for c in classes)
        + " | end | not end | control (MSE) | sampling noise (MSE) | paddle-x spread px |",
        "|---|" + "---:|" * (len(classes) + 5),
    ]
    for name, row in rows.items():
        rec, ctl = row["fidelity"]["recall"], row["fidelity"]["control"]
        cells = []
        for c in classes:
            r = rec["reward"].get(c)
            cells.append("-" if r is None else f"{_fmt(r['recall'], '.2f')} (n={r['count']})")
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {_fmt(rec['terminated']['true']['recall'], '.2f')} | "
            f"{_fmt(rec['terminated']['false']['recall'], '.2f')} | "
            f"{_fmt(ctl['pairwise_mse'])} | {_fmt(ctl['noise_mse'])} | "
            f"{_fmt(ctl.get('paddle_x_spread'), '.1f')} |"
        )
    lines += [
        "",
        "## One held-out episode: real frames and each model's open-loop imagination",
        "",
        "![real vs imagined](frames.png)",
        "",
        "Models: "
        + "; ".join(f"`{n}` = {r['label']} (notes {r['notes']})" for n, r in rows.items()),
        "",
    ]
    return "\n".join(lines)


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
    args.out.mkdir(parents=True, exist_ok=True)

    data, env, env_kwargs, policy = _data(args)
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
    settings = {
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
        "args": _jsonable(dataclasses.asdict(args)),
        "env": env,
        "env_kwargs": env_kwargs,
        "collect_policy": policy,
        "data": settings["data"],
        "heldout": {"path": str(held_store.path), **settings["heldout"]},
        "models": rows,
    }
    atomic_write_json(args.out / "compare.json", summary)
    _plot_curves(
        rows,
        [("open_loop", "mse", "pixel MSE"), ("open_loop", "psnr", "PSNR (dB)")],
        args.out / "fidelity.png",
    )
    if next(iter(rows.values()))["fidelity"]["probe"] is not None:
        _plot_curves(
            rows,
            [
                ("probe", "ball_x_err", "ball x error (px)"),
                ("probe", "ball_y_err", "ball y error (px)"),
                ("probe", "paddle_x_err", "paddle x error (px)"),
            ],
            args.out / "probe.png",
        )
    _frame_grid(args, list(rows), args.out / "frames.png")
    text = _report(summary, rows)
    report = args.out / "report.md"
    atomic_write_text(report, text)
    if args.progress:
        print(text, file=sys.stderr)
    return report
