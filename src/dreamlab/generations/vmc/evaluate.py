"""A V/M/C run's agents in the real env, and its dreams: the evaluate, dream and report stages
and the ``dreamlab evaluate`` / ``dream`` / ``report`` commands on a V/M/C run.

Agents are named: ``random``, ``brownian`` (sticky random actions on a Discrete space, a random
walk on a Box), ``expert`` (Catch), ``controller`` (the last C),
``controller_roundR`` (round R's C of the iterative procedure), ``controller_vonly``, ``planner``
(CEM/MPPI in the run's dream), any other C trained with ``train-controller --name NAME``, and
``bc`` / ``bc_latent``, the BC policies ``dreamlab train-bc`` saves into the run
(:class:`~dreamlab.agent.BCPolicy`; no registry, nothing filled in by an import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dreamlab.agent import BC_SOURCE_FILE, BCPolicy
from dreamlab.checkpoint import has_model
from dreamlab.dream import DreamEnv
from dreamlab.envs.policies import make_policy
from dreamlab.eval.dream_vs_real import dream_vs_real
from dreamlab.eval.evaluate import evaluate_policy
from dreamlab.eval.kindness import KINDNESS_FILE, measure_kindness
from dreamlab.generations.args import DreamArgs, EvaluateArgs
from dreamlab.generations.vmc.agent import VMCAgent
from dreamlab.generations.vmc.report import controller_path, controller_round, write_report
from dreamlab.generations.vmc.run import Run
from dreamlab.generations.vmc.uncertainty import controller_world_model
from dreamlab.generations.vmc.worldmodel import start_latents_from_store
from dreamlab.io import atomic_write_json, read_json
from dreamlab.plan.mpc import PlannerAgent, PlannerConfig
from dreamlab.rundir import RunError, timed
from dreamlab.viz import write_video

__all__ = [
    "BC_AGENTS",
    "KINDNESS_FILE",
    "dream",
    "dream_kindness",
    "evaluate",
    "evaluate_agent",
    "load_agent",
    "load_bc",
    "report",
    "stage_dream",
    "stage_evaluate",
]

BC_AGENTS = ("bc", "bc_latent")
"""BC policies ``dreamlab train-bc`` saves into ``RUN/bc`` and ``RUN/bc_latent``"""


def load_bc(run: Run, which: str) -> BCPolicy:
    """``RUN/bc`` (pixels) or ``RUN/bc_latent`` (reads [z, h] of the V+M its ``bc.json`` names,
    this run's by default)."""
    directory = run.model_dir(which, f"{which} policy", "train-bc")
    if which == "bc":
        return BCPolicy.load(directory)
    file = directory / BC_SOURCE_FILE
    source = read_json(file, "BC source") if file.exists() else {}
    wm_run = Path(source.get("world_model_run") or run.path)
    owner = run if wm_run.resolve() == run.path.resolve() else Run.open(wm_run)
    return BCPolicy.load(directory, owner.world_model("zh"))


def load_agent(
    run: Run,
    which: str,
    planner: PlannerConfig | None = None,
    pessimism: float | None = None,
    precision: Literal["float32", "bfloat16"] = "float32",
) -> Any:
    """The policy called ``which`` (see the module docstring); the planner plans in the run's
    dream, or in its ensemble's with ``pessimism``."""
    if which in ("random", "expert", "brownian"):
        return make_policy(which, run.action_space(), seed=run.config.seed)
    if which in BC_AGENTS:
        return load_bc(run, which)
    if which == "planner":
        world_model = (
            run.world_model("zh", precision)
            if pessimism is None
            else controller_world_model(run, "zh", pessimism)
        )
        return PlannerAgent(world_model, run.action_space(), planner)
    round_ = controller_round(which)
    features: Literal["zh", "z"] = "z" if which == "controller_vonly" else "zh"
    return VMCAgent(
        run.world_model(features, round_=round_), run.controller(controller_path(which))
    )


def evaluate_agent(
    run: Run,
    which: str,
    episodes: int,
    *,
    video: bool = True,
    progress: bool = True,
    planner: PlannerConfig | None = None,
    pessimism: float | None = None,
    precision: Literal["float32", "bfloat16"] = "float32",
) -> dict[str, Any]:
    """Score one agent in the real env; write ``eval_<which>_{best,worst}.mp4``.

    A planner's entry also records its settings and speed (``planning``: median ms per batched
    call, decisions per second over the evaluation's lockstep batch).
    """
    cfg = run.config
    policy = load_agent(run, which, planner, pessimism, precision)
    result = evaluate_policy(
        run.make_env,
        policy,
        episodes,
        env_name=cfg.env,
        seed=cfg.seed + 10_000,
        record=video,
        progress=progress,
    )
    summary = {"agent": which, **result.summary()}
    if isinstance(policy, PlannerAgent):
        summary["planner"] = policy.config.to_dict()
        summary["pessimism"] = pessimism
        summary["precision"] = precision
        summary["planning"] = policy.timing()
    if video and result.best_frames is not None and result.worst_frames is not None:
        write_video(run / f"eval_{which}_best.mp4", result.best_frames, fps=15)
        write_video(run / f"eval_{which}_worst.mp4", result.worst_frames, fps=15)
        summary["videos"] = [f"eval_{which}_best.mp4", f"eval_{which}_worst.mp4"]
    return summary


def stage_evaluate(
    run: Run,
    agents: list[str] | None = None,
    episodes: int | None = None,
    progress: bool = True,
    *,
    planner: PlannerConfig | None = None,
    pessimism: float | None = None,
    precision: Literal["float32", "bfloat16"] = "float32",
) -> dict[str, Any]:
    """Evaluate every available agent in the real env; write ``eval.json``.

    ``eval.json`` keeps the controller's numbers at the top level (``env``, ``episodes``,
    ``mean_return``, ``std_return``, ``catch_rate`` for Catch) and every agent under ``agents``.
    """
    cfg = run.config
    n = cfg.eval_episodes if episodes is None else episodes
    if n < 1:
        raise RunError(f"evaluate: expected >= 1 episode per agent, got {n}")
    if agents is None:
        # what iterating bought: each earlier round's C, scored like the final one
        agents = ["random", *(f"controller_round{r}" for r in range(cfg.iterations)), "controller"]
        if cfg.vonly_ablation and has_model(run / "controller_vonly"):
            agents.append("controller_vonly")
        if cfg.env.startswith("catch") or "Catch" in cfg.env:
            agents.insert(1, "expert")
        if cfg.collect_policy == "brownian":  # the data's own policy, beside white-noise random
            agents.insert(1, "brownian")

    def work() -> dict[str, Any]:
        path = run / "eval.json"
        previous = read_json(path, "eval") if path.exists() else {"agents": {}}
        scores = dict(previous.get("agents", {}))
        for which in agents:
            scores[which] = evaluate_agent(
                run,
                which,
                n,
                progress=progress,
                planner=planner,
                pessimism=pessimism,
                precision=precision,
            )
        main = scores.get("controller") or next(iter(scores.values()))
        out = {k: v for k, v in main.items() if k not in ("agent", "videos")}
        out["agents"] = scores
        atomic_write_json(path, out)
        return out

    return timed(run.path, "evaluate", work)


def stage_dream(run: Run) -> dict[str, Any]:
    """Dream vs reality: open-loop video and prediction error against the horizon."""
    cfg = run.config
    store = run.data()
    need = cfg.dream_context + cfg.dream_horizon - 1
    rng = np.random.default_rng(cfg.seed)
    candidates = [i for i, n in zip(store.indices, store.lengths, strict=True) if n >= need]
    if not candidates:
        raise RunError(f"{run.path}: no episode has {need} steps for the dream-vs-real video")
    chosen = rng.choice(candidates, size=min(16, len(candidates)), replace=False)
    episodes = [store.episode(int(i)) for i in sorted(chosen)]
    return timed(
        run.path,
        "dream",
        lambda: dream_vs_real(
            run.world_model(),
            episodes,
            run.path,
            context=cfg.dream_context,
            horizon=cfg.dream_horizon,
            temperature=cfg.evolve.temperature,
            seed=cfg.seed,
        ),
    )


"""C's and random play's returns in whole dreams beside their real ones (:func:`dream_kindness`)"""


def dream_kindness(run: Run, episodes: int = 256) -> dict[str, Any] | None:
    """Is the dream kinder than reality? C (and random play) play ``episodes`` whole dreams from
    real first frames, as long as the longest real episode, at C's training temperature and with
    the run's dream rules; their returns beside ``eval.json``'s go to ``RUN/kindness.json``
    (:mod:`dreamlab.eval.kindness`). Nothing without C's real score."""
    cfg = run.config
    evals = (
        read_json(run / "eval.json", "eval").get("agents", {})
        if (run / "eval.json").exists()
        else {}
    )
    if "controller" not in evals or not has_model(run / "controller"):
        return None
    wm = run.world_model()
    starts = [start_latents_from_store(s, frames="first") for s in run.round_latents(None)]
    bank = {k: torch.cat([b[k] for b in starts]) for k in starts[0]}
    longest = max([*run.data().lengths, *evals["controller"].get("lengths", [])])
    space = run.action_space()
    policies = {
        "controller": run.controller(),
        "random": make_policy("random", space, seed=cfg.seed),
    }
    return measure_kindness(
        run.path,
        wm,
        bank,
        space,
        {name: (policy, evals[name]) for name, policy in policies.items() if name in evals},
        max_steps=longest,
        episodes=episodes,
        temperature=cfg.evolve.temperature,
        termination=cfg.dream_termination,
        seed=cfg.seed,
    )


# ------------------------------------------------------------------------------------ commands
def evaluate(path: Path, args: EvaluateArgs) -> dict[str, Any]:
    """``dreamlab evaluate`` on the V/M/C run at ``path``: score ``args.agent`` and print one
    line per agent."""
    out = stage_evaluate(
        Run.open(path),
        agents=list(args.agent),
        episodes=args.episodes,
        planner=args.planner,
        pessimism=args.pessimism,
        precision=args.precision,
    )
    for name, a in out["agents"].items():
        extra = f", catch rate {a['catch_rate']:.2f}" if "catch_rate" in a else ""
        if "planning" in a and a["planning"].get("calls"):
            extra += f", {a['planning']['decisions_per_s']:.1f} decisions/s"
        print(
            f"{name:>18}: return {a['mean_return']:.2f} ± {a['std_return']:.2f} over "
            f"{a['episodes']} episodes{extra}"
        )
    return out


def dream(path: Path, args: DreamArgs) -> Path:
    """``dreamlab dream`` on the V/M/C run at ``path``: a dream decoded by V (C acts in it, or
    random actions), then the dream-vs-reality video (:func:`stage_dream`)."""
    if args.prompt is not None:
        raise RunError(
            f"{path}: --prompt needs a token run (dreamlab train-tokens); this run's V+M "
            "model has no prompt vocabulary"
        )
    run = Run.open(path)
    space = run.action_space()
    env = DreamEnv(
        run.world_model(),
        start_latents_from_store(run.latents()),
        space,
        temperature=args.temperature,
        max_episode_steps=args.steps,
        render_mode="rgb_array",
    )
    controller = None
    if args.agent == "controller" and has_model(run / "controller"):
        controller = run.controller()
    space.seed(args.seed)
    obs, _ = env.reset(seed=args.seed)
    frames = [env.render()]
    for _ in range(args.steps):
        if controller is None:
            action = space.sample()
        else:
            with torch.inference_mode():
                action = controller(torch.as_tensor(obs)[None])[0].numpy()
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(env.render())
        if terminated or truncated:
            break
    out = args.video or (run / "dream.mp4")
    write_video(out, np.stack(frames), fps=15)
    stage_dream(run)
    print(f"dream: {len(frames)} frames -> {out}; dream vs real -> {run / 'dream_vs_real.mp4'}")
    return Path(out)


def report(path: Path) -> Path:
    """``dreamlab report`` on the V/M/C run at ``path``: write ``RUN/report.md``."""
    return write_report(Run.open(path))
