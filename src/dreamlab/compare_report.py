"""The output of ``dreamlab compare-models``: report table, curves and frame grid.

:func:`write_report` turns the measured rows (:mod:`dreamlab.compare_models`) into
``OUT/report.md``, ``OUT/fidelity.png`` (pixel MSE and PSNR vs horizon, every model against the
copy-last-frame baseline), ``OUT/probe.png`` (Catch position errors) and ``OUT/frames.png`` (one
held-out episode, real and imagined by each model).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dreamlab.io import atomic_path, atomic_write_text

__all__ = ["frame_grid", "plot_curves", "report_markdown", "write_report"]


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(float(x), spec)


def plot_curves(
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


def frame_grid(frame_files: Mapping[str, Path], path: Path) -> None:
    """One held-out episode: the real frames, then each model's imagined ones (``name -> file``
    of ``{"real", "imagined"}`` uint8 arrays, the first model's real frames shown)."""
    from safetensors.numpy import load_file

    from dreamlab.viz import save_image_grid

    frames = {name: load_file(str(file)) for name, file in frame_files.items()}
    names = list(frames)
    real = frames[names[0]]["real"]
    save_image_grid(
        path,
        [real, *(frames[n]["imagined"] for n in names)],
        labels=["real", *names],
    )


def report_markdown(
    summary: dict[str, Any], rows: dict[str, dict[str, Any]], real_eval_seed: int
) -> str:
    """The text of ``report.md``: the summary table, open-loop, probe and recall tables."""
    args = summary["args"]
    first = next(iter(rows.values()))["fidelity"]
    horizons = list(first["open_loop"]["mse"]["at"])
    mid = horizons[min(1, len(horizons) - 1)]
    last = horizons[-1]
    # every model's row, then None: the copy-last-frame baseline's
    with_baseline: list[tuple[str, dict[str, Any] | None]] = [
        *rows.items(),
        ("copy last frame", None),
    ]
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
        f"{real_eval_seed}+; dream: {args['dream_episodes']} dreams of each agent in its own "
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
    for name, measured in with_baseline:
        f = first["copy_last"] if measured is None else measured["fidelity"]["open_loop"]
        rew = (
            ["" for _ in horizons]
            if measured is None
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
        for name, measured in with_baseline:
            p = first["probe_copy_last"] if measured is None else measured["fidelity"]["probe"]
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


def write_report(
    out: Path,
    summary: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    frame_files: Mapping[str, Path],
    real_eval_seed: int,
) -> str:
    """Write the plots, the frame grid and ``OUT/report.md``; returns the report's text."""
    plot_curves(
        rows,
        [("open_loop", "mse", "pixel MSE"), ("open_loop", "psnr", "PSNR (dB)")],
        out / "fidelity.png",
    )
    if next(iter(rows.values()))["fidelity"]["probe"] is not None:
        plot_curves(
            rows,
            [
                ("probe", "ball_x_err", "ball x error (px)"),
                ("probe", "ball_y_err", "ball y error (px)"),
                ("probe", "paddle_x_err", "paddle x error (px)"),
            ],
            out / "probe.png",
        )
    frame_grid(frame_files, out / "frames.png")
    text = report_markdown(summary, rows, real_eval_seed)
    atomic_write_text(out / "report.md", text)
    return text
