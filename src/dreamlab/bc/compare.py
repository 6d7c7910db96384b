"""``dreamlab compare``: behavioral cloning vs the dream-trained controller under distribution shift.

Both learners get the same number of environment frames: the world model its random-policy
episodes (``WM_RUN/data``), BC as many steps of expert demonstrations (``RUN/demos``). Every
agent is then scored in the real env with no shift, and under each shift of
:mod:`dreamlab.envs.shift` at every strength:

    agents   expert, random, controller (the agent WM_RUN trained in its dream: any generation),
             bc (pixels), bc_latent (V+M's [z, h]; a V/M/C run only)
    shifts   actions (k random steps per ball), start (perturbed ball starts), harder (env)

``RUN/compare.json`` keeps every result as it is computed (an interrupted comparison resumes
without recomputing them); ``RUN/compare.png`` plots catch rate against shift strength, one line
per agent, one panel per shift; ``RUN/report.md`` holds the tables and the plot.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamlab.bc.commands import (
    DEFAULT_LATENT_TRAIN,
    DEFAULT_PIXEL_TRAIN,
    collect_demos,
    train_bc_in,
)
from dreamlab.io import atomic_path, atomic_write_json, atomic_write_text, read_json

__all__ = [
    "COMPARE_AGENTS",
    "CompareArgs",
    "WorldModelSide",
    "run_compare",
    "write_compare_report",
]

COMPARE_AGENTS = ("expert", "random", "controller", "bc", "bc_latent")
CONTROLLER_LABELS = {
    "vmc": "V+M+C trained by CMA-ES in the dream",
    "rssm": "Dreamer's actor trained in the RSSM's imagination",
    "diffusion": "the Q-agent trained in the diffusion model's dream",
    "tokens": "the actor-critic trained in the token model's dream",
}
"""what the ``controller`` agent is, per generation of the world-model run"""
SHIFT_LABELS = {
    "actions": "random actions for the first k steps of each ball",
    "start": "perturbed ball starts (strength s)",
    "harder": "harder Catch: faster balls, narrower paddle (strength s)",
}
_SETTINGS_CHECKED = ("preset", "wm_run", "episodes", "seed", "frame_stack")


@dataclass
class CompareArgs:
    """BC vs the world-model controller, on the expert's states and under distribution shift."""

    run: Path = Path("runs/compare")
    """output directory: demos/, bc/, bc_latent/, compare.json, compare.png, report.md"""
    preset: str = "catch"
    """pipeline preset; run into RUN first when no --wm-run is given"""
    wm_run: Path | None = None
    """existing run of any generation whose dream-trained agent is the world-model side (default:
    train one in RUN from --preset)"""
    episodes: int = 100
    """evaluation episodes per agent and shift strength"""
    actions_k: tuple[int, ...] = (5, 10, 15, 20)
    """strengths of the 'actions' shift: random steps at the start of each ball"""
    start_strengths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    """strengths of the 'start' shift, in (0, 1]"""
    harder_strengths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    """strengths of the 'harder' shift, in (0, 1]"""
    agents: tuple[str, ...] | None = None
    """agents to score: expert, random, controller, bc, bc_latent (default: all of them that
    the world-model run serves; bc_latent needs a V/M/C run)"""
    frame_stack: int = 3
    """frames the pixel BC policy sees at once"""
    bc_epochs: float = DEFAULT_PIXEL_TRAIN.epochs
    """passes of pixel BC over the demonstration steps"""
    bc_latent_epochs: float = DEFAULT_LATENT_TRAIN.epochs
    """passes of latent BC over the demonstration steps"""
    bc_steps: int | None = None
    """optimizer steps of each BC policy (overrides the epochs; for quick runs)"""
    seed: int = 0
    """seed of the demonstrations, BC training and the evaluation episodes"""
    progress: bool = True
    """show progress bars"""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"CompareArgs.episodes={self.episodes}: expected >= 1")
        unknown = sorted(set(self.agents or ()) - set(COMPARE_AGENTS))
        if unknown:
            raise ValueError(f"CompareArgs.agents: unknown {unknown}; known {list(COMPARE_AGENTS)}")
        if any(int(k) != k or k < 1 for k in self.actions_k):
            raise ValueError(f"CompareArgs.actions_k={self.actions_k}: expected whole steps >= 1")
        for name in ("start_strengths", "harder_strengths"):
            values = getattr(self, name)
            if any(not 0.0 < float(s) <= 1.0 for s in values):
                raise ValueError(f"CompareArgs.{name}={values}: expected numbers in (0, 1]")

    @property
    def conditions(self) -> list[tuple[str, float]]:
        """(shift kind, strength) pairs to evaluate; ``("none", 0)`` is the unshifted env."""
        out = [("none", 0.0)]
        out += [("actions", float(k)) for k in self.actions_k]
        out += [("start", float(s)) for s in self.start_strengths]
        out += [("harder", float(s)) for s in self.harder_strengths]
        return out


def _key(agent: str, kind: str, strength: float) -> str:
    return f"{agent}/{kind}/{strength:g}"


def _catch_config(env: str, **overrides: Any) -> Any:
    """The CatchConfig an env preset builds (for the expert's knowledge of the geometry)."""
    from dreamlab.envs import CatchConfig, resolve_preset

    fields = {f.name for f in dataclasses.fields(CatchConfig)}
    merged = {**resolve_preset(env).env_kwargs, **overrides}
    return CatchConfig(**{k: v for k, v in merged.items() if k in fields})


@dataclass
class WorldModelSide:
    """The world-model side of the comparison: a run of any generation, its episodes and env."""

    path: Path
    kind: str
    """the run's generation"""
    store: Any
    """the episode store its world model learned from (``EpisodeStore``)"""
    env: str
    env_kwargs: dict[str, Any]
    collect_policy: str

    @classmethod
    def open(cls, path: Path) -> WorldModelSide:
        """The run at ``path``: its episodes are ``RUN/data`` (or the store its config names)."""
        from dreamlab.data.store import STORE_FILE, EpisodeStore
        from dreamlab.generations import get
        from dreamlab.rundir import RunError, read_run_config

        found = read_run_config(path)
        if found is None:
            raise RunError(f"{path}: no run here (no config.json); give a trained run as --wm-run")
        kind, config = found
        data = get(kind).episodes(path)
        if not (data / STORE_FILE).is_file():
            raise RunError(f"{path}: no episode store at {data}; the world model's episodes")
        store = EpisodeStore.open(data)
        preset = store.meta.preset or {}
        env = str(config.get("env") or preset.get("name") or store.meta.env_id)
        kwargs = {**dict(preset.get("env_kwargs") or {}), **dict(config.get("env_kwargs") or {})}
        # Dreamer collects online with its own actor; the others record their collection policy
        default = "its own actor (online)" if kind == "rssm" else "random"
        policy = str(config.get("collect_policy") or default)
        return cls(Path(path), kind, store, env, kwargs, policy)

    def controller(self) -> Any:
        """The agent the run trained in its dream (any generation)."""
        from dreamlab.generations import get

        return get(self.kind).load_agent(self.path, "cpu", None)

    def features_world_model(self) -> Any:
        """V+M, whose [z, h] the latent BC policy reads (a V/M/C run only)."""
        from dreamlab.generations.vmc.run import Run

        return Run.open(self.path).world_model("zh")


def _agent_factory(args: CompareArgs, side: WorldModelSide) -> Callable[[str, str, float], Any]:
    """``(agent, kind, strength) -> policy``; models are loaded once."""
    from dreamlab.bc.policy import BCPolicy
    from dreamlab.envs.policies import make_policy
    from dreamlab.envs.shift import harder_catch_kwargs
    from dreamlab.rundir import run_action_space

    env, kwargs = side.env, side.env_kwargs
    space = run_action_space(side.path, env, kwargs)
    cache: dict[str, Any] = {}

    def get(agent: str, kind: str, strength: float) -> Any:
        if agent == "random":
            return make_policy("random", space, seed=args.seed)
        if agent == "expert":
            base = _catch_config(env, **kwargs)
            extra = harder_catch_kwargs(strength, base) if kind == "harder" else {}
            return make_policy("expert", space, config=_catch_config(env, **{**kwargs, **extra}))
        if agent not in cache:
            if agent == "controller":
                cache[agent] = side.controller()
            elif agent == "bc":
                cache[agent] = BCPolicy.load(args.run / "bc")
            else:
                cache[agent] = BCPolicy.load(args.run / "bc_latent", side.features_world_model())
        return cache[agent]

    return get


def _settings(args: CompareArgs, wm_path: Path) -> dict[str, Any]:
    return {
        "preset": args.preset,
        "wm_run": str(wm_path),
        "episodes": args.episodes,
        "seed": args.seed,
        "frame_stack": args.frame_stack,
        "bc_epochs": args.bc_epochs,
        "bc_latent_epochs": args.bc_latent_epochs,
        "bc_steps": args.bc_steps,
    }


def _load_results(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Previous results, after checking they were made with the same settings."""
    if not path.exists():
        return {"settings": settings, "frames": {}, "results": {}, "seconds": {}}
    data = read_json(path, "comparison results")
    old = data.get("settings", {})
    for name in _SETTINGS_CHECKED:
        if name in old and old[name] != settings[name]:
            raise ValueError(
                f"{path}: made with {name}={old[name]!r}, not {settings[name]!r}; use another --run "
                "directory or the same settings"
            )
    data["settings"] = {**old, **settings}
    data.setdefault("frames", {})
    data.setdefault("results", {})
    data.setdefault("seconds", {})
    return data


def run_compare(args: CompareArgs) -> dict[str, Any]:
    """Run (or resume) the comparison; returns what ``compare.json`` holds.

    Raises:
        ValueError: ``RUN/compare.json`` was made with other settings, or a shift does not fit
            the env.
    """
    from dreamlab.commands import run_pipeline
    from dreamlab.envs.shift import make_shifted_env
    from dreamlab.eval.evaluate import evaluate_policy
    from dreamlab.generations import for_preset
    from dreamlab.generations.args import PipelineConfig
    from dreamlab.progress import tqdm
    from dreamlab.rundir import RunError

    t0 = time.perf_counter()
    root = Path(args.run)
    wm_path = Path(args.wm_run) if args.wm_run is not None else root
    if args.wm_run is None:
        # V/M/C stops after C, in RUN (the comparison's report is its own); another generation's
        # whole pipeline runs in RUN/wm, so its report.md is not the comparison's
        vmc = for_preset(args.preset).kind == "vmc"
        wm_path = root if vmc else root / "wm"
        until = "controller" if vmc else None
        run_pipeline(
            PipelineConfig(run=wm_path, preset=args.preset, until=until, progress=args.progress)
        )
    side = WorldModelSide.open(wm_path)
    if side.kind != "vmc" and "bc_latent" in (args.agents or ()):
        raise RunError(
            f"bc_latent reads V+M's [z, h]; {wm_path} is a {side.kind} run; leave it out"
        )
    if args.agents is None:
        agents = COMPARE_AGENTS
        if side.kind != "vmc":
            agents = tuple(a for a in agents if a != "bc_latent")
            print(f"compare: {wm_path} is a {side.kind} run; bc_latent (V+M's [z, h]) left out")
        args = dataclasses.replace(args, agents=agents)
    assert args.agents is not None
    env = side.env
    path = root / "compare.json"
    data = _load_results(path, _settings(args, wm_path))
    data["settings"]["env"] = env
    data["settings"]["world_model_kind"] = side.kind
    root.mkdir(parents=True, exist_ok=True)

    # Same env frames for both learners: BC's demonstrations match the world model's data.
    wm_steps = side.store.num_steps
    demos = collect_demos(
        env, root / "demos", policy="expert", min_steps=wm_steps, seed=args.seed,
        progress=args.progress, env_kwargs=side.env_kwargs,
    )  # fmt: skip
    data["frames"] = {
        "world_model_env_steps": wm_steps,
        "world_model_episodes": len(side.store),
        "world_model_policy": side.collect_policy,
        "bc_env_steps": demos.num_steps,
        "bc_episodes": len(demos),
        "bc_policy": "expert",
    }
    overrides: dict[str, Any] = {"progress": args.progress, "seed": args.seed}
    if args.bc_steps is not None:
        overrides["steps"] = args.bc_steps
    needs = set(args.agents)
    training: dict[str, Any] = dict(data.get("training", {}))
    if "bc" in needs:
        train = dataclasses.replace(DEFAULT_PIXEL_TRAIN, epochs=args.bc_epochs, **overrides)
        fit = train_bc_in(
            root / "bc", demos, "pixels", train, frame_stack=args.frame_stack, seed=args.seed
        )
        training["bc"] = {"steps": fit.step, "seconds": round(fit.seconds, 1), **fit.metrics}
    if "bc_latent" in needs:
        train = dataclasses.replace(DEFAULT_LATENT_TRAIN, epochs=args.bc_latent_epochs, **overrides)
        fit = train_bc_in(
            root / "bc_latent", demos, "latent", train, world_model_run=wm_path, seed=args.seed
        )
        training["bc_latent"] = {"steps": fit.step, "seconds": round(fit.seconds, 1), **fit.metrics}
    data["training"] = training
    atomic_write_json(path, data)

    get_agent = _agent_factory(args, side)
    todo = [
        (agent, kind, strength)
        for kind, strength in args.conditions
        for agent in args.agents
        if _key(agent, kind, strength) not in data["results"]
    ]
    bar = tqdm(todo, desc="compare", unit="eval", disable=not args.progress)
    for agent, kind, strength in bar:
        bar.set_postfix_str(f"{agent} {kind} {strength:g}")
        result = evaluate_policy(
            lambda kind=kind, strength=strength: make_shifted_env(  # type: ignore[misc]
                env, kind, strength, **side.env_kwargs
            ),
            get_agent(agent, kind, strength),
            args.episodes,
            env_name=env,
            seed=args.seed + 10_000,
            record=False,
            progress=False,
        )
        summary = result.summary()
        summary.pop("env", None)
        data["results"][_key(agent, kind, strength)] = summary
        atomic_write_json(path, data)
    data["seconds"]["last_call"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(path, data)
    write_compare_report(root, data, args)
    print(summary_text(data, args))
    return data


# ------------------------------------------------------------------------------------ output
def _score(entry: dict[str, Any]) -> float:
    return float(entry.get("catch_rate", entry["mean_return"]))


def _series(
    data: dict[str, Any], args: CompareArgs, agent: str, kind: str
) -> list[tuple[float, float]]:
    """(strength, catch rate) points of one agent under one shift kind, strength 0 = no shift."""
    points = []
    for k, s in args.conditions:
        if k in ("none", kind):
            entry = data["results"].get(_key(agent, k, s))
            if entry is not None:
                points.append((0.0 if k == "none" else s, _score(entry)))
    return points


def summary_text(data: dict[str, Any], args: CompareArgs) -> str:
    """One block per shift kind: agents x strengths, catch rates (the printed summary)."""
    lines = []
    for kind in ("actions", "start", "harder"):
        strengths = [0.0] + [s for k, s in args.conditions if k == kind]
        lines.append(f"{kind}: " + " ".join(f"{s:>6g}" for s in strengths))
        for agent in args.agents:
            row = dict(_series(data, args, agent, kind))
            cells = " ".join(f"{row[s]:6.3f}" if s in row else "     -" for s in strengths)
            lines.append(f"  {agent:>10} {cells}")
    return "\n".join(lines)


def _plot(path: Path, data: dict[str, Any], args: CompareArgs) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = ("actions", "start", "harder")
    fig = Figure(figsize=(4.2 * len(kinds), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(kinds), sharey=True)
    for ax, kind in zip(axes, kinds, strict=True):
        for agent in args.agents:
            pts = _series(data, args, agent, kind)
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=agent)
        ax.set_title(SHIFT_LABELS[kind], fontsize=9)
        ax.set_xlabel("k (steps)" if kind == "actions" else "strength s")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("catch rate")
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)


def write_compare_report(root: Path, data: dict[str, Any], args: CompareArgs) -> Path:
    """Write ``compare.png`` and ``report.md`` from the results in ``data``."""
    _plot(root / "compare.png", data, args)
    f = data.get("frames", {})
    lines = [
        "# Behavioral cloning vs the dream-trained controller",
        "",
        f"Env `{data['settings'].get('env', args.preset)}`; world model from `{data['settings']['wm_run']}`. "
        f"Env frames seen: world model {f.get('world_model_env_steps')} steps "
        f"({f.get('world_model_episodes')} {f.get('world_model_policy')} episodes), "
        f"BC {f.get('bc_env_steps')} steps ({f.get('bc_episodes')} expert episodes). "
        f"Every cell: catch rate over {args.episodes} episodes x 5 balls (same episode seeds and "
        "perturbations for every agent).",
        "",
        "![catch rate vs shift strength](compare.png)",
        "",
    ]
    for kind in ("actions", "start", "harder"):
        strengths = [0.0] + [s for k, s in args.conditions if k == kind]
        lines += [f"## {SHIFT_LABELS[kind]}", ""]
        lines.append("| agent | " + " | ".join(f"{s:g}" for s in strengths) + " |")
        lines.append("|---" * (len(strengths) + 1) + "|")
        for agent in args.agents:
            row = dict(_series(data, args, agent, kind))
            cells = [f"{row[s]:.3f}" if s in row else "-" for s in strengths]
            lines.append(f"| {agent} | " + " | ".join(cells) + " |")
        lines.append("")
    training = data.get("training", {})
    if training:
        lines += ["## BC training", ""]
        for name, t in training.items():
            loss = t.get("bc/train/loss")
            loss_txt = f", final loss {loss:.4f}" if loss is not None else ""
            lines.append(f"- `{name}`: {t['steps']} steps, {t['seconds']} s{loss_txt}")
        lines.append("")
    lines += [
        "Agents: `expert` the scripted Catch player (the demonstrator); `random` uniform actions; "
        f"`controller` {CONTROLLER_LABELS.get(data['settings'].get('world_model_kind', 'vmc'))}; "
        "`bc` a CNN on the last "
        f"{args.frame_stack} frames trained on the demonstrations; `bc_latent` an MLP on V+M's "
        "[z, h] trained on the same demonstrations. Made by `dreamlab compare` "
        "(see docs/bc.md).",
        "",
    ]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
