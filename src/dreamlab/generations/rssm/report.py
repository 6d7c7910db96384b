"""What a Dreamer run shows: ``report.md``, a decoded dream, and dream vs reality.

Everything here reads what the run saved (``config.json``, ``trainer.json``, ``eval.json``,
``data/`` and the checkpoints), so it works on a finished run as well as on one still training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamlab.data.store import EpisodeStore
from dreamlab.eval.kindness import kindness_markdown
from dreamlab.generations.args import DreamArgs
from dreamlab.generations.rssm.agent import DreamerAgent
from dreamlab.generations.rssm.config import KIND, DreamerConfig
from dreamlab.generations.rssm.trainer import TRAINER_FILE
from dreamlab.generations.rssm.worldmodel import rssm_start_states
from dreamlab.io import atomic_write_text, read_json
from dreamlab.models.rssm import rssm_preset
from dreamlab.rundir import RunError, read_run_config_of, store_action_space

__all__ = ["rssm_kindness", "dream_rssm", "dream_vs_reality", "run_config", "write_dreamer_report"]


def run_config(path: Path) -> DreamerConfig:
    """The :class:`DreamerConfig` of the Dreamer run at ``path``.

    Raises:
        RunError: no run at ``path``, or a run of another generation.
    """
    data = read_run_config_of(path, KIND, "Dreamer")
    if data is None:
        raise RunError(f"{path}: no run here (no config.json)")
    return DreamerConfig.from_json(data, str(path / "config.json"))


def _budget_line(path: Path, cfg: DreamerConfig, state: dict[str, Any]) -> str:
    wall = f"wall time {state['seconds']:.0f} s"
    if cfg.offline_updates:
        store = EpisodeStore.open(path / "data")
        return (
            f"- offline: {state['updates']} updates on the {len(store)} episodes of `data/` "
            f"({store.num_steps} steps); no env step but the final evaluation's; {wall}"
        )
    return (
        f"- env steps: {state['env_steps']}; updates: {state['updates']} "
        f"(replay ratio {cfg.replay_ratio:g}); {wall}"
    )


def write_dreamer_report(path: Path) -> Path:
    """``report.md``: the final evaluation, the learning curve of evaluations, the cost, and
    dream vs reality on the run's last episodes."""
    cfg = run_config(path)
    if not (path / TRAINER_FILE).exists() or not (path / "eval.json").exists():
        raise RunError(f"{path}: not trained yet; run `dreamlab pipeline --run {path}` first")
    state: dict[str, Any] = read_json(path / TRAINER_FILE, "dreamer trainer state")
    evals: dict[str, Any] = read_json(path / "eval.json", "eval")
    rssm = cfg.rssm or rssm_preset(cfg.model_size)
    final = evals.get("final") or {}
    lines = [
        f"# Dreamer run `{path}` (preset `{cfg.preset}`)",
        "",
        f"- env: `{cfg.env}` {cfg.env_kwargs or ''}; RSSM size `{cfg.model_size}` "
        f"(deter {rssm.deter}, {rssm.stoch}x{rssm.classes} latents)",
        _budget_line(path, cfg, state),
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
    video = dream_vs_reality(path)
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
    lines += ["", *kindness_markdown(path, {"controller": "the actor", "random": "random play"})]
    lines += ["Curves: `tensorboard --logdir " + str(path / "tb") + "`; metrics.jsonl.", ""]
    out = path / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out


def rssm_kindness(path: Path) -> dict[str, Any] | None:
    """Is the dream kinder than reality? The actor and random play in 256 whole dreams of the
    RSSM beside their real returns (``kindness.json``, :mod:`dreamlab.eval.kindness`); nothing
    before the final evaluation."""
    from dreamlab.eval.kindness import kindness_of_run
    from dreamlab.generations.rssm.online import FINAL_EVAL_SEED

    cfg = run_config(path)
    final = (
        read_json(path / "eval.json", "eval").get("final")
        if (path / "eval.json").exists()
        else None
    )
    if not final:
        return None
    agent = DreamerAgent.load(path, device=cfg.device, seed=cfg.seed)
    store = EpisodeStore.open(path / "data")
    starts = rssm_start_states(agent.world_model, store, frames="first", max_episodes=256)
    return kindness_of_run(
        path,
        agent.world_model,
        starts,
        store,
        (agent.dream_policy, final),
        (cfg.env, dict(cfg.env_kwargs)),
        real_seed=FINAL_EVAL_SEED,
        seed=cfg.seed,
        agent="the actor",
        model="the RSSM",
    )


def dream_vs_reality(path: Path, context: int = 5, horizon: int = 20) -> dict[str, Any] | None:
    """The dream-vs-reality tool (:func:`~dreamlab.eval.dream_vs_real.dream_vs_real`) on the
    trained RSSM and the run's last episodes: ``dream_vs_real.{mp4,gif}`` and the error summary
    (``None`` when no recent episode is long enough)."""
    from dreamlab.eval.dream_vs_real import dream_vs_real

    store = EpisodeStore.open(path / "data")
    need = context + horizon - 1
    episodes = [store.episode(i) for i in store.indices[-8:]]
    episodes = [ep for ep in episodes if len(ep["action"]) >= need]
    if not episodes:
        return None
    world_model = DreamerAgent.load(path).world_model
    return dream_vs_real(world_model, episodes, path, context=context, horizon=horizon)


def dream_rssm(path: Path, args: DreamArgs) -> Path:
    """``dreamlab dream`` for a Dreamer run: a dream decoded by the RSSM from the first frame
    of a real episode, the actor (its mode) or random actions acting; then dream vs reality."""
    from dreamlab.dream import record_dream
    from dreamlab.viz import write_video

    if args.prompt is not None:
        raise RunError(f"{path}: --prompt needs a token run; a Dreamer run's RSSM has no prompts")
    cfg = run_config(path)
    agent = DreamerAgent.load(path, device=cfg.device, seed=args.seed)
    world_model, ac = agent.world_model, agent.actor_critic
    store = EpisodeStore.open(path / "data")
    start = rssm_start_states(world_model, store, frames="first", max_episodes=200)

    def act(features: Any) -> Any:
        return ac.to_env(ac.policy(features).mode())

    frames = record_dream(
        world_model,
        start,
        store_action_space(store),
        act if args.agent == "controller" else None,
        steps=args.steps,
        temperature=args.temperature,
        seed=args.seed,
    )
    out = args.video or (path / "dream.mp4")
    write_video(out, frames, fps=15)
    dream_vs_reality(path)
    print(f"dream: {len(frames)} frames -> {out}; dream vs real -> {path / 'dream_vs_real.mp4'}")
    return Path(out)
