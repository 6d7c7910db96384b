"""Dreamer's online loop: collect in the real env, fit the RSSM, learn to act in imagination.

The envs are played by :func:`dreamlab.data.rollout.play_episodes` (lockstep slots, one batched
``predict`` per step); this module supplies its callbacks. Per ``train_every`` env steps (summed
over the ``num_envs`` parallel envs) one update runs (:meth:`DreamerTrainer.update`):

1. a batch of ``batch_size`` windows of ``seq_len`` steps from replay -> one RSSM gradient step;
2. the posterior states of that batch are the start states of one actor-critic update in
   imagination (:mod:`dreamlab.train.imagination`).

So the *replay ratio* (replayed steps per env step) is ``batch_size * seq_len / train_every``.
The first ``prefill_steps`` env steps use uniformly random actions and no updates.

Offline (``offline_updates > 0``, a run sized from ``--env``/``--data``): the same updates run on
the episodes already in ``data/``, and no env is made until the final evaluation.

``out_dir`` holds everything::

    config.json          {"kind": "rssm", "config": the DreamerConfig}
    data/                every finished real episode (episode store; the replay buffer)
    world_model/         RSSM: config.json, model.safetensors
    actor_critic/        actor, critic, slow critic, return scale: config.json, model.safetensors
    optimizer_*/, trainer.json   (resume state; trainer.json is written last)
    metrics.jsonl, tb/   training curves (dreamer/train/*, dreamer/eval/*)
    eval.json            every periodic real-env evaluation ("history") and the final one

A killed run resumes from its last checkpoint: weights, optimizer, counters and RNG state are
restored and the replay buffer is re-read from ``data/`` (episodes finished after the checkpoint
are kept; the episodes in flight are lost).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.data.rollout import EpisodeResult, play_episodes
from dreamlab.generations.rssm.config import KIND, DreamerConfig, DreamerResult
from dreamlab.generations.rssm.trainer import DreamerTrainer
from dreamlab.io import append_jsonl, atomic_write_json, read_json, truncate_jsonl
from dreamlab.progress import tqdm
from dreamlab.rundir import RunError, check_same_settings, read_run_config_of, write_run_config

__all__ = ["FINAL_EVAL_SEED", "record_config", "train_dreamer"]

FINAL_EVAL_SEED = 1_000_000_000
"""the first seed of the final evaluation's real episodes"""
_FREE_KEYS = ("progress", "tensorboard", "num_threads")
"""settings a resumed run may change (they do not change what is learned)"""


def record_config(out: Path, cfg: DreamerConfig) -> None:
    """Write ``OUT/config.json`` for a new run; for an existing one check it holds ``cfg``.

    Raises:
        RunError: ``out`` holds a run of another generation, or one with other settings.
    """
    saved = read_run_config_of(out, KIND, "Dreamer")
    if saved is None:
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, KIND, cfg.to_json())
        return
    check_same_settings(out, saved, cfg.to_json(), free=_FREE_KEYS)


def _write_eval(out: Path, history: list[dict[str, Any]], final: dict[str, Any] | None) -> None:
    """``eval.json``'s ``history`` and ``final`` (other keys, e.g. ``dreamlab evaluate``'s
    ``agents``, are kept)."""
    file = out / "eval.json"
    data = read_json(file, "eval") if file.exists() else {}
    data.update(history=history, final=final)
    atomic_write_json(file, data)


def _rate(result: dict[str, Any]) -> str:
    return f", catch rate {result['catch_rate']:.1%}" if "catch_rate" in result else ""


class _OnlineLoop:
    """What happens around the real envs: the behaviour policy, and after every lockstep step
    the updates that are due, metric records, periodic evaluations and checkpoints.

    Args:
        tr: the run's trainer (resumed or fresh).
    """

    def __init__(self, tr: DreamerTrainer) -> None:
        from dreamlab.envs.policies import make_policy

        cfg = tr.cfg
        self.tr, self.cfg = tr, cfg
        self.metrics_path = tr.out / "metrics.jsonl"
        self.window: dict[str, float] = {}
        self.window_n = 0
        self.last_logged: dict[str, float] = {}
        self.recent_returns: list[float] = []
        self.next_ckpt = (tr.env_steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        self.next_eval = (
            (tr.env_steps // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None
        )
        self.seed = cfg.seed * 1_000_003 + tr.episodes * 7919
        self.random = make_policy("random", tr.action_space, seed=self.seed)
        self.agent = tr.agent()
        self.t0, self.seconds0 = time.perf_counter(), tr.seconds
        total, done = cfg.total_env_steps, tr.env_steps
        if cfg.offline_updates:
            total, done = cfg.offline_updates, tr.updates
        self.bar = tqdm(
            total=total,
            initial=min(done, total),
            desc="dreamer" + (" offline" if cfg.offline_updates else ""),
            unit="update" if cfg.offline_updates else "step",
            disable=not cfg.progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        self.writer = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tr.out / "tb"), purge_step=self.x() or None)

    def x(self) -> int:
        """The curves' x axis: env steps online, updates offline."""
        return self.tr.updates if self.cfg.offline_updates else self.tr.env_steps

    # ------------------------------------------------------------ play_episodes callbacks
    def predict(
        self, obs: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None
    ) -> tuple[np.ndarray, Any]:
        """Uniformly random actions during prefill, then samples of the actor."""
        if self.tr.env_steps < self.cfg.prefill_steps:
            actions, _ = self.random.predict(obs, None, episode_start)
            return actions, state
        return self.agent.predict(obs, state, episode_start, deterministic=False)

    def on_episode(self, episode: EpisodeResult) -> None:
        """Store a finished episode and put it into replay."""
        tr = self.tr
        assert episode.arrays is not None
        tr.store.append(episode.arrays, info={"policy": "dreamer", "env_steps": str(tr.env_steps)})
        tr.replay.add(episode.arrays)
        self.recent_returns = [*self.recent_returns[-19:], episode.episode_return]
        tr.episodes += 1

    def on_step(self) -> bool:
        """Count the lockstep step, learn, evaluate, checkpoint; True once the budget is spent."""
        tr, cfg = self.tr, self.cfg
        tr.env_steps += cfg.num_envs
        self.bar.update(cfg.num_envs)
        if tr.env_steps >= cfg.prefill_steps and len(tr.replay):
            due = (tr.env_steps - cfg.prefill_steps) // cfg.train_every + 1
            while tr.updates < due:
                self._learn()
        if self.next_eval is not None and tr.env_steps >= self.next_eval:
            self.next_eval += cfg.eval_every
            self._evaluate()
        if tr.env_steps >= self.next_ckpt:
            self.next_ckpt += cfg.checkpoint_every
            self._clock()
            tr.save()
        return tr.env_steps >= cfg.total_env_steps

    # ------------------------------------------------------------ the loop
    def play(self) -> None:
        """Play the real envs until ``total_env_steps``, then checkpoint."""
        from dreamlab.envs import make_env

        tr, cfg = self.tr, self.cfg
        envs = [make_env(cfg.env, **cfg.env_kwargs) for _ in range(cfg.num_envs)]
        # every episode takes >= 1 step: more seeds than the budget can ever finish
        budget = cfg.total_env_steps - tr.env_steps + 2 * cfg.num_envs
        try:
            play_episodes(
                envs,
                self,
                range(self.seed, self.seed + budget),
                keep_arrays=True,
                max_episode_steps=cfg.max_episode_steps,
                on_episode=self.on_episode,
                on_step=self.on_step,
            )
            self._clock()
            tr.save()
        finally:
            for env in envs:
                env.close()

    def learn_offline(self) -> None:
        """Updates on the stored episodes until ``offline_updates``, checkpointed every
        ``checkpoint_every`` updates and at the end; no env is made."""
        tr, cfg = self.tr, self.cfg
        if not len(tr.replay):
            raise RunError(f"{tr.out / 'data'}: no episodes to learn from offline")
        while tr.updates < cfg.offline_updates:
            self._learn()
            self.bar.update(1)
            if tr.updates % cfg.checkpoint_every == 0 or tr.updates == cfg.offline_updates:
                self._clock()
                tr.save()

    def _clock(self) -> None:
        self.tr.seconds = self.seconds0 + time.perf_counter() - self.t0

    def _learn(self) -> None:
        """One update; every ``log_every`` updates, one record of the window's mean metrics."""
        tr, cfg = self.tr, self.cfg
        for k, v in tr.update().items():
            self.window[k] = self.window.get(k, 0.0) + v
        self.window_n += 1
        if tr.updates % cfg.log_every:
            return
        self._clock()
        logged = {f"dreamer/train/{k}": v / self.window_n for k, v in self.window.items()}
        if self.recent_returns:
            logged["dreamer/train/episode_return"] = float(np.mean(self.recent_returns))
        record = {"updates": tr.updates, "env_steps": tr.env_steps, "time": tr.seconds, **logged}
        append_jsonl(self.metrics_path, record)
        self.scalars(logged)
        self.bar.set_postfix(
            img=f"{logged.get('dreamer/train/model/image', 0):.3g}",
            ret=f"{logged.get('dreamer/train/episode_return', 0):.2f}",
        )
        self.last_logged = logged
        self.window, self.window_n = {}, 0

    def _evaluate(self) -> None:
        """A periodic real-env evaluation into ``eval.json``'s history."""
        tr, cfg = self.tr, self.cfg
        self._clock()
        result = tr.evaluate(cfg.eval_episodes, seed=10_000_000 + len(tr.evals) * 1000)
        tr.evals.append(result)
        _write_eval(tr.out, tr.evals, None)
        self.scalars(result, "dreamer/eval/")
        if cfg.progress:
            self.bar.write(
                f"[dreamer] eval at {tr.env_steps} steps: return {result['mean_return']:.2f}"
                + _rate(result)
            )

    def scalars(self, values: dict[str, Any], evaluation: str | None = None) -> None:
        """Write training metrics to TensorBoard at this env step; with ``evaluation`` (a
        prefix), an evaluation's mean return and catch rate."""
        if self.writer is None:
            return
        if evaluation is not None:
            keys = [k for k in ("mean_return", "catch_rate") if k in values]
            values = {evaluation + k: values[k] for k in keys}
        for k, v in values.items():
            self.writer.add_scalar(k, v, self.x())

    def close(self) -> None:
        """Close the progress bar and the TensorBoard writer."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _restore_metrics(tr: DreamerTrainer, resumed: bool) -> None:
    """Drop ``metrics.jsonl`` records past the checkpoint (all of them for a fresh start)."""
    path = tr.out / "metrics.jsonl"
    if resumed:
        truncate_jsonl(path, "updates", tr.updates)
    else:
        path.unlink(missing_ok=True)


def train_dreamer(cfg: DreamerConfig, out_dir: str | Path) -> DreamerResult:
    """Run (or resume) the Dreamer loop in ``out_dir`` until ``cfg.total_env_steps`` (offline:
    ``cfg.offline_updates`` updates on the episodes of ``out_dir/data``, no env step), then
    evaluate the actor over ``final_eval_episodes`` held-out real episodes.

    Raises:
        RunError: ``out_dir`` holds a run with a different config (or of another generation).
        ValueError: bad settings.
        TrainingDivergedError: a loss or weight became NaN/inf (the last checkpoint is kept).
    """
    out = Path(out_dir)
    record_config(out, cfg)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    tr = DreamerTrainer(cfg, out)
    _restore_metrics(tr, tr.try_resume())
    loop = _OnlineLoop(tr)
    try:
        if cfg.offline_updates:
            loop.learn_offline()
        elif tr.env_steps < cfg.total_env_steps:
            loop.play()
        final_path = out / "eval.json"
        final = read_json(final_path, "eval").get("final") if final_path.exists() else None
        if final is None or final.get("updates") != tr.updates:
            final = tr.evaluate(cfg.final_eval_episodes, seed=FINAL_EVAL_SEED)
            _write_eval(out, tr.evals, final)
            loop.scalars(final, "dreamer/final/")
    finally:
        loop.close()
    if cfg.progress:
        print(
            f"dreamer: {tr.env_steps} env steps, {tr.updates} updates, {tr.seconds:.0f} s; final "
            f"eval over {final['episodes']} episodes: return {final['mean_return']:.2f}"
            + _rate(final),
            file=sys.stderr,
        )
    return DreamerResult(
        out, tr.env_steps, tr.updates, tr.episodes, tr.seconds, final, loop.last_logged
    )
