"""The token run's evaluation (``RUN/eval.json``, ``RUN/summary.md``) and its report.

``eval.json`` holds the trained agent in the real env (``agent``), open-loop fidelity on held-out
episodes, imagination speed, parameter counts, training time and, with prompts, the prompt
probe; ``dreamlab evaluate`` adds ``agents`` (:func:`dreamlab.eval.evaluate.score_agents`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from dreamlab.eval.kindness import kindness_markdown
from dreamlab.generations.tokens.config import TokenRunConfig
from dreamlab.generations.tokens.probe import (
    imagination_speed,
    open_loop_fidelity,
    prompt_agreement,
)
from dreamlab.generations.tokens.run import TokenRun, load_token_run, read_token_config
from dreamlab.generations.tokens.worldmodel import token_start_bank
from dreamlab.io import atomic_write_json, atomic_write_text, read_json
from dreamlab.rundir import RunError

__all__ = [
    "EVAL_SEED",
    "evaluate_run",
    "evaluate_tokens",
    "heldout_episodes",
    "summary_markdown",
    "token_kindness",
    "write_report",
]

EVAL_SEED = 10_000
"""the real evaluation's first seed is this + the run's seed"""


def heldout_episodes(cfg: TokenRunConfig, count: int) -> list[dict[str, np.ndarray]]:
    """``count`` fresh random-policy episodes (seeds 1_000_000 + i: not in any collected store)."""
    from dreamlab.data.collect import play_episode
    from dreamlab.envs import make_env

    env = make_env(cfg.env, **cfg.env_kwargs)
    return [play_episode(env, "random", 1_000_000 + i, 1000) for i in range(count)]


def evaluate_run(run: TokenRun, store: Any, progress: bool = True) -> dict[str, Any]:
    """The agent in the real env, fidelity, speed and prompt agreement -> ``eval.json`` (the
    agents ``dreamlab evaluate`` scored there stay)."""
    from dreamlab.envs import make_env
    from dreamlab.eval.evaluate import evaluate_policy

    cfg, wm = run.config, run.world_model
    assert run.agent is not None
    res = evaluate_policy(
        lambda: make_env(cfg.env, **cfg.env_kwargs),
        run.agent,
        cfg.eval_episodes,
        env_name=cfg.env,
        seed=EVAL_SEED + cfg.seed,
        record=False,
        progress=progress,
    )
    episodes = heldout_episodes(cfg, 32)
    report: dict[str, Any] = {
        "agent": res.summary(),
        "fidelity": open_loop_fidelity(wm, episodes),
        "imagination_steps_per_s": imagination_speed(wm, run.bank),
        "params": {
            "tokenizer": sum(p.numel() for p in wm.tokenizer.parameters()),
            "transformer": sum(p.numel() for p in wm.transformer.parameters()),
            "agent": sum(p.numel() for p in run.agent.actor_critic.parameters()),
        },
        "train_seconds": run.seconds,
    }
    if wm.prompt_words:
        report["prompts"] = prompt_agreement(wm, token_start_bank(wm, store, frames="first"))
    file = run.path / "eval.json"
    if file.exists():  # keep the agents `dreamlab evaluate` scored
        report.update({k: v for k, v in read_json(file, "eval").items() if k == "agents"})
    atomic_write_json(file, report)
    summary = summary_markdown(run.path, cfg, report)
    atomic_write_text(run.path / "summary.md", summary)
    if progress:
        print(summary, file=sys.stderr)
    return report


def summary_markdown(path: Path, cfg: TokenRunConfig, r: dict[str, Any]) -> str:
    """Markdown of an ``eval.json`` of the run at ``path`` (``summary.md``; agents that
    ``dreamlab evaluate`` scored get a table of their own)."""
    fid = r["fidelity"]
    lines = [
        f"# Token world model run `{path}` (preset `{cfg.preset}`)",
        "",
        f"- parameters: tokenizer {r['params']['tokenizer']:,}, transformer "
        f"{r['params']['transformer']:,}, agent {r['params']['agent']:,}",
        f"- training wall time (all stages, all sessions): {r['train_seconds']:.0f} s",
        f"- imagination: {r['imagination_steps_per_s']:.0f} env steps/s (batch 128)",
        f"- agent in the real env ({r['agent']['episodes']} episodes): mean return "
        f"{r['agent']['mean_return']:.2f}"
        + (f", catch rate {r['agent']['catch_rate']:.1%}" if "catch_rate" in r["agent"] else ""),
        "",
        f"Open-loop pixel MSE ({fid['episodes']} held-out episodes, {fid['context']} real frames "
        "then the real actions):",
        "",
        "| h | model | copy last frame |",
        "|---:|---:|---:|",
    ]
    for h, m in fid["model_mse"].items():
        lines.append(f"| {h} | {m:.5f} | {fid['copy_last_mse'][h]:.5f} |")
    if "prompts" in r:
        p = r["prompts"]
        lines += [
            "",
            f"Prompt agreement (guidance {p['guidance']}, balls entering in {p['dreams']} dreams of "
            f"{p['steps']} steps):",
            "",
            "| word | balls | agreement | unprompted rate |",
            "|---|---:|---:|---:|",
        ]
        for w, s in p["words"].items():
            lines.append(
                f"| {w} | {s['balls']} | {s['agreement']:.1%} | {s['unprompted_rate']:.1%} |"
            )
    if r.get("agents"):
        lines += [
            "",
            "Agents scored by `dreamlab evaluate` (real env):",
            "",
            "| agent | episodes | mean return | std |",
            "|---|---:|---:|---:|",
        ]
        for name, s in r["agents"].items():
            lines.append(
                f"| {name} | {s['episodes']} | {s['mean_return']:.2f} | {s['std_return']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def token_kindness(path: Path) -> dict[str, Any] | None:
    """Is the dream kinder than reality? The actor and random play in 256 whole dreams of the
    token model beside their real returns (``kindness.json``, :mod:`dreamlab.eval.kindness`);
    nothing before the evaluation."""
    from dreamlab.data.store import EpisodeStore
    from dreamlab.eval.kindness import kindness_of_run
    from dreamlab.generations.tokens.run import run_store

    file = path / "eval.json"
    real = read_json(file, "token run evaluation").get("agent") if file.exists() else None
    if not real:
        return None
    cfg, wm, agent = load_token_run(path)
    assert agent is not None
    store = EpisodeStore.open(run_store(path) or path / "data")
    return kindness_of_run(
        path,
        wm,
        token_start_bank(wm, store, frames="first", max_rows=256),
        store,
        (agent.dream_policy, real),
        (cfg.env, dict(cfg.env_kwargs)),
        real_seed=EVAL_SEED + cfg.seed,
        seed=cfg.seed,
        agent="the actor",
        model="the token model",
    )


def write_report(path: Path) -> Path:
    """``RUN/report.md`` from the run's ``eval.json`` -> its path.

    Raises:
        RunError: no token run at ``path``, or it is not evaluated yet.
    """
    cfg = read_token_config(path)
    file = path / "eval.json"
    if cfg is None or not file.exists():
        raise RunError(f"{path}: no evaluated token run here; run `dreamlab train-tokens` first")
    report = read_json(file, "token run evaluation")
    if "fidelity" not in report:
        raise RunError(f"{file}: has no run evaluation yet; run `dreamlab train-tokens` first")
    out = path / "report.md"
    labels = {"controller": "the actor", "random": "random play"}
    atomic_write_text(
        out, "\n".join([summary_markdown(path, cfg, report), *kindness_markdown(path, labels)])
    )
    return out


def evaluate_tokens(run: Path, args: Any) -> dict[str, Any]:
    """``dreamlab evaluate`` on a token run: ``args.agent`` (``planner`` plans in the token
    model's dream) over ``args.episodes`` real episodes, on the evaluation seeds training used
    (``10_000 + seed``)."""
    from dreamlab.eval.evaluate import score_agents

    args.check_vmc_only("tokens")
    cfg, world_model, agent = load_token_run(run)
    return score_agents(
        run,
        agent,
        cfg.env,
        dict(cfg.env_kwargs),
        args.agent,
        args.episodes,
        seed=EVAL_SEED + cfg.seed,
        world_model=lambda: world_model,
        planner=args.planner,
    )
