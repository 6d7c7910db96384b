"""The state of one Dreamer run and its update: models, optimizers, replay, counters.

:class:`DreamerTrainer` holds the RSSM, the actor-critic, their optimizers, the in-memory
:class:`Replay` of finished episodes and the run's counters; it does one update (a world-model
step on replayed windows, then an actor-critic step in imagination from that batch's posterior
states), checkpoints, resumes and evaluates in the real env. The online loop
(:mod:`dreamlab.generations.rssm.online`) drives it while collecting; the generation comparison
drives it offline on a fixed store.

Checkpoint files in ``OUT``: ``world_model/``, ``actor_critic/``, ``optimizer_{0,1,2}/`` (world
model, actor, critic; the first also holds the RNG state) and ``trainer.json``, all written as one
unit (:func:`dreamlab.io.commit_files`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.checkpoint import (
    CheckpointError,
    load_optimizer,
    load_weights,
    save_model,
    save_optimizer,
    weights_step,
)
from dreamlab.data.schema import StoreMeta
from dreamlab.data.store import STORE_FILE, EpisodeStore
from dreamlab.generations.rssm.agent import DreamerAgent
from dreamlab.generations.rssm.config import DreamerConfig
from dreamlab.generations.rssm.worldmodel import RSSMWorldModel
from dreamlab.io import commit_files, read_json, sweep_temp_files
from dreamlab.models.actor_critic import ActorCritic, ActorCriticConfig
from dreamlab.models.rssm import RSSM
from dreamlab.rundir import store_action_space
from dreamlab.train.fit import TrainingDivergedError
from dreamlab.train.imagination import ImaginationTrainer
from dreamlab.worldmodel import ActionSpec

__all__ = ["TRAINER_FILE", "DreamerTrainer", "Replay"]

TRAINER_FILE = "trainer.json"


class Replay:
    """Finished episodes in memory, sampled as fixed-length windows.

    Args:
        seq_len: steps per window (episodes shorter than this are kept but never sampled).
    """

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len
        self.episodes: list[dict[str, np.ndarray]] = []
        self.num_steps = 0

    def add(self, episode: dict[str, np.ndarray]) -> None:
        """Add one episode (``obs (T+1, ...)``, ``action (T, ...)``, ``reward``, ``terminated``)."""
        self.episodes.append(
            {k: np.asarray(episode[k]) for k in ("obs", "action", "reward", "terminated")}
        )
        self.num_steps += len(episode["reward"])

    def __len__(self) -> int:
        return len(self.episodes)

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` windows, each start uniform over every valid position of every episode.

        Returns:
            ``obs (B, L+1, H, W, 3)``, ``action (B, L, ...)``, ``reward (B, L)``,
            ``terminated (B, L)``.
        """
        windows = np.array([max(0, len(e["reward"]) - self.seq_len + 1) for e in self.episodes])
        total = int(windows.sum())
        if total == 0:
            raise ValueError(
                f"Replay: no episode has {self.seq_len} steps yet; lower seq_len or collect more"
            )
        flat = rng.integers(0, total, batch_size)
        bounds = np.cumsum(windows)
        out: dict[str, list[np.ndarray]] = {"obs": [], "action": [], "reward": [], "terminated": []}
        for f in flat:
            ep_i = int(np.searchsorted(bounds, f, side="right"))
            start = int(f - (bounds[ep_i] - windows[ep_i]))
            ep = self.episodes[ep_i]
            end = start + self.seq_len
            out["obs"].append(ep["obs"][start : end + 1])
            out["action"].append(ep["action"][start:end])
            out["reward"].append(ep["reward"][start:end])
            out["terminated"].append(ep["terminated"][start:end])
        return {k: np.stack(v) for k, v in out.items()}


def _to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).to(device) for k, v in batch.items()}


def _rng_tensors(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    state = json.dumps(rng.bit_generator.state).encode()
    return {
        "torch_cpu": torch.get_rng_state(),
        "numpy": torch.frombuffer(bytearray(state), dtype=torch.uint8),
    }


class DreamerTrainer:
    """The state of one run: models, optimizers, replay, counters; ``update``, ``save``,
    ``try_resume``, ``evaluate``. :func:`~dreamlab.generations.rssm.online.train_dreamer` drives it
    online; the generation comparison drives it offline on a fixed store.

    Args:
        cfg: the run's settings.
        out_dir: the run directory (its ``data/`` store is opened, or created from the env).
    """

    def __init__(self, cfg: DreamerConfig, out_dir: Path) -> None:
        self.cfg = cfg
        self.out = out_dir
        self.device = torch.device(cfg.device)
        self.store = self._open_store()
        obs_shape = tuple(self.store.meta.obs_shape or ())
        if len(obs_shape) != 3 or obs_shape[0] != obs_shape[1]:
            raise ValueError(
                f"train_dreamer: env {cfg.env!r} gives observations {obs_shape}; the RSSM needs "
                "square frames (S, S, 3)"
            )
        self.obs_shape = obs_shape
        self.action_space = store_action_space(self.store)
        self.spec = ActionSpec.from_space(self.action_space)
        torch.manual_seed(cfg.seed)
        self.rssm = RSSM(cfg.resolve_rssm(obs_shape[0], self.spec)).to(self.device)
        ac_cfg = ActorCriticConfig(
            feature_dim=self.rssm.config.feature_dim,
            action_kind=self.spec.kind,
            action_dim=self.spec.n,
            action_low=tuple(self.spec.low) or (-1.0,),
            action_high=tuple(self.spec.high) or (1.0,),
            hidden=cfg.actor_hidden,
            layers=cfg.actor_layers,
            value_bins=cfg.value_bins,
        )
        self.ac = ActorCritic(ac_cfg).to(self.device)
        self.model_opt = torch.optim.Adam(self.rssm.parameters(), lr=cfg.model_lr, eps=1e-8)
        self.imag = ImaginationTrainer(self.ac, cfg.imagination)
        self.rng = np.random.default_rng(cfg.seed)
        self.env_steps = 0
        self.updates = 0
        self.episodes = 0
        self.seconds = 0.0
        self.evals: list[dict[str, Any]] = []
        self.replay = Replay(cfg.seq_len)

    # ------------------------------------------------------------ persistence
    def _open_store(self) -> EpisodeStore:
        """``OUT/data``, the run's episodes; a new store records the env's spaces (the only time
        the env is made just to read them)."""
        path = self.out / "data"
        if (path / STORE_FILE).is_file():
            return EpisodeStore.open(path)
        from dreamlab.envs import make_env
        from dreamlab.envs.presets import get_preset, preset_to_dict

        probe = make_env(self.cfg.env, **self.cfg.env_kwargs)
        try:
            obs_shape = tuple(probe.observation_space.shape or ())
            action_space = probe.action_space
        finally:
            probe.close()
        try:
            preset: dict[str, Any] | None = preset_to_dict(get_preset(self.cfg.env))
        except (KeyError, ValueError):
            preset = None
        meta = StoreMeta.for_env(
            self.cfg.env,
            obs_shape,
            action_space,
            preset=preset,
            extra={"collect": {"seed": self.cfg.seed, "policy": "dreamer"}},
        )
        return EpisodeStore.open_or_create(path, meta)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.model_opt, self.imag.actor_opt, self.imag.critic_opt]

    def save(self) -> None:
        """Checkpoint everything, as one unit of :func:`dreamlab.io.commit_files`."""
        for name, p in [*self.rssm.named_parameters(), *self.ac.named_parameters()]:
            if not torch.isfinite(p).all():
                raise TrainingDivergedError("dreamer", self.updates, f"parameter {name!r}", {})
        with commit_files(self.out) as commit:  # every file of the checkpoint as one unit
            save_model(self.out / "world_model", self.rssm, step=self.updates, commit=commit)
            save_model(self.out / "actor_critic", self.ac, step=self.updates, commit=commit)
            for i, opt in enumerate(self._optimizers()):
                save_optimizer(
                    self.out / f"optimizer_{i}",
                    opt,
                    step=self.updates,
                    extra=_rng_tensors(self.rng) if i == 0 else None,
                    commit=commit,
                )
            commit.write_json(
                self.out / TRAINER_FILE,
                {
                    "env_steps": self.env_steps,
                    "updates": self.updates,
                    "episodes": self.episodes,
                    "seconds": self.seconds,
                    "evals": self.evals,
                },
            )

    def try_resume(self) -> bool:
        """Load the last checkpoint if there is one."""
        path = self.out / TRAINER_FILE
        sweep_temp_files(self.out)  # what a killed save left; finishes a half-moved checkpoint
        for ep_i in self.store.indices:
            self.replay.add(self.store.episode(ep_i))
        if not path.exists():
            return False
        state = read_json(path, what="dreamer trainer state")
        updates = int(state["updates"])
        steps = {
            "trainer.json": updates,
            "world_model": weights_step(self.out / "world_model"),
            "actor_critic": weights_step(self.out / "actor_critic"),
        }
        if len(set(steps.values())) != 1:
            raise CheckpointError(
                f"{self.out}: checkpoint files are from different updates {steps}; delete the "
                "directory to restart"
            )
        load_weights(self.rssm, self.out / "world_model")
        load_weights(self.ac, self.out / "actor_critic")
        for i, opt in enumerate(self._optimizers()):
            _, extra = load_optimizer(self.out / f"optimizer_{i}", opt)
            if i == 0:
                torch.set_rng_state(extra["torch_cpu"].to(torch.uint8))
                self.rng.bit_generator.state = json.loads(bytes(extra["numpy"].tolist()).decode())
        self.env_steps = int(state["env_steps"])
        self.updates = updates
        self.episodes = int(state["episodes"])
        self.seconds = float(state["seconds"])
        self.evals = list(state.get("evals", []))
        return True

    # ------------------------------------------------------------ learning
    def update(self) -> dict[str, float]:
        """One world-model step and one actor-critic step."""
        cfg = self.cfg
        batch = _to_tensors(self.replay.sample(self.rng, cfg.batch_size), self.device)
        self.rssm.train()
        loss, metrics = self.rssm.compute_loss(batch, return_sequence=True)
        seq = metrics.pop("_sequence")
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                "dreamer", self.updates, "the world-model loss", dict(metrics)
            )
        self.model_opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.model_grad_clip if cfg.model_grad_clip > 0 else math.inf
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.rssm.parameters(), clip))
        self.model_opt.step()
        term = batch["terminated"].float()  # (B, L)
        start_cont = torch.cat([torch.ones_like(term[:, :1]), 1.0 - term], 1)  # (B, L+1)
        ac_metrics = self.imag.update(
            self.rssm,
            seq.deter.flatten(0, 1),
            seq.stoch.flatten(0, 1),
            start_cont.flatten(),
        )
        self.updates += 1
        out = {f"model/{k}": v for k, v in metrics.items()}
        out.update({f"behavior/{k}": v for k, v in ac_metrics.items()})
        return out

    def agent(self) -> DreamerAgent:
        """The current models as a real-env agent (sharing their weights; RSSM in eval mode)."""
        self.rssm.eval()
        return DreamerAgent(RSSMWorldModel(self.rssm, self.spec), self.ac, seed=self.cfg.seed)

    def evaluate(self, episodes: int, seed: int) -> dict[str, Any]:
        """The actor (its mode) over ``episodes`` real episodes from ``seed``: the summary of
        :func:`~dreamlab.eval.evaluate.evaluate_policy` and the run's counters."""
        from dreamlab.envs import make_env
        from dreamlab.eval.evaluate import evaluate_policy

        result = evaluate_policy(
            lambda: make_env(self.cfg.env, **self.cfg.env_kwargs),
            self.agent(),
            episodes,
            env_name=self.cfg.env,
            seed=seed,
            num_envs=min(16, episodes),
            record=False,
            progress=False,
        )
        return {
            **result.summary(),
            "env_steps": self.env_steps,
            "updates": self.updates,
            "train_seconds": round(self.seconds, 1),
        }
