"""An agent trained only inside the diffusion dream: Q-learning on imagined transitions.

Why Q-learning and not the on-policy actor-critic of Dreamer: each imagined step of the
diffusion model costs ``num_steps`` U-Net passes, so on a CPU the dream yields a few hundred
transitions per second. An off-policy learner reuses every imagined transition many times from
a replay, where Reinforce would use it once.

Training (:func:`train_in_dream`), in rounds:

1. dream: ``num_dreams`` parallel dreams (:class:`~dreamlab.dream.DreamVecEnv`, autoreset, started
   from real first frames) advance ``dream_steps`` steps, acting epsilon-greedily with the
   current Q-network; rewards and terminations come from the model's reward/termination head;
2. learn: ``updates_per_round`` double-DQN steps (Huber loss, target network refreshed every
   ``target_every`` steps) on uniform samples of the replay (the last ``replay_rounds`` rounds).

Features (the world model's ``features``, pooled frames in [0, 1]) are stored as uint8.

Files in ``out_dir`` (resumable; each round's files are written as one unit of
:func:`dreamlab.io.commit_files`, so a kill leaves the last complete round)::

    config.json, model.safetensors   the Q-network (dreamlab.checkpoint, kind "qnet")
    target.safetensors               the target network
    optimizer.safetensors            Adam state
    replay/round_000007.safetensors  imagined transitions of each round
    trainer.json                     rounds done, updates, seconds, metrics
    metrics.jsonl                    one line per round

A killed run restarts at the round after its last complete one (the dreams in flight start
afresh from the start bank).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dreamlab.agent import predict_inputs
from dreamlab.checkpoint import (
    load_model,
    load_optimizer,
    load_weights,
    register_model,
    save_model,
    save_optimizer,
    write_safetensors,
)
from dreamlab.dream import DreamVecEnv
from dreamlab.generations.diffusion.worldmodel import DiffusionWorldModel
from dreamlab.io import (
    Commit,
    append_jsonl,
    commit_files,
    read_json,
    sweep_temp_files,
    truncate_jsonl,
)
from dreamlab.models.qnet import QNet, QNetConfig
from dreamlab.progress import tqdm
from dreamlab.rundir import check_same_settings
from dreamlab.worldmodel import StartLatents, State

__all__ = ["DiffusionAgent", "DreamQConfig", "DreamQResult", "train_in_dream"]

register_model("qnet", QNetConfig, QNet)

TRAINER_FILE = "trainer.json"
_FREE_KEYS = ("rounds", "progress")
"""settings a resumed agent may change (more rounds continue the same training)"""


@dataclass
class DreamQConfig:
    """Q-learning inside the dream."""

    rounds: int = 16
    """dream-then-learn rounds"""
    num_dreams: int = 256
    """parallel dreams"""
    dream_steps: int = 24
    """imagined steps per dream per round"""
    updates_per_round: int = 800
    """gradient steps after each round"""
    batch_size: int = 256
    """transitions per gradient step"""
    gamma: float = 0.95
    """discount per step"""
    lr: float = 3e-4
    """Adam learning rate"""
    target_every: int = 250
    """gradient steps between target-network refreshes"""
    eps_start: float = 1.0
    """exploration rate of the first round"""
    eps_end: float = 0.05
    """exploration rate from ``eps_decay_rounds`` on"""
    eps_decay_rounds: int = 8
    """rounds over which epsilon falls linearly"""
    replay_rounds: int = 12
    """learn from the transitions of the last this many rounds"""
    max_episode_steps: int = 200
    """truncate a dream after this many steps (bootstrapped, not terminal)"""
    hidden: int = 256
    """width of the Q-network"""
    temperature: float = 1.0
    """the dream's temperature (scales the sampler's initial noise)"""
    seed: int = 0
    """seed of the dreams, exploration and replay sampling"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self) -> None:
        for name in ("rounds", "num_dreams", "dream_steps", "batch_size", "target_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"DreamQConfig.{name}={getattr(self, name)!r}: expected >= 1")
        if self.updates_per_round < 0:
            raise ValueError(
                f"DreamQConfig.updates_per_round: expected >= 0, got {self.updates_per_round}"
            )
        if not 0 < self.gamma <= 1:
            raise ValueError(f"DreamQConfig.gamma={self.gamma}: expected in (0, 1]")

    def epsilon(self, round_: int) -> float:
        """Exploration rate of round ``round_`` (0-based)."""
        frac = min(1.0, round_ / max(1, self.eps_decay_rounds))
        return self.eps_start + frac * (self.eps_end - self.eps_start)


@dataclass
class DreamQResult:
    """What :func:`train_in_dream` did."""

    rounds: int
    """rounds completed in total"""
    updates: int
    """gradient steps in total"""
    transitions: int
    """imagined transitions in total"""
    seconds: float
    """wall seconds in total (summed over resumes)"""
    dream_seconds: float
    """of which spent imagining"""
    metrics: dict[str, float]
    """last round's metrics"""


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def _replay_path(out: Path, round_: int) -> Path:
    return out / "replay" / f"round_{round_:06d}.safetensors"


def _save_round(out: Path, round_: int, arrays: dict[str, torch.Tensor], commit: Commit) -> None:
    write_safetensors(_replay_path(out, round_), arrays, commit=commit)


def train_in_dream(
    world_model: DiffusionWorldModel,
    start: StartLatents,
    action_space: Any,
    cfg: DreamQConfig,
    out_dir: str | Path,
) -> tuple[QNet, DreamQResult]:
    """Train a Q-network in the dream of ``world_model`` (resuming from ``out_dir``).

    Args:
        world_model: the diffusion world model (not changed).
        start: start bank (:func:`~dreamlab.generations.diffusion.worldmodel.diffusion_start_states`).
        action_space: the env's ``Discrete`` action space.
        cfg: settings.
        out_dir: agent directory.

    Returns:
        The trained Q-network (eval mode) and a summary.
    """
    if not hasattr(action_space, "n"):
        raise ValueError(
            f"train_in_dream: Q-learning needs a Discrete action space, got {action_space}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = world_model.device
    qcfg = QNetConfig(world_model.feature_dim, int(action_space.n), cfg.hidden)
    torch.manual_seed(cfg.seed)
    qnet = QNet(qcfg).to(dev)
    target = QNet(qcfg).to(dev)
    opt = torch.optim.Adam(qnet.parameters(), lr=cfg.lr)
    done_rounds, updates, transitions, seconds, dream_seconds = 0, 0, 0, 0.0, 0.0
    metrics: dict[str, float] = {}
    trainer_path = out / TRAINER_FILE
    sweep_temp_files(out)  # what a killed save left; finishes a half-moved checkpoint
    if trainer_path.exists():
        state = read_json(trainer_path, "agent trainer state")
        saved = dict(state.get("config", {}))
        check_same_settings(out, saved, asdict(cfg), free=_FREE_KEYS, source=trainer_path)
        done_rounds, updates = int(state["rounds"]), int(state["updates"])
        transitions, seconds = int(state["transitions"]), float(state["seconds"])
        dream_seconds, metrics = float(state["dream_seconds"]), dict(state["metrics"])
        load_weights(qnet, out)
        target.load_state_dict(load_file(str(out / "target.safetensors"), device=str(dev)))
        load_optimizer(out, opt)
    else:
        target.load_state_dict(qnet.state_dict())
    target.requires_grad_(False)
    truncate_jsonl(out / "metrics.jsonl", "round", done_rounds)  # what it will log again

    replay: list[dict[str, torch.Tensor]] = []
    for past in range(max(0, done_rounds - cfg.replay_rounds), done_rounds):
        replay.append(load_file(str(_replay_path(out, past))))

    env = DreamVecEnv(
        world_model,
        start,
        action_space,
        cfg.num_dreams,
        temperature=cfg.temperature,
        max_episode_steps=cfg.max_episode_steps,
    )
    gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + done_rounds)
    obs = env.reset_tensor(seed=cfg.seed * 7919 + done_rounds)  # (N, F)
    bar = tqdm(
        total=cfg.rounds,
        initial=done_rounds,
        desc="agent in dream",
        disable=not cfg.progress,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    try:
        for round_ in range(done_rounds, cfg.rounds):
            t0 = time.perf_counter()
            eps = cfg.epsilon(round_)
            qnet.eval()
            rows: dict[str, list[torch.Tensor]] = {
                k: [] for k in ("obs", "action", "reward", "terminated", "next")
            }
            ret_sum, ends = 0.0, 0
            for _ in range(cfg.dream_steps):
                with torch.no_grad():
                    greedy = qnet(obs).argmax(-1)  # (N,)
                rand = torch.randint(0, qcfg.num_actions, greedy.shape, generator=gen, device=dev)
                explore = torch.rand(greedy.shape, generator=gen, device=dev) < eps
                action = torch.where(explore, rand, greedy)
                nxt, reward, terminated, truncated, final = env.step_tensor(action)
                next_obs = nxt if final is None else final
                rows["obs"].append(_quantize(obs).cpu())
                rows["action"].append(action.cpu())
                rows["reward"].append(reward.float().cpu())
                rows["terminated"].append(terminated.cpu())
                rows["next"].append(_quantize(next_obs).cpu())
                ret_sum += float(reward.sum())
                ends += int(terminated.sum())
                obs = nxt
            batch = {k: torch.cat(v) for k, v in rows.items()}
            dream_time = time.perf_counter() - t0
            replay.append(batch)
            replay = replay[-cfg.replay_rounds :]

            pool = {k: torch.cat([b[k] for b in replay]) for k in batch}
            size = pool["action"].shape[0]
            qnet.train()
            losses = []
            for _ in range(cfg.updates_per_round):
                idx = torch.randint(0, size, (cfg.batch_size,), generator=gen, device="cpu")
                s = pool["obs"][idx].to(dev).float() / 255.0
                s2 = pool["next"][idx].to(dev).float() / 255.0
                a = pool["action"][idx].to(dev)
                r = pool["reward"][idx].to(dev)
                term = pool["terminated"][idx].to(dev).float()
                with torch.no_grad():
                    a2 = qnet(s2).argmax(-1, keepdim=True)  # double DQN: online picks
                    q2 = target(s2).gather(-1, a2).squeeze(-1)  # target evaluates
                    y = r + cfg.gamma * (1.0 - term) * q2
                q = qnet(s).gather(-1, a[:, None]).squeeze(-1)
                loss = F.smooth_l1_loss(q, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(qnet.parameters(), 10.0)
                opt.step()
                updates += 1
                losses.append(float(loss.detach()))
                if updates % cfg.target_every == 0:
                    target.load_state_dict(qnet.state_dict())
            qnet.eval()
            transitions += batch["action"].shape[0]
            seconds += time.perf_counter() - t0
            dream_seconds += dream_time
            metrics = {
                "agent/train/epsilon": eps,
                "agent/train/td_loss": float(np.mean(losses)) if losses else math.nan,
                "agent/train/dream_reward_per_step": ret_sum / batch["action"].shape[0],
                "agent/train/dream_terminations": float(ends),
                "agent/train/nonzero_rewards": float((batch["reward"] != 0).float().mean()),
                "agent/train/imagined_steps_per_s": batch["action"].shape[0]
                / max(dream_time, 1e-9),
            }
            append_jsonl(
                out / "metrics.jsonl", {"round": round_ + 1, "updates": updates, **metrics}
            )
            with commit_files(out) as commit:  # the round's files as one unit
                _save_round(out, round_, batch, commit)
                save_model(out, qnet, qcfg, "qnet", step=round_ + 1, commit=commit)
                write_safetensors(out / "target.safetensors", target.state_dict(), commit=commit)
                save_optimizer(out, opt, step=round_ + 1, commit=commit)
                commit.write_json(
                    trainer_path,
                    {
                        "rounds": round_ + 1,
                        "updates": updates,
                        "transitions": transitions,
                        "seconds": seconds,
                        "dream_seconds": dream_seconds,
                        "config": asdict(cfg),
                        "metrics": metrics,
                    },
                )
            bar.update(1)
            bar.set_postfix(
                eps=f"{eps:.2f}",
                reward=f"{metrics['agent/train/dream_reward_per_step']:.3f}",
                steps_s=f"{metrics['agent/train/imagined_steps_per_s']:.0f}",
            )
    finally:
        bar.close()
        env.close()
    return qnet.eval(), DreamQResult(
        max(done_rounds, cfg.rounds), updates, transitions, seconds, dream_seconds, metrics
    )


class DiffusionAgent:
    """Acts in real envs with the diffusion world model's features and a dream-trained Q-network.

    Each ``predict``: observe the real frame (fresh envs fill every slot), read the features,
    take ``argmax Q``, and record the action with :meth:`DiffusionWorldModel.advance` (no frame
    is imagined: the next real frame takes its slot).

    Args:
        world_model: the diffusion world model.
        qnet: the Q-network trained in its dream.
    """

    def __init__(self, world_model: DiffusionWorldModel, qnet: QNet) -> None:
        if world_model.feature_dim != qnet.config.feature_dim:
            raise ValueError(
                f"DiffusionAgent: world model features have size {world_model.feature_dim}, the "
                f"Q-network reads {qnet.config.feature_dim}"
            )
        self.world_model = world_model
        self.qnet = qnet.to(world_model.device).eval()

    def act(self, features: torch.Tensor) -> torch.Tensor:
        """Greedy actions ``(N,)`` int64 for features ``(N, F)`` (the dream policy)."""
        with torch.no_grad():
            return self.qnet(features.to(self.world_model.device).float()).argmax(-1)

    @torch.inference_mode()
    def predict(
        self,
        obs: np.ndarray,
        state: State | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, State]:
        """Act on frames ``(N, H, W, 3)`` uint8 (or one frame); returns ``(actions (N,), state)``."""
        wm = self.world_model
        frames, state, single = predict_inputs(
            wm, obs, state, episode_start, "DiffusionAgent.predict"
        )
        state = wm.observe(state, frames)
        action = self.act(wm.features(state))  # (N,)
        state = wm.advance(state, action)
        out = action.cpu().numpy().astype(np.int64)
        return (out[0] if single else out), state

    @classmethod
    def load(
        cls, world_model: DiffusionWorldModel, agent_dir: str | Path, device: str = "cpu"
    ) -> DiffusionAgent:
        """Rebuild from a trained world model and ``agent_dir`` (written by train_in_dream)."""
        qnet = load_model(agent_dir, QNet, device=device)
        assert isinstance(qnet, QNet)
        return cls(world_model, qnet)
