"""What a diffusion run shows: ``report.md`` from what its stages saved, and a decoded dream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamlab.checkpoint import has_model
from dreamlab.eval.kindness import kindness_markdown
from dreamlab.generations.args import DreamArgs
from dreamlab.generations.diffusion.run import (
    load_diffusion_agent,
    load_diffusion_world_model,
    run_config,
)
from dreamlab.generations.diffusion.train import EVAL_SEED, run_env, run_store
from dreamlab.generations.diffusion.worldmodel import diffusion_start_states
from dreamlab.io import atomic_write_text, read_json
from dreamlab.rundir import RunError, store_action_space, timings

__all__ = ["dream_diffusion", "write_diffusion_report"]


def _fidelity_rows(fid: dict[str, Any]) -> list[str]:
    """The open-loop table: model vs copy-last-frame MSE (and the ball's error) per horizon."""
    rows = [
        "| horizon | model MSE | copy-last MSE | ratio | ball x error (px) |",
        "|---:|---:|---:|---:|---:|",
    ]
    ball = fid.get("ball_x_error") or [None] * len(fid.get("horizons", []))
    for h, m, c, r, b in zip(
        fid.get("horizons", []),
        fid.get("model_mse", []),
        fid.get("copy_last_mse", []),
        fid.get("ratio", []),
        ball,
        strict=False,
    ):
        rows.append(f"| {h} | {m:.4f} | {c:.4f} | {r:.2f} | {'-' if b is None else f'{b:.2f}'} |")
    return rows


def diffusion_kindness(path: Path) -> dict[str, Any] | None:
    """Is the dream kinder than reality? The Q-agent and random play in 64 whole dreams of the
    diffusion model (its dreams are the slowest) beside their real returns (``kindness.json``,
    :mod:`dreamlab.eval.kindness`); nothing before the evaluation."""
    from dreamlab.eval.kindness import kindness_of_run

    cfg = run_config(path)
    summary = read_json(path / "eval.json", "eval") if (path / "eval.json").exists() else {}
    if "mean_return" not in summary:
        return None
    store = run_store(cfg, path)
    agent = load_diffusion_agent(path, cfg.device)
    starts = diffusion_start_states(agent.world_model, store, frames="first", max_episodes=64)
    return kindness_of_run(
        path,
        agent.world_model,
        starts,
        store,
        (agent.act, summary),
        run_env(cfg, store),
        real_seed=EVAL_SEED + cfg.seed,
        seed=cfg.seed,
        episodes=64,
        agent="the Q-agent",
        model="the diffusion model",
    )


def write_diffusion_report(path: Path) -> Path:
    """``report.md``: the real-env result of the dream-trained agent, the sizes and costs, the
    open-loop fidelity, dream vs reality, the stages' wall times."""
    cfg = run_config(path)
    eval_path = path / "eval.json"
    s: dict[str, Any] = read_json(eval_path, "eval") if eval_path.exists() else {}
    if "mean_return" not in s:
        raise RunError(f"{path}: not evaluated yet; run `dreamlab pipeline --run {path}` first")
    rate = f", catch rate {s['catch_rate']:.1%}" if "catch_rate" in s else ""
    lines = [
        f"# Diffusion run `{path}` (model `{cfg.preset}`)",
        "",
        f"- env: `{s.get('env', cfg.env)}` {s.get('env_kwargs') or ''}; sampler "
        f"{s['sampler']}, {s['denoising_steps']} denoising steps per frame",
        f"- world model: {s['params_world_model']:,} parameters (denoiser "
        f"{s['params_denoiser']:,}, reward/termination {s['params_reward_end']:,}); "
        f"{s['world_model_steps']} steps in {s['world_model_seconds']:.0f} s",
        f"- agent (Q-learning in the dream): {s['params_agent']:,} parameters; "
        f"{s['agent_transitions']:,} imagined steps ({s['imagined_steps_per_s']:.0f}/s), "
        f"{s['agent_updates']} updates in {s['agent_seconds']:.0f} s",
        f"- real-env evaluation over {s['episodes']} episodes: mean return "
        f"{s['mean_return']:.2f}{rate}",
        "",
        f"Open-loop pixel MSE on {s['fidelity']['episodes']} held-out episodes after "
        f"{s['fidelity']['context']} real frames:",
        "",
        *_fidelity_rows(s["fidelity"]),
    ]
    if (path / "dream_vs_real.gif").exists():
        lines += [
            "",
            "Dream vs reality (`dream_vs_real.mp4`):",
            "",
            "![dream vs real](dream_vs_real.gif)",
        ]
    labels = {"controller": "the Q-agent", "random": "random play"}
    lines += ["", *kindness_markdown(path, labels)]
    times = timings(path)
    if times:
        lines += [
            "",
            "Wall time per stage (s, over every resume): "
            + ", ".join(f"{stage} {sec:.0f}" for stage, sec in times.items()),
        ]
    out = path / "report.md"
    atomic_write_text(out, "\n".join([*lines, ""]))
    return out


def dream_diffusion(path: Path, args: DreamArgs) -> Path:
    """``dreamlab dream`` for a diffusion run: a dream sampled by the diffusion model from the
    first frames of the run's episodes, its dream-trained agent (greedy) or random actions acting."""
    from dreamlab.dream import record_dream
    from dreamlab.viz import write_video

    if args.prompt is not None:
        raise RunError(f"{path}: --prompt needs a token run; a diffusion run has no prompts")
    cfg = run_config(path)
    store = run_store(cfg, path)
    if args.agent == "controller" and has_model(path / "agent"):
        agent = load_diffusion_agent(path, cfg.device)
        world_model, policy = agent.world_model, agent.act
    else:
        world_model, policy = load_diffusion_world_model(path, cfg.device), None
    start = diffusion_start_states(world_model, store, frames="first", max_episodes=200)
    frames = record_dream(
        world_model,
        start,
        store_action_space(store),
        policy,
        steps=args.steps,
        temperature=args.temperature,
        seed=args.seed,
    )
    out = args.video or (path / "dream.mp4")
    write_video(out, frames, fps=15)
    print(f"dream: {len(frames)} frames -> {out}")
    return Path(out)
