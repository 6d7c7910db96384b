"""The known ways a controller trained in M's dream fails in reality, each one measured on a run.

A C trained in the dream is only as good as the dream is honest about what kills it. The
``checks`` stage (``dream_checks=True``; the Doom presets) measures, into ``RUN/checks.json``:

- ``termination``: M's prediction of deaths on held-out episodes (collected for this,
  ``RUN/heldout/``) and on as many training episodes, teacher-forced from each episode's first
  step: the probability it gives at the step the death happened and elsewhere, whether its peak
  lies at that step, and, drawing deaths as the dream does, when the dream would have ended
  the real episode (``sampled_over_real`` < 1: the dream kills earlier than reality did).
- ``alignment``: ``terminated`` only on an episode's last step, the reward of each step, the
  frame after the death (VizDoom's is black), and M's death probability on the last steps.
- ``temperature``: M's own mixtures sampled at each ``tau``: the spread of a component in
  units of its sigma (should be ``sqrt(tau)``) and how often each component is drawn against
  ``softmax(logits / tau)``.
- ``starts``: where C's dreams begin (real episodes' first frames, or other rows) and the
  memory there, against the memory C's agent has at a real episode's first step.
- ``boundaries``: M's training windows: transitions that follow a death inside a window (fake
  ones, across an episode boundary) and how many deaths M sees with the whole episode before
  them in its memory.
- ``survival``: C and random play in the dream (at C's training temperature, from the dream's
  starts) and in reality (``eval.json``): the fraction still alive after each step, drawn side
  by side in ``RUN/survival.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import EpisodeStore
from dreamlab.envs.policies import make_policy
from dreamlab.eval.kindness import dream_episodes
from dreamlab.generations.vmc.controller import dream_start_bank
from dreamlab.generations.vmc.run import Run
from dreamlab.generations.vmc.worldmodel import VMWorldModel
from dreamlab.io import atomic_path, atomic_write_json, read_json
from dreamlab.models.mdnrnn import MDNRNN
from dreamlab.rundir import timed
from dreamlab.train.batches import sequence_batches
from dreamlab.train.encode import encode_store

__all__ = [
    "alignment_check",
    "death_metrics",
    "boundary_check",
    "heldout_latents",
    "plot_survival",
    "stage_checks",
    "survival_curve",
    "temperature_check",
    "termination_check",
]

TAUS = (0.1, 1.0, 1.15, 1.3)
"""the temperatures of the paper's Doom table"""


def heldout_latents(run: Run, episodes: int, progress: bool = True) -> EpisodeStore:
    """``episodes`` fresh episodes of the run's collection policy (another seed than the
    collected ones) in ``RUN/heldout/data``, encoded by the run's V into
    ``RUN/heldout/latents`` (both resume)."""
    cfg = run.config
    collect(
        CollectConfig(
            env=cfg.env,
            env_kwargs=dict(cfg.env_kwargs),
            out=run / "heldout" / "data",
            episodes=episodes,
            policy=cfg.collect_policy,
            seed=cfg.seed + 20_000,
            progress=progress,
        )
    )
    store = EpisodeStore.open(run / "heldout" / "data")
    return encode_store(
        run.vae(), store, run / "heldout" / "latents", vae_source=str(run / "vae"), progress=False
    )


def _episodes(store: EpisodeStore, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Up to ``count`` episodes of ``store`` that end in a death, drawn without replacement."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.asarray(store.indices))
    out = []
    for i in order:
        ep = store.episode(int(i))
        if bool(np.asarray(ep["terminated"])[-1]):
            out.append(ep)
        if len(out) == count:
            break
    return out


def _teacher_forced(
    world_model: VMWorldModel, ep: dict[str, np.ndarray], steps: int | None = None
) -> Any:
    """M's outputs over the first ``steps`` steps of ``ep`` (all by default), run on V's means
    from the episode's first step with the real actions (the memory C's agent has in reality)."""
    z = torch.as_tensor(np.array(ep["mu"][:-1][:steps], np.float32))[None]  # (1, T, Z)
    action = torch.as_tensor(np.array(ep["action"][: z.shape[1]]))
    return world_model.mdnrnn(z, world_model.encode_action(action).float()[None])


@torch.inference_mode()
def death_probabilities(
    world_model: VMWorldModel, episodes: list[dict[str, np.ndarray]]
) -> list[np.ndarray]:
    """M's termination probability at every step of each episode ``(T,)``, teacher-forced on
    V's means from the episode's first step (the memory C's agent has in reality)."""
    out = []
    for ep in episodes:
        logit = _teacher_forced(world_model, ep).termination_logit[0]  # (T,)
        out.append(torch.sigmoid(logit.float()).numpy().astype(np.float64))
    return out


def termination_check(
    world_model: VMWorldModel, episodes: list[dict[str, np.ndarray]], seed: int = 0
) -> dict[str, Any]:
    """How M predicts the deaths of ``episodes`` (each ends in one, on its last step)."""
    return death_metrics(death_probabilities(world_model, episodes), seed)


def death_metrics(probs: list[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Scores of per-step death probabilities ``probs`` (one ``(T,)`` array per episode whose
    death is its last step): see :func:`termination_check`."""
    at_death = np.array([p[-1] for p in probs])  # (E,)
    before = np.concatenate([p[:-1] for p in probs])  # every step that did not kill
    peak = np.array([len(p) - 1 - int(np.argmax(p)) for p in probs])  # steps from the death
    rng = np.random.default_rng(seed)
    ratios = []
    for p in probs:  # the step a dream drawing deaths from p would end the real episode at
        draws = rng.random((200, len(p))) < p[None]  # (200, T)
        first = np.where(draws.any(1), draws.argmax(1) + 1, len(p) + 1)  # censored at T + 1
        ratios.append(float(np.median(first)) / len(p))
    return {
        "episodes": len(probs),
        "mean_length": float(np.mean([len(p) for p in probs])),
        "p_at_death_mean": float(at_death.mean()),
        "p_at_death_median": float(np.median(at_death)),
        "recall_at_half": float((at_death > 0.5).mean()),
        "p_elsewhere_mean": float(before.mean()),
        "false_alarms_at_half": float((before > 0.5).mean()),
        "peak_at_death": float((peak == 0).mean()),
        "peak_within_3": float((peak <= 3).mean()),
        "p_last_steps": [float(np.mean([p[-k] for p in probs if len(p) >= k])) for k in (1, 2, 3)],
        "expected_deaths": float(np.mean([p.sum() for p in probs])),
        "sampled_over_real": float(np.median(ratios)),
    }


def alignment_check(data: EpisodeStore, latents: EpisodeStore, count: int = 200) -> dict[str, Any]:
    """``terminated`` and ``reward`` against the steps they belong to, over ``count`` episodes."""
    ends_last = early = truncated = 0
    rewards = []
    last_bright, before_bright = [], []
    for i in list(latents.indices)[:count]:
        ep = latents.episode(int(i))
        term = np.asarray(ep["terminated"], bool)
        ends_last += int(term[-1])
        early += int(term[:-1].any())
        truncated += int(np.asarray(ep["truncated"], bool)[-1])
        rewards.append(np.asarray(ep["reward"], np.float64))
        n = len(term) + 1  # observations of the episode
        with data.reader(int(i)) as r:
            tail = r.read_span("obs", n - 2, n).astype(np.float64)  # (2, H, W, 3)
        before_bright.append(tail[0].mean())
        last_bright.append(tail[1].mean())
    r = np.concatenate(rewards)
    return {
        "episodes": min(count, len(latents)),
        "terminated_on_last_step": ends_last,
        "terminated_before_last_step": early,
        "truncated": truncated,
        "reward_values": sorted({float(v) for v in np.unique(np.round(r, 3))})[:10],
        "reward_per_step_mean": float(r.mean()),
        "last_frame_brightness": float(np.mean(last_bright)),
        "frame_before_brightness": float(np.mean(before_bright)),
    }


@torch.inference_mode()
def temperature_check(
    world_model: VMWorldModel,
    episodes: list[dict[str, np.ndarray]],
    taus: tuple[float, ...] = TAUS,
    samples: int = 400,
    steps: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """M's sampler at each ``tau``, measured on its own outputs at ``steps`` real steps.

    ``spread``: std of ``(z' - mu_k) / sigma_k`` with one component left (``sqrt(tau)``
    expected). ``mixture_tv``: total-variation distance between how often each component is
    drawn in ``samples`` draws and ``softmax(logits / tau)`` (components moved far apart so a
    draw names its own), next to ``noise_tv``, the same distance for draws made directly from
    ``softmax(logits / tau)``: what sampling noise alone gives.
    """
    mdn: MDNRNN = world_model.mdnrnn
    out = _teacher_forced(world_model, episodes[0], steps)
    logit_pi, mu, log_sigma = (x[0] for x in (out.logit_pi, out.mu, out.log_sigma))  # (T, G|Z, .)
    gen = torch.Generator().manual_seed(seed)
    k = mu.shape[-1]

    def tv(comp: torch.Tensor, want: torch.Tensor) -> float:
        freq = torch.nn.functional.one_hot(comp, k).float().mean(0)  # (T, Z, K)
        return 0.5 * (freq - want).abs().sum(-1).mean().item()

    rows: dict[str, Any] = {}
    for tau in taus:
        one = torch.full_like(logit_pi, -1e9)
        one[..., 0] = 0.0  # one component: z' = mu_0 + sigma_0 sqrt(tau) eps
        draws = torch.stack([mdn.sample(one, mu, log_sigma, tau, gen) for _ in range(samples)])
        spread = ((draws - mu[..., 0]) / log_sigma[..., 0].exp()).std().item()
        apart = mu + 1000.0 * torch.arange(k, dtype=mu.dtype)  # component j lands near 1000 j
        tight = torch.full_like(log_sigma, -20.0)
        picks = torch.stack([mdn.sample(logit_pi, apart, tight, tau, gen) for _ in range(samples)])
        comp = torch.round((picks - mu[..., 0]) / 1000.0).clamp(0, k - 1).long()  # (S, T, Z)
        want = torch.softmax(logit_pi / tau, -1).expand(*comp.shape[1:], k)  # (T, Z, K)
        direct = torch.multinomial(want.reshape(-1, k), samples, True, generator=gen)
        rows[f"{tau:g}"] = {
            "spread": spread,
            "sqrt_tau": tau**0.5,
            "mixture_tv": tv(comp, want),
            "noise_tv": tv(direct.T.reshape(comp.shape), want),
        }
    return {"samples": samples, "steps": int(mu.shape[0]), "taus": rows}


def boundary_check(run: Run, batches: int = 50) -> dict[str, Any]:
    """M's training windows as the mdnrnn stage draws them: fake transitions after a death, and
    how much of each episode's past M sees when it learns that episode's death."""
    cfg = run.config
    latents = run.latents()
    stream = sequence_batches(
        latents,
        cfg.seq_len,
        cfg.mdnrnn_train.batch_size,
        seed=cfg.seed,
        keys=("terminated",),
        pad_short=cfg.seq_pad,
    )(0)
    windows = fake = deaths = 0
    for _ in range(batches):
        b = next(stream)
        term = b["terminated"].astype(bool)  # (B, T)
        mask = b.get("mask", np.ones(term.shape, np.float32)) > 0
        after = np.cumsum(term, 1) - term > 0  # steps after a death in the same window
        fake += int((after & mask).sum())
        deaths += int(term.sum())
        windows += term.shape[0]
    lengths = latents.lengths
    eligible = lengths >= 1 if cfg.seq_pad else lengths >= cfg.seq_len
    return {
        "seq_len": cfg.seq_len,
        "padded": cfg.seq_pad,
        "windows": windows,
        "deaths_in_windows": deaths,
        "fake_transitions": fake,
        "episodes_trained_on": float(eligible.mean()),
        "episodes_whole_in_a_window": float((lengths <= cfg.seq_len).mean()),
        "median_episode_length": float(np.median(lengths)),
    }


def survival_curve(lengths: np.ndarray, horizon: int) -> np.ndarray:
    """Fraction of episodes still running after each step ``0..horizon``: ``(horizon + 1,)``."""
    lengths = np.asarray(lengths)
    return (lengths[None] > np.arange(horizon + 1)[:, None]).mean(1)


def plot_survival(path: Path, curves: dict[str, dict[str, np.ndarray]], horizon: int) -> None:
    """Dream | reality panels, one curve per agent, written atomically to ``path``."""
    fig = Figure(figsize=(10, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, where in zip(axes, ("dream", "real"), strict=True):
        for agent, by_where in curves.items():
            if where in by_where:
                lengths = by_where[where]
                ax.plot(
                    survival_curve(lengths, horizon),
                    label=f"{agent}: mean {np.mean(lengths):.0f} over {len(lengths)}",
                )
        ax.set_title("in the dream" if where == "dream" else "in reality")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("fraction still alive")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def stage_checks(run: Run, progress: bool = True) -> dict[str, Any] | None:
    """The ``checks`` stage: every measurement above into ``RUN/checks.json`` and the survival
    plot into ``RUN/survival.png`` (nothing without ``dream_checks``)."""
    cfg = run.config
    if not cfg.dream_checks:
        return None

    def work() -> dict[str, Any]:
        wm = run.world_model()
        held = heldout_latents(run, cfg.check_episodes, progress)
        heldout_eps = _episodes(held, cfg.check_episodes, cfg.seed)
        latents = run.latents()
        train_eps = _episodes(latents, cfg.check_episodes, cfg.seed)
        tau = cfg.evolve.temperature
        starts = dream_start_bank(run, wm)
        space, horizon, rounds = run.action_space(), cfg.evolve.max_episode_steps, 200
        # float32 dreams (C trained in bfloat16 ones only where they measured faster)
        c_dream, _ = dream_episodes(
            wm, starts, run.controller(), space, rounds, tau, horizon, cfg.seed
        )
        rnd = make_policy("random", space, seed=cfg.seed)
        r_dream, _ = dream_episodes(wm, starts, rnd, space, rounds, tau, horizon, cfg.seed)
        evals = read_json(run / "eval.json", "eval").get("agents", {})
        curves: dict[str, dict[str, np.ndarray]] = {
            "C": {"dream": c_dream},
            "random": {"dream": r_dream},
        }
        for agent, name in (("controller", "C"), ("random", "random")):
            if "lengths" in evals.get(agent, {}):
                curves[name]["real"] = np.asarray(evals[agent]["lengths"])
        plot_survival(run / "survival.png", curves, horizon)
        agent_memory = float(wm.initial_state(1)["h"].abs().max())
        start_state = wm.start_state(
            {k: v[:4] for k, v in starts.items()}, torch.Generator().manual_seed(0)
        )
        out = {
            "termination": {
                "heldout": termination_check(wm, heldout_eps, cfg.seed),
                "train": termination_check(wm, train_eps, cfg.seed),
            },
            "alignment": alignment_check(run.data(), latents),
            "temperature": temperature_check(wm, heldout_eps, seed=cfg.seed),
            "starts": {
                "dream_starts": cfg.dream_starts,
                "bank_rows": int(next(iter(starts.values())).shape[0]),
                # the collected episodes and what the iteration rounds' C played
                "episodes": sum(len(store) for store in run.round_latents(None)),
                "dream_start_memory_max_abs": float(start_state["h"].abs().max()),
                "agent_start_memory_max_abs": agent_memory,
            },
            "boundaries": boundary_check(run),
            "survival": {
                name: {where: _lengths_summary(v) for where, v in by.items()}
                for name, by in curves.items()
            },
            "temperature_dream": tau,
        }
        atomic_write_json(run / "checks.json", out)
        return out

    return timed(run.path, "checks", work)


def _lengths_summary(lengths: np.ndarray) -> dict[str, float]:
    lengths = np.asarray(lengths, np.float64)
    return {
        "episodes": len(lengths),
        "mean": float(lengths.mean()),
        "std": float(lengths.std()),
        "median": float(np.median(lengths)),
    }
