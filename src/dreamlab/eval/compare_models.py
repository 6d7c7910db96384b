"""Compare the generations: V/M/C (Ha & Schmidhuber) vs RSSM + actor-critic (Dreamer).

Both learn from the **same episodes** (the V/M/C run's ``data/``): the RSSM and its actor-critic
are trained offline on them (the Dreamer update with no new collection), so the only difference
is the model family and the way behaviour is learned. Measured on the same footing:

- open-loop prediction error vs horizon on held-out real episodes (fresh seeds, same policy):
  mean squared pixel error of the decoded imagination and absolute error of the predicted reward;
- the real-env score of the agent trained inside each model (same evaluation seeds);
- the dream-vs-real gap: mean return of that agent inside its own model's dream minus its real
  mean return;
- wall time and parameter counts.

Output in ``OUT``: ``compare.json``, ``report.md``, ``prediction_error.png``; the RSSM and
actor-critic checkpoints in ``OUT/rssm`` (resumable).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import EpisodeStore
from dreamlab.dream import DreamVecEnv
from dreamlab.io import atomic_path, atomic_write_json, atomic_write_text
from dreamlab.models import frames_to_tensor
from dreamlab.rssm_worldmodel import rssm_start_states
from dreamlab.train.dreamer import DreamerConfig, DreamerTrainer
from dreamlab.train.imagination import ImaginationConfig
from dreamlab.worldmodel import WorldModel, start_latents_from_store

__all__ = ["CompareModelsArgs", "compare_models", "open_loop_errors", "dream_return"]


@dataclass
class CompareModelsArgs:
    """Compare V/M/C and RSSM + actor-critic trained on the same episodes (report.md)."""

    preset: str = "catch"
    """V/M/C pipeline preset whose run is compared (its data/, vae/, mdnrnn/, controller/)"""
    run: Path = Path("runs/demo")
    """the finished V/M/C run directory (dreamlab pipeline --preset catch)"""
    out: Path = Path("runs/compare_models")
    """output directory (resumable)"""
    model_size: str = "tiny"
    """RSSM size preset"""
    updates: int = 1500
    """offline Dreamer updates (one world-model step + one actor-critic step each)"""
    batch_size: int = 16
    """sequences per world-model batch"""
    seq_len: int = 32
    """steps per sequence"""
    heldout_episodes: int = 16
    """fresh real episodes (other seeds, same policy) for the open-loop errors"""
    context: int = 5
    """real frames each model observes before it imagines open-loop"""
    horizon: int = 30
    """open-loop steps"""
    eval_episodes: int = 100
    """real-env episodes per agent"""
    dream_episodes: int = 100
    """dream episodes per agent (the dream-vs-real gap)"""
    seed: int = 0
    """seed of everything"""
    num_threads: int = 1
    """torch CPU threads"""
    progress: bool = True
    """show progress"""


@torch.inference_mode()
def open_loop_errors(
    world_model: WorldModel,
    episodes: list[dict[str, np.ndarray]],
    context: int,
    horizon: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Observe ``context`` frames, then imagine ``horizon`` steps with the real actions.

    Returns:
        ``pixel_mse (B, H)`` and ``reward_abs (B, H)``: error of imagined step k+1..H against the
        real frame and reward after the same actions.
    """
    gen = torch.Generator(device=world_model.device).manual_seed(seed)
    obs = np.stack([ep["obs"][: context + horizon] for ep in episodes])  # (B, C+H, h, w, 3)
    act = torch.as_tensor(np.stack([ep["action"][: context + horizon - 1] for ep in episodes]))
    rew = np.stack([ep["reward"][: context + horizon - 1] for ep in episodes])  # (B, C+H-1)
    state = world_model.initial_state(len(episodes))
    for t in range(context):
        state = world_model.observe(state, frames_to_tensor(obs[:, t], world_model.device))
        if t < context - 1:
            state, _, _ = world_model.step(state, act[:, t], 1.0, gen)
    pixel, reward = [], []
    for t in range(context - 1, context - 1 + horizon):
        state, r, _ = world_model.step(state, act[:, t], 1.0, gen)
        real = frames_to_tensor(obs[:, t + 1], world_model.device)
        pixel.append((world_model.decode(state) - real).pow(2).mean((1, 2, 3)).cpu().numpy())
        reward.append(np.abs(r.cpu().numpy() - rew[:, t]))
    return {"pixel_mse": np.stack(pixel, 1), "reward_abs": np.stack(reward, 1)}


@torch.inference_mode()
def dream_return(
    world_model: WorldModel,
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
        total += reward.cpu() * alive
        alive &= ~(terminated | truncated).cpu()
        if not bool(alive.any()):
            break
    return float(total.mean())


def _num_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _plot(errors: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    fig = Figure(figsize=(9, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate(
        [("pixel_mse", "pixel MSE"), ("reward_abs", "|reward error|")]
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, err in errors.items():
            steps = np.arange(1, err[key].shape[1] + 1)
            ax.plot(steps, err[key].mean(0), label=name)
        ax.set_xlabel("imagined steps (open loop)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def _train_rssm(args: CompareModelsArgs, data: EpisodeStore, env: str) -> DreamerTrainer:
    cfg = DreamerConfig(
        preset="compare-models",
        env=env,
        model_size=args.model_size,
        imagination=ImaginationConfig(actor_lr=1e-4, critic_lr=2e-4, entropy=3e-3, max_starts=512),
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        seed=args.seed,
        progress=False,
        tensorboard=False,
    )
    tr = DreamerTrainer(cfg, args.out / "rssm")
    tr.try_resume()
    tr.replay.episodes.clear()
    for i in data.indices:
        tr.replay.add(data.episode(i))
    t0, seconds0 = time.perf_counter(), tr.seconds
    bar = tqdm(
        total=args.updates,
        initial=tr.updates,
        desc="rssm",
        disable=not args.progress,
        file=sys.stderr,
    )
    while tr.updates < args.updates:
        metrics = tr.update()
        bar.update(1)
        if tr.updates % 50 == 0:
            bar.set_postfix(img=f"{metrics['model/image']:.3g}")
        if tr.updates % 250 == 0 or tr.updates == args.updates:
            tr.seconds = seconds0 + time.perf_counter() - t0
            tr.save()
    bar.close()
    return tr


def compare_models(args: CompareModelsArgs) -> Path:
    """Run the comparison; returns the path of ``report.md``."""
    from dreamlab.agent import WorldModelAgent
    from dreamlab.envs import make_env
    from dreamlab.eval.evaluate import evaluate_policy
    from dreamlab.pipeline import Run

    if args.updates < 1 or args.horizon < 1 or args.context < 1:
        raise ValueError("compare-models: updates, horizon and context must be >= 1")
    torch.set_num_threads(args.num_threads)
    run = Run.open(args.run, args.preset)
    args.out.mkdir(parents=True, exist_ok=True)
    env_name = run.config.env
    data = run.data()

    # ---- the two agents
    vm = run.world_model()
    controller = run.controller()
    tr = _train_rssm(args, data, env_name)
    dreamer = tr.agent()
    rssm_wm = dreamer.world_model

    # ---- real-env scores (same seeds)
    def real(policy: Any) -> dict[str, Any]:
        result = evaluate_policy(
            lambda: make_env(env_name),
            policy,
            args.eval_episodes,
            env_name=env_name,
            seed=1_000_000_000,
            record=False,
            progress=False,
        )
        return result.summary()

    real_vm = real(WorldModelAgent(vm, controller))
    real_rssm = real(dreamer)

    # ---- dream scores
    space = run.action_space()
    max_steps = 2 * int(np.max(data.lengths))
    vm_start = start_latents_from_store(run.latents())
    rssm_start = rssm_start_states(rssm_wm, data, frames="first", max_episodes=200)
    ac = dreamer.actor_critic
    dream_vm = dream_return(
        vm, vm_start, space, controller, args.dream_episodes, max_steps, args.seed
    )
    dream_rssm = dream_return(
        rssm_wm,
        rssm_start,
        space,
        lambda f: ac.to_env(ac.policy(f).mode()),
        args.dream_episodes,
        max_steps,
        args.seed,
    )

    # ---- open-loop errors on held-out episodes
    heldout_dir = args.out / "heldout"
    collect(
        CollectConfig(
            env=env_name,
            out=heldout_dir,
            episodes=args.heldout_episodes,
            policy=run.config.collect_policy,
            seed=200_000 + args.seed,
            workers=1,
            progress=False,
        )
    )
    held = EpisodeStore.open(heldout_dir)
    need = args.context + args.horizon - 1
    episodes = [held.episode(i) for i in held.indices if len(held.episode(i)["action"]) >= need]
    if not episodes:
        raise ValueError(f"compare-models: no held-out episode has {need} steps")
    errors = {
        "V+M": open_loop_errors(vm, episodes, args.context, args.horizon, args.seed),
        "RSSM": open_loop_errors(rssm_wm, episodes, args.context, args.horizon, args.seed),
    }
    _plot(errors, args.out / "prediction_error.png")

    # ---- cost
    timings = run.timings()
    vm_seconds = sum(timings.get(k, 0.0) for k in ("vae", "encode", "mdnrnn", "controller"))
    rows = {
        "V/M/C": {
            "params_world_model": _num_params(vm.vae, vm.mdnrnn),
            "params_agent": _num_params(controller),
            "train_seconds": vm_seconds,
            "real": real_vm,
            "dream_return": dream_vm,
        },
        "RSSM + actor-critic": {
            "params_world_model": _num_params(rssm_wm.rssm),
            "params_agent": _num_params(ac.actor, ac.critic),
            "train_seconds": tr.seconds,
            "updates": tr.updates,
            "real": real_rssm,
            "dream_return": dream_rssm,
        },
    }
    horizons = [h for h in (1, 5, 10, 20, 30) if h <= args.horizon]
    summary = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
        "episodes_trained_on": len(data),
        "env_steps_trained_on": int(data.num_steps),
        "heldout_episodes": len(episodes),
        "agents": rows,
        "open_loop": {
            name: {
                key: {str(h): float(err[key][:, h - 1].mean()) for h in horizons}
                for key in ("pixel_mse", "reward_abs")
            }
            for name, err in errors.items()
        },
    }
    atomic_write_json(args.out / "compare.json", summary)

    lines = [
        f"# V/M/C vs RSSM + actor-critic on `{env_name}` (same {len(data)} episodes, "
        f"{data.num_steps} steps from `{args.run}/data`)",
        "",
        "| | params (model) | params (agent) | train s | real return | real catch rate | "
        "dream return | dream - real |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        r = row["real"]
        rate = f"{r['catch_rate']:.2f}" if "catch_rate" in r else "-"
        lines.append(
            f"| {name} | {row['params_world_model']:,} | {row['params_agent']:,} | "
            f"{row['train_seconds']:.0f} | {r['mean_return']:.2f} | {rate} | "
            f"{row['dream_return']:.2f} | {row['dream_return'] - r['mean_return']:+.2f} |"
        )
    lines += [
        "",
        f"Open-loop error on {len(episodes)} held-out episodes ({args.context} context frames, "
        "real actions, mean over episodes):",
        "",
        "| model | "
        + " | ".join(f"pixel MSE @{h}" for h in horizons)
        + " | "
        + " | ".join(f"reward err @{h}" for h in horizons)
        + " |",
        "|---|" + "---:|" * (2 * len(horizons)),
    ]
    for name, err in summary["open_loop"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{err['pixel_mse'][str(h)]:.4f}" for h in horizons)
            + " | "
            + " | ".join(f"{err['reward_abs'][str(h)]:.3f}" for h in horizons)
            + " |"
        )
    lines += [
        "",
        "![prediction error](prediction_error.png)",
        "",
        "V/M/C train time is the run's vae + encode + mdnrnn + controller stages (timings.json); "
        "the RSSM's is its offline updates (world model and actor-critic together). Real scores: "
        f"{args.eval_episodes} episodes, seeds 1e9+; dream: {args.dream_episodes} dreams at "
        "temperature 1.",
        "",
    ]
    report = args.out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    if args.progress:
        print("\n".join(lines), file=sys.stderr)
    return report
