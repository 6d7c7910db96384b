"""Dreamer run directories: presets and the one-command pipeline for the RSSM generation.

``dreamlab pipeline --preset catch-dreamer --run runs/dreamer`` lands here (see
:func:`dreamlab.pipeline.run_pipeline`): the online loop of :mod:`dreamlab.train.dreamer` runs
(resumably) in the run directory, then ``report.md`` summarises the final real-env evaluation.

A Dreamer run directory's ``config.json`` is ``{"kind": "dreamer", "dreamer": {...}}``; a V/M/C
run's is a ``RunConfig``. The two never mix in one directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamlab.io import atomic_write_text, read_json
from dreamlab.models.rssm import rssm_preset
from dreamlab.train.dreamer import DreamerConfig, DreamerResult, train_dreamer
from dreamlab.train.imagination import ImaginationConfig

__all__ = [
    "DREAMER_PRESETS",
    "TrainDreamerArgs",
    "get_dreamer_preset",
    "is_dreamer_run",
    "run_dreamer_pipeline",
    "train_dreamer_cmd",
]


def _catch_dreamer() -> DreamerConfig:
    # 32x32 Catch with the three discrete actions (left/stay/right move the paddle as fast as the
    # continuous extremes): one CPU core trains it in ~30 minutes (BENCHMARKS.md).
    return DreamerConfig(
        preset="catch-dreamer",
        env="catch-32",
        env_kwargs={"discrete": True},
        model_size="tiny",
        foreground_weight=10.0,
        actor_hidden=128,
        imagination=ImaginationConfig(actor_lr=1e-4, critic_lr=2e-4, entropy=3e-3, max_starts=512),
        total_env_steps=24_000,
        num_envs=8,
        prefill_steps=1000,
        train_every=8,
        batch_size=16,
        seq_len=32,
        model_lr=3e-4,
        eval_every=4000,
        eval_episodes=20,
        final_eval_episodes=100,
        checkpoint_every=2000,
        num_threads=1,
    )


def _catch_dreamer_continuous() -> DreamerConfig:
    cfg = _catch_dreamer()
    cfg.preset = "catch-dreamer-continuous"
    cfg.env_kwargs = {}
    return cfg


def _catch_dreamer_debug() -> DreamerConfig:
    cfg = _catch_dreamer()
    cfg.preset = "catch-dreamer-debug"
    cfg.total_env_steps = 400
    cfg.prefill_steps = 200
    cfg.num_envs = 4
    cfg.train_every = 16
    cfg.batch_size = 4
    cfg.seq_len = 16
    cfg.eval_every = 200
    cfg.eval_episodes = 2
    cfg.final_eval_episodes = 4
    cfg.checkpoint_every = 200
    cfg.log_every = 5
    cfg.progress = False
    cfg.tensorboard = False
    return cfg


def _carracing_dreamer() -> DreamerConfig:
    # DreamerV3-S-sized model on 64x64 CarRacing; a GPU run (not measured here).
    return DreamerConfig(
        preset="carracing-dreamer",
        env="carracing",
        model_size="dreamerv3-s",
        rssm=None,
        foreground_weight=0.0,
        actor_hidden=512,
        value_bins=255,
        imagination=ImaginationConfig(),
        total_env_steps=500_000,
        num_envs=8,
        prefill_steps=5000,
        train_every=32,
        batch_size=16,
        seq_len=64,
        model_lr=1e-4,
        eval_every=25_000,
        eval_episodes=10,
        final_eval_episodes=100,
        checkpoint_every=10_000,
        device="cuda",
    )


DREAMER_PRESETS: dict[str, Callable[[], DreamerConfig]] = {
    "catch-dreamer": _catch_dreamer,
    "catch-dreamer-continuous": _catch_dreamer_continuous,
    "catch-dreamer-debug": _catch_dreamer_debug,
    "carracing-dreamer": _carracing_dreamer,
}


def get_dreamer_preset(name: str) -> DreamerConfig:
    """A fresh copy of the named Dreamer preset."""
    if name not in DREAMER_PRESETS:
        raise ValueError(f"unknown Dreamer preset {name!r}; known: {', '.join(DREAMER_PRESETS)}")
    return DREAMER_PRESETS[name]()


def is_dreamer_run(path: str | Path) -> bool:
    """Whether ``path`` holds a Dreamer run (its config.json has kind 'dreamer')."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    data = read_json(cfg, "run config")
    return isinstance(data, dict) and data.get("kind") == "dreamer"


def _open(path: Path, preset: str | None) -> DreamerConfig:
    if is_dreamer_run(path):
        data = read_json(path / "config.json", "run config")
        cfg = DreamerConfig.from_json(data["dreamer"], str(path / "config.json"))
        if preset is not None and preset != cfg.preset:
            raise ValueError(
                f"{path} was made with preset {cfg.preset!r}, not {preset!r}; use another --run "
                "directory"
            )
        return cfg
    if (path / "config.json").exists():
        raise ValueError(f"{path}: holds a run that is not a Dreamer run; use another --run")
    if preset is None:
        raise ValueError(f"{path}: no config.json; start it with --preset NAME")
    return get_dreamer_preset(preset)


def write_dreamer_report(path: Path, result: DreamerResult) -> Path:
    """``report.md``: the final evaluation, the learning curve of evaluations, the cost."""
    evals: dict[str, Any] = read_json(path / "eval.json", "eval")
    cfg = _open(path, None)
    rssm = cfg.rssm or rssm_preset(cfg.model_size)
    final = result.final_eval or {}
    lines = [
        f"# Dreamer run `{path}` (preset `{cfg.preset}`)",
        "",
        f"- env: `{cfg.env}` {cfg.env_kwargs or ''}; RSSM size `{cfg.model_size}` "
        f"(deter {rssm.deter}, {rssm.stoch}x{rssm.classes} latents)",
        f"- env steps: {result.env_steps}; updates: {result.updates} "
        f"(replay ratio {cfg.replay_ratio:g}); wall time {result.seconds:.0f} s",
        f"- final real-env evaluation over {final.get('episodes', 0)} episodes: mean return "
        f"{final.get('mean_return', float('nan')):.2f}"
        + (f", catch rate {final['catch_rate']:.1%}" if "catch_rate" in final else ""),
        "",
        f"Periodic evaluations ({cfg.eval_episodes} episodes each, actor mode):",
        "",
        "| env steps | updates | train s | mean return | catch rate |",
        "|---:|---:|---:|---:|---:|",
    ]
    history = [(e, "") for e in evals.get("history", [])]
    for e, tag in [*history, (final, f" (final, {final.get('episodes', 0)} episodes)")]:
        if not e:
            continue
        rate = f"{e['catch_rate']:.1%}" if "catch_rate" in e else "-"
        lines.append(
            f"| {e['env_steps']}{tag} | {e['updates']} | {e['train_seconds']:.0f} | "
            f"{e['mean_return']:.2f} | {rate} |"
        )
    video = _dream_video(path)
    if video is not None:
        lines += [
            "",
            f"Dream vs reality ({video['context']} real frames, then {video['horizon']} steps "
            "open loop with the real actions): `dream_vs_real.mp4`; median pixel MSE at steps "
            + ", ".join(
                f"{h}: {video['pixel_mse_median'][h]:.4f}"
                for h in (1, 5, 10, video["horizon"])
                if h < len(video["pixel_mse_median"])
            ),
            "",
            "![dream vs real](dream_vs_real.gif)",
        ]
    lines += ["", "Curves: `tensorboard --logdir " + str(path / "tb") + "`; metrics.jsonl.", ""]
    out = path / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out


def _dream_video(path: Path, context: int = 5, horizon: int = 20) -> dict[str, Any] | None:
    """The existing dream-vs-reality tool on the trained RSSM and the run's last episodes."""
    from dreamlab.data.store import EpisodeStore
    from dreamlab.dreamer_agent import DreamerAgent
    from dreamlab.eval.dream_vs_real import dream_vs_real

    store = EpisodeStore.open(path / "data")
    need = context + horizon - 1
    episodes = [store.episode(i) for i in store.indices[-8:]]
    episodes = [ep for ep in episodes if len(ep["action"]) >= need]
    if not episodes:
        return None
    world_model = DreamerAgent.load(path).world_model
    return dream_vs_real(world_model, episodes, path, context=context, horizon=horizon)


def run_dreamer_pipeline(run: str | Path, preset: str | None, progress: bool = True) -> Path:
    """Train (or resume) a Dreamer run in ``run`` and write its report; returns the run path."""
    path = Path(run)
    cfg = _open(path, preset)
    if not progress:
        cfg = dataclasses.replace(cfg, progress=False)
    result = train_dreamer(cfg, path)
    report = write_dreamer_report(path, result)
    print(f"[dreamlab] dreamer done: {report}", flush=True)
    return path


@dataclass
class TrainDreamerArgs:
    """Train a Dreamer agent (RSSM + actor-critic in imagination) online, resumably."""

    run: Path = Path("runs/dreamer")
    """run directory (created from --preset, or resumed)"""
    preset: str = "catch-dreamer"
    """Dreamer preset: catch-dreamer, catch-dreamer-continuous, catch-dreamer-debug, carracing-dreamer"""
    total_env_steps: int | None = None
    """override the preset's env-step budget (written into the run's config.json)"""


def train_dreamer_cmd(args: TrainDreamerArgs) -> Path:
    """CLI wrapper: open or create the run, apply overrides, train, report."""
    path = Path(args.run)
    cfg = _open(path, args.preset)
    if args.total_env_steps is not None and args.total_env_steps != cfg.total_env_steps:
        if is_dreamer_run(path):
            raise ValueError(
                f"{path}: an existing run keeps its budget ({cfg.total_env_steps} env steps); "
                "use another --run to change it"
            )
        cfg = dataclasses.replace(cfg, total_env_steps=args.total_env_steps)
    result = train_dreamer(cfg, path)
    write_dreamer_report(path, result)
    return path
