"""``report.md``: what one run directory measured, as tables and pictures a person reads."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dreamlab.eval.kindness import kindness_markdown
from dreamlab.generations.vmc.checks_report import checks_markdown
from dreamlab.generations.vmc.stages import FOREGROUND_FILE, foreground_line
from dreamlab.io import atomic_path, atomic_write_text, read_json, read_jsonl
from dreamlab.rundir import timings as run_timings

AGENT_NAMES = {
    "random": "random policy",
    "brownian": "sticky random policy (a random walk on a Box)",
    "expert": "scripted expert (upper bound)",
    "controller": "C trained only in the dream (V+M: reads [z, h])",
    "controller_vonly": "V-only ablation (C reads z, no memory)",
}


def controller_round(agent: str) -> int | None:
    """The round of an earlier round's C (``controller_roundR``), else None."""
    match = re.fullmatch(r"controller_round(\d+)", agent)
    return int(match.group(1)) if match else None


def controller_path(agent: str) -> str:
    """The directory of a controller agent in its run: ``controller_roundR`` lives in
    ``rounds/R/controller`` (the iterative procedure), every other under its own name."""
    r = controller_round(agent)
    return agent if r is None else f"rounds/{r}/controller"


def agent_label(agent: str) -> str:
    """How the report names an agent."""
    r = controller_round(agent)
    if r is None:
        return AGENT_NAMES.get(agent, agent)
    seen = "random play only" if r == 0 else f"random play + {r} round(s) of C's play"
    return f"C of round {r} (its M saw {seen})"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _dream_score(run_path: Path, name: str) -> float | None:
    """The controller's last many-rollout score in the dream (its training fitness if none)."""
    records = read_jsonl(run_path / controller_path(name) / "metrics.jsonl")
    evals = [r["controller/eval/return"] for r in records if "controller/eval/return" in r]
    if evals:
        return float(evals[-1])
    best = [r["controller/train/best"] for r in records if "controller/train/best" in r]
    return float(best[-1]) if best else None


def _tau_of(name: str, default: float) -> float | None:
    """The temperature in a controller's name (``controller_tau1.3``, ``controller_tau1.3_seed2``),
    ``default`` for C and for the run's C at another CMA-ES seed (``controller_seed2``)."""
    match = re.fullmatch(r"controller(_tau([0-9]+(?:\.[0-9]+)?))?(_seed[0-9]+)?", name)
    if match is None:
        return None
    return default if match.group(2) is None else float(match.group(2))


def temperature_rows(root: Path, default_tau: float) -> list[tuple[float, str, float, float]]:
    """``(tau, agent, dream score, real mean)`` of C and every ``controller_tauT`` (and
    ``controller_tauT_seedS``, ``controller_seedS``: the same at another CMA-ES seed) evaluated in
    ``eval.json`` (trained with ``dreamlab train-controller --temperature T [--seed S] --name
    NAME``), sorted by tau."""
    path = root / "eval.json"
    if not path.exists():
        return []
    rows = []
    for name, a in read_json(path, "eval").get("agents", {}).items():
        tau = _tau_of(name, default_tau)
        if tau is not None:
            dream = _dream_score(root, name)
            rows.append((tau, name, float("nan") if dream is None else dream, a["mean_return"]))
    return sorted(rows)


def plot_evolution(run_path: Path, names: list[str], out: Path) -> bool:
    """CMA-ES curves: best/mean fitness in the dream, and real-env checks, per generation."""
    series = {n: read_jsonl(run_path / controller_path(n) / "metrics.jsonl") for n in names}
    series = {n: r for n, r in series.items() if r}
    if not series:
        return False
    fig = Figure(figsize=(5.5 * len(series), 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, records) in enumerate(series.items()):
        ax = fig.add_subplot(1, len(series), i + 1)
        gen = np.array([r["generation"] for r in records])
        for key, label in [
            ("controller/train/best", "best (dream)"),
            ("controller/train/mean", "mean (dream)"),
        ]:
            ax.plot(gen, [r.get(key, np.nan) for r in records], label=label)
        for key, label, marker in [
            ("controller/eval/return", "mean params (dream)", "o"),
            ("controller/real/return", "best (real env)", "s"),
        ]:
            pts = [(r["generation"], r[key]) for r in records if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker, label=label)
        ax.set_title(agent_label(name), fontsize=9)
        ax.set_xlabel("generation")
        ax.set_ylabel("return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return True


def write_report(run: Any) -> Path:
    """Write ``report.md`` (and ``evolution.png``) into the run directory ``run.path``."""
    root = Path(run.path)
    cfg = run.config
    lines = [
        f"# dreamlab run `{root.name}`",
        "",
        f"Preset `{cfg.preset}`, environment `{cfg.env}`, seed {cfg.seed}. "
        f"Written {dt.datetime.now().isoformat(timespec='seconds')}.",
        "",
    ]
    eval_path = root / "eval.json"
    if eval_path.exists():
        ev = read_json(eval_path, "eval")
        agents: dict[str, Any] = ev.get("agents", {})
        has_catch = any("catch_rate" in a for a in agents.values())
        lines += ["## Scores in the real environment", ""]
        head = "| agent | episodes | mean return ± std |"
        sep = "|---|---|---|"
        if has_catch:
            head += " catch rate |"
            sep += "---|"
        head += " score in its dream |"
        sep += "---|"
        lines += [head, sep]
        for name, a in agents.items():
            row = (
                f"| {agent_label(name)} | {a['episodes']} | "
                f"{a['mean_return']:.2f} ± {a['std_return']:.2f} |"
            )
            if has_catch:
                row += f" {_fmt(a.get('catch_rate'))} |"
            dream = _dream_score(root, name) if name.startswith("controller") else None
            row += f" {_fmt(dream)} |"
            lines.append(row)
        lines += [
            "",
            "*Score in its dream* is the controller's mean return inside the world model (the "
            "last many-rollout evaluation of the CMA-ES mean); the gap to the real score is the "
            "price of model error.",
            "",
        ]
        videos = [v for a in agents.values() for v in a.get("videos", [])]
        if videos:
            lines += [
                "Videos of the best and worst episodes: "
                + ", ".join(f"[{v}]({v})" for v in videos),
                "",
            ]
    lines += kindness_markdown(root, {n: agent_label(n) for n in AGENT_NAMES})
    iterations = getattr(cfg, "iterations", 0)
    rounds = [f"controller_round{r}" for r in range(iterations)]
    names = [
        n
        for n in (*rounds, "controller", "controller_vonly")
        if (root / controller_path(n) / "metrics.jsonl").exists()
    ]
    curves = []
    if plot_evolution(root, names, root / "evolution.png"):
        curves.append(("CMA-ES in the dream", "evolution.png"))
    stages = [("vae", "vae training")]
    stages += [(f"rounds/{r}/mdnrnn", f"mdnrnn training, round {r}") for r in range(iterations)]
    stages.append(("mdnrnn", "mdnrnn fine-tuning, last round" if iterations else "mdnrnn training"))
    for stage, title in stages:
        if (root / stage / "curves.png").exists():
            curves.append((title, f"{stage}/curves.png"))
    if curves:
        lines += ["## Learning curves", ""]
        lines += [f"![{title}]({path})" for title, path in curves]
        lines.append("")
    if (root / "vae" / "reconstructions.png").exists():
        lines += [
            "## What V sees",
            "",
            "Real frames (top) and V's reconstructions (bottom):",
            "",
            "![reconstructions](vae/reconstructions.png)",
            "",
        ]
        if (root / FOREGROUND_FILE).exists():
            line = foreground_line(read_json(root / FOREGROUND_FILE, "V's foreground"))
            lines += [f"{line}.", ""]
    if (root / "prediction_error.json").exists():
        pe = read_json(root / "prediction_error.json", "prediction error")
        px = pe["pixel_mse_median"]
        marks = sorted({1, min(5, len(px) - 1), min(10, len(px) - 1), len(px) - 1})
        lines += [
            "## Dream vs reality",
            "",
            f"The model observes {pe['context']} real frame(s), then imagines "
            f"{pe['horizon']} steps open-loop under the real actions (temperature "
            f"{pe['temperature']}). Left real, right imagined: "
            "[dream_vs_real.mp4](dream_vs_real.mp4).",
            "",
            "![dream vs real](dream_vs_real.gif)",
            "",
            "| imagined steps | " + " | ".join(str(k) for k in marks) + " |",
            "|---|" + "---|" * len(marks),
            "| median pixel MSE | " + " | ".join(f"{px[k]:.4f}" for k in marks) + " |",
        ]
        if pe.get("latent_mse_median"):
            lz = pe["latent_mse_median"]
            lines.append(
                "| median latent MSE | " + " | ".join(f"{lz[k]:.3f}" for k in marks) + " |"
            )
        lines += ["", "![prediction error](prediction_error.png)", ""]
    evolve = getattr(cfg, "evolve", None)
    tau = evolve.temperature if evolve is not None else 1.0
    lines += checks_markdown(root, temperature_rows(root, tau))
    timings = run_timings(root)
    if timings:
        total = sum(timings.values())
        lines += ["## Wall time", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
        lines += [f"| **total** | **{total:.1f}** |", ""]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
