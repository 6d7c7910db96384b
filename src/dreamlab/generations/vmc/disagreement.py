"""Does the ensemble know when it does not know? Disagreement against real prediction error.

On real (held-out) latent episodes every member predicts each next step with teacher forcing
(it reads the true ``z_t`` and action). Per step we get the ensemble's disagreement (variance
across members of the expected next z, mean over dims; and of the predicted reward) and the
actual error of the ensemble-mean prediction. A useful disagreement ranks steps by error:
Spearman's rank correlation between the two is the number reported. Comparing disagreement on
held-out episodes like the training data with episodes from a shifted env or another policy
tells whether it flags what the model never saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dreamlab.generations.vmc.ensemble import EnsembleWorldModel, mixture_mean
from dreamlab.io import atomic_path

__all__ = [
    "OneStepUncertainty",
    "one_step_uncertainty",
    "plot_uncertainty",
    "rankdata",
    "spearman",
]


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks ``1..N`` of a 1-D array, ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Groups of equal values share the mean of the ranks they span.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two equally long 1-D arrays (NaN if either is constant)."""
    x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman: arrays of different sizes {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError(f"spearman: need at least 2 points, got {len(x)}")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


@dataclass
class OneStepUncertainty:
    """Per-step disagreement and error on a set of real latent episodes (all ``(N,)``).

    Attributes:
        z_disagreement: variance across members of the expected next z, mean over dims.
        reward_disagreement: variance across members of the predicted reward.
        z_error: squared error of the ensemble-mean next z against the real one, mean over dims.
        member_z_error: the same for the feature member alone (the single model of a run).
        reward_error: squared error of the ensemble-mean reward.
        episode: which episode (position in the given list) each step belongs to.
    """

    z_disagreement: np.ndarray
    reward_disagreement: np.ndarray
    z_error: np.ndarray
    member_z_error: np.ndarray
    reward_error: np.ndarray
    episode: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means and rank correlations (pooled over steps, and over per-episode means)."""
        num_eps = int(self.episode.max()) + 1 if len(self.episode) else 0
        per_ep_dis = np.array(
            [self.z_disagreement[self.episode == e].mean() for e in range(num_eps)]
        )
        per_ep_err = np.array([self.z_error[self.episode == e].mean() for e in range(num_eps)])
        out = {
            "episodes": num_eps,
            "steps": len(self.z_error),
            "z_disagreement_mean": float(self.z_disagreement.mean()),
            "z_disagreement_median": float(np.median(self.z_disagreement)),
            "reward_disagreement_mean": float(self.reward_disagreement.mean()),
            "z_error_mean": float(self.z_error.mean()),
            "member_z_error_mean": float(self.member_z_error.mean()),
            "reward_error_mean": float(self.reward_error.mean()),
            "spearman_z": spearman(self.z_disagreement, self.z_error),
            "spearman_z_member": spearman(self.z_disagreement, self.member_z_error),
            "spearman_reward": spearman(self.reward_disagreement, self.reward_error),
        }
        if num_eps >= 3:
            out["spearman_z_per_episode"] = spearman(per_ep_dis, per_ep_err)
        return out


@torch.inference_mode()
def one_step_uncertainty(
    ensemble: EnsembleWorldModel, episodes: Sequence[Mapping[str, np.ndarray]]
) -> OneStepUncertainty:
    """Teacher-forced one-step disagreement and error of every step of ``episodes``.

    Args:
        ensemble: the ensemble world model (its members are run with ``forward``).
        episodes: latent episodes: ``mu (T+1, Z)``, ``action (T, ...)``, ``reward (T,)``.

    Returns:
        :class:`OneStepUncertainty` over all steps of all episodes.
    """
    if not episodes:
        raise ValueError("one_step_uncertainty: no episodes given")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("zd", "rd", "ze", "me", "re", "ep")}
    dev = ensemble.device
    for e, ep in enumerate(episodes):
        missing = {"mu", "action", "reward"} - set(ep)
        if missing:
            raise ValueError(f"one_step_uncertainty: episode {e} lacks arrays {sorted(missing)}")
        z = torch.as_tensor(np.array(ep["mu"]), dtype=torch.float32, device=dev)  # (T+1, Z)
        if z.dim() != 2 or z.shape[1] != ensemble.z_dim:
            raise ValueError(
                f"one_step_uncertainty: episode {e} has mu of shape {tuple(z.shape)}, expected "
                f"(T+1, {ensemble.z_dim}) (latents of the ensemble's V)"
            )
        a = ensemble.encode_action(torch.as_tensor(np.array(ep["action"])))  # (T, A)
        reward = torch.as_tensor(np.array(ep["reward"]), dtype=torch.float32, device=dev)
        means, rewards = [], []
        for m in ensemble.members:
            out = m(z[None, :-1], a[None])
            means.append(mixture_mean(out.logit_pi[0], out.mu[0]))  # (T, Z)
            rewards.append(out.reward[0].float())  # (T,)
        mean_z = torch.stack(means)  # (M, T, Z)
        rew = torch.stack(rewards)  # (M, T)
        target = z[1:]  # (T, Z)
        cols["zd"].append(mean_z.var(0, unbiased=False).mean(-1).cpu().numpy())
        cols["rd"].append(rew.var(0, unbiased=False).cpu().numpy())
        cols["ze"].append(((mean_z.mean(0) - target) ** 2).mean(-1).cpu().numpy())
        member = mean_z[ensemble.feature_member]
        cols["me"].append(((member - target) ** 2).mean(-1).cpu().numpy())
        cols["re"].append(((rew.mean(0) - reward) ** 2).cpu().numpy())
        cols["ep"].append(np.full(len(target), e, dtype=np.int64))
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    return OneStepUncertainty(
        z_disagreement=cat["zd"],
        reward_disagreement=cat["rd"],
        z_error=cat["ze"],
        member_z_error=cat["me"],
        reward_error=cat["re"],
        episode=cat["ep"],
    )


def plot_uncertainty(
    results: Mapping[str, OneStepUncertainty], path: str | Path, *, max_points: int = 4000
) -> None:
    """Two panels: disagreement vs actual error (log-log scatter per set), and the
    distribution of disagreement per set (box plot)."""
    if not results:
        raise ValueError("plot_uncertainty: no results")
    fig = Figure(figsize=(10, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    rng = np.random.default_rng(0)
    for name, r in results.items():
        keep = rng.permutation(len(r.z_error))[:max_points]
        rho = spearman(r.z_disagreement, r.z_error)
        ax.scatter(
            r.z_disagreement[keep] + 1e-8,
            r.z_error[keep] + 1e-8,
            s=3,
            alpha=0.4,
            label=f"{name} (rho={rho:.2f})",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ensemble disagreement (var of expected next z)")
    ax.set_ylabel("actual one-step error (MSE of next z)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, markerscale=3)
    ax2 = fig.add_subplot(1, 2, 2)
    names = list(results)
    ax2.boxplot(
        [np.log10(results[n].z_disagreement + 1e-8) for n in names],
        showfliers=False,
    )
    ax2.set_xticks(range(1, len(names) + 1), names, fontsize=7)
    ax2.set_ylabel("log10 disagreement")
    ax2.set_title("disagreement on vs off the training distribution", fontsize=9)
    ax2.grid(alpha=0.3)
    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def summarize(results: Mapping[str, OneStepUncertainty]) -> dict[str, Any]:
    """``{set: summary}`` plus the pooled rank correlation over every set's steps."""
    out: dict[str, Any] = {name: r.summary() for name, r in results.items()}
    dis = np.concatenate([r.z_disagreement for r in results.values()])
    err = np.concatenate([r.z_error for r in results.values()])
    out["pooled"] = {"steps": len(err), "spearman_z": spearman(dis, err)}
    return out
