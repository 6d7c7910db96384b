"""The report's pages on the dream's checks (:mod:`~dreamlab.generations.vmc.dream_checks`'s
``checks.json`` and ``survival.png``) and on the temperature table (C trained at each tau on the
same V and M: ``controller_tauT``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dreamlab.io import read_json

__all__ = ["checks_markdown"]


def _seed_spread(rows: list[tuple[float, str, float, float]]) -> list[str]:
    """One line per tau trained at several CMA-ES seeds: the spread of C's real score over them
    (what one CMA-ES run's number is worth)."""
    lines = []
    for tau in sorted({t for t, *_ in rows}):
        real = np.array([r for t, _, _, r in rows if t == tau])
        if len(real) > 1:
            lines.append(
                f"- tau {tau:g}, {len(real)} CMA-ES seeds: real score {real.mean():.0f} on average "
                f"(median {np.median(real):.0f}, {real.min():.0f} to {real.max():.0f})"
            )
    return [*lines, ""] if lines else []


def checks_markdown(root: Path, rows: list[tuple[float, str, float, float]]) -> list[str]:
    """The report's section on the temperature table ``rows`` (``(tau, agent, dream score, real
    mean)``, from :func:`~dreamlab.generations.vmc.report.temperature_rows`), ``checks.json``
    and ``survival.png``."""
    lines: list[str] = []
    if len(rows) > 1:
        lines += [
            "## Temperature (the same V and M, C trained at each tau)",
            "",
            "| tau | controller | score in its dream | score in reality |",
            "|---|---|---|---|",
        ]
        lines += [f"| {t:g} | `{n}` | {d:.1f} | {r:.1f} |" for t, n, d, r in rows]
        lines.append("")
        lines += _seed_spread(rows)
    path = root / "checks.json"
    if not path.exists():
        return lines
    c = read_json(path, "checks")
    lines += ["## Checks of the dream", ""]
    surv = c["survival"]
    if (root / "survival.png").exists():
        lines += ["![survival in the dream and in reality](survival.png)", ""]
    lines += ["| agent | where | episodes | mean ± std steps | median |", "|---|---|---|---|---|"]
    for agent, by in surv.items():
        for where, s in by.items():
            lines.append(
                f"| {agent} | {where} | {s['episodes']} | {s['mean']:.0f} ± {s['std']:.0f} | "
                f"{s['median']:.0f} |"
            )
    lines += [
        "",
        f"Dreams at temperature {c['temperature_dream']:g}, from the dream's start bank.",
        "",
    ]
    t = c["termination"]
    lines += [
        "**Deaths** (M teacher-forced from each episode's first step; a real episode's death is "
        "its last step):",
        "",
        "| episodes | n | p at the death | p elsewhere | p > 0.5 at the death | "
        "peak at the death (within 3) | expected deaths | dream's death / real |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for which in ("heldout", "train"):
        m = t[which]
        lines.append(
            f"| {which} | {m['episodes']} | {m['p_at_death_mean']:.3f} | "
            f"{m['p_elsewhere_mean']:.4f} | {m['recall_at_half']:.2f} | "
            f"{m['peak_at_death']:.2f} ({m['peak_within_3']:.2f}) | {m['expected_deaths']:.2f} | "
            f"{m['sampled_over_real']:.2f} |"
        )
    a, b, s = c["alignment"], c["boundaries"], c["starts"]
    last = t["heldout"]["p_last_steps"]
    lines += [
        "",
        "*expected deaths*: the sum of M's death probabilities over a real episode (1 = "
        "calibrated); *dream's death / real*: the median step at which deaths drawn as the dream "
        "draws them end the real episode, over its real length (< 1: the dream kills earlier).",
        "",
        f"**Alignment**: of {a['episodes']} episodes, {a['terminated_on_last_step']} end with "
        f"`terminated` on their last step and {a['terminated_before_last_step']} have it "
        f"earlier; {a['truncated']} were truncated. Rewards {a['reward_values']} "
        f"(mean {a['reward_per_step_mean']:.3f} per step). The frame after a death has "
        f"brightness {a['last_frame_brightness']:.1f} (the one before: "
        f"{a['frame_before_brightness']:.1f}). M's death probability on held-out episodes at "
        f"the death step, one and two before: {last[0]:.3f}, {last[1]:.3f}, {last[2]:.3f}.",
        "",
        "**Temperature** (M's own mixtures sampled at each tau): "
        + "; ".join(
            f"tau {k}: component spread {v['spread']:.3f} (sqrt(tau) {v['sqrt_tau']:.3f}), "
            f"mixture draws vs softmax(logits/tau) TV {v['mixture_tv']:.3f} (sampling noise "
            f"alone {v['noise_tv']:.3f})"
            for k, v in c["temperature"]["taus"].items()
        )
        + ".",
        "",
        f"**Starts**: dreams begin at `{s['dream_starts']}` rows ({s['bank_rows']} from "
        f"{s['episodes']} episodes) with memory max |h| {s['dream_start_memory_max_abs']:g}; "
        f"C's agent starts a real episode with max |h| {s['agent_start_memory_max_abs']:g}.",
        "",
        f"**Episode boundaries**: {b['windows']} training windows of {b['seq_len']} steps "
        f"(padded: {b['padded']}) held {b['deaths_in_windows']} deaths and "
        f"{b['fake_transitions']} transitions after a death. M trains on "
        f"{b['episodes_trained_on']:.0%} of the episodes; {b['episodes_whole_in_a_window']:.0%} "
        f"fit whole in one window (median length {b['median_episode_length']:.0f}).",
        "",
    ]
    return lines
