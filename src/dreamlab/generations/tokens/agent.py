"""The token run's agent: an actor-critic trained only in the token dream, and how it acts.

Training is the shared actor-critic of :mod:`dreamlab.train.imagination`
(:meth:`~dreamlab.train.imagination.ImaginationTrainer.update_world_model` on dreams begun from
real frames); this module adds the token run's settings and its resumable checkpoint in
``RUN/agent/`` (``model.safetensors``, ``actor_optimizer/``, ``critic_optimizer/``,
``trainer.json``, written as one unit of :func:`dreamlab.io.commit_files`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from dreamlab.agent import ActorAgent
from dreamlab.checkpoint import (
    OPTIMIZER_FILE,
    CheckpointError,
    load_model,
    load_optimizer,
    optimizer_step,
    save_model,
    save_optimizer,
    weights_step,
)
from dreamlab.generations.tokens.config import TokenRunConfig
from dreamlab.generations.tokens.worldmodel import TokenWorldModel
from dreamlab.io import commit_files, read_json, sweep_temp_files
from dreamlab.models.actor_critic import ActorCritic, ActorCriticConfig
from dreamlab.progress import tqdm
from dreamlab.train.imagination import ImaginationConfig, ImaginationTrainer
from dreamlab.worldmodel import State

__all__ = ["TokenAgent", "agent_imagination_config", "train_agent"]


class TokenAgent(ActorAgent):
    """An actor trained in the token dream, acting in real envs (SB3-shaped ``predict``).

    Per call: ``observe`` the real frame into the open block, act on ``[z_q, h]``, then
    ``advance`` the transformer with the action (no frame is imagined: the next call brings the
    real one). The rest of ``predict`` is :class:`~dreamlab.agent.ActorAgent`'s.
    """

    world_model: TokenWorldModel

    def __init__(self, world_model: TokenWorldModel, actor_critic: ActorCritic, seed: int = 0):
        super().__init__(world_model, actor_critic, seed)
        self.actor_critic.eval()

    def _after_action(self, state: State, env_action: torch.Tensor) -> State:
        return self.world_model.advance(state, env_action)


def agent_imagination_config(cfg: TokenRunConfig) -> ImaginationConfig:
    """Imagination settings of the token agent: the run's horizon and rollouts per update,
    Catch-tuned learning rates (as Dreamer's)."""
    return ImaginationConfig(
        horizon=cfg.horizon,
        actor_lr=3e-4,
        critic_lr=3e-4,
        entropy=3e-3,
        gamma=0.97,
        max_starts=cfg.agent_starts,
    )


def _optimizer_dir(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}_optimizer"


def _resume(
    out_dir: Path, ac: ActorCritic, icfg: ImaginationConfig, updates: int, device: torch.device
) -> tuple[ImaginationTrainer, int, float]:
    """The trainer (fresh, or restored from ``out_dir``), its update count and wall seconds (a
    finished agent, ``updates`` reached, needs no optimizer state)."""
    trainer_file = out_dir / "trainer.json"
    sweep_temp_files(out_dir)  # what a killed save left; finishes a half-moved checkpoint
    if not trainer_file.exists():
        return ImaginationTrainer(ac, icfg), 0, 0.0
    state = read_json(trainer_file, "agent trainer state")
    start, seconds = int(state["step"]), float(state["seconds"])
    if weights_step(out_dir) != start:
        raise CheckpointError(f"{out_dir}: agent checkpoint files are from different steps")
    loaded = load_model(out_dir, ActorCritic, device=str(device))
    assert isinstance(loaded, ActorCritic)
    trainer = ImaginationTrainer(loaded, icfg)
    if start >= updates:
        return trainer, start, seconds
    if (out_dir / OPTIMIZER_FILE).exists():
        raise CheckpointError(
            f"{out_dir}: agent checkpoint of an earlier dreamlab (one optimizer for actor and "
            f"critic); delete {out_dir} to train the agent again"
        )
    for name, opt in trainer.optimizers.items():
        if optimizer_step(_optimizer_dir(out_dir, name)) != start:
            raise CheckpointError(f"{out_dir}: agent checkpoint files are from different steps")
        load_optimizer(_optimizer_dir(out_dir, name), opt)
    return trainer, start, seconds


def train_agent(
    world_model: TokenWorldModel,
    bank: dict[str, torch.Tensor],
    cfg: TokenRunConfig,
    out_dir: Path,
    progress: bool = True,
) -> tuple[ActorCritic, float]:
    """Actor-critic in the token dream, resumable in ``out_dir``; returns (agent, seconds).

    Update ``u`` imagines ``cfg.horizon`` steps from ``cfg.agent_starts`` rows of ``bank``, all
    drawn with a generator seeded by ``(cfg.seed, u)``, so a resumed run repeats the same draws.
    """
    spec = world_model.action_spec
    ac_cfg = ActorCriticConfig(
        feature_dim=world_model.feature_dim,
        action_kind=spec.kind,
        action_dim=spec.n,
        action_low=tuple(spec.low) or (-1.0,),
        action_high=tuple(spec.high) or (1.0,),
        hidden=128,
        value_bins=63,
    )
    torch.manual_seed(cfg.seed)
    ac = ActorCritic(ac_cfg).to(world_model.device)
    trainer, start, seconds = _resume(
        out_dir, ac, agent_imagination_config(cfg), cfg.agent_updates, world_model.device
    )
    if start >= cfg.agent_updates:
        return trainer.ac, seconds
    gen = torch.Generator(device=world_model.device)
    n_bank = len(bank["tokens"])
    t0 = time.perf_counter()
    bar = tqdm(
        total=cfg.agent_updates, initial=start, desc="agent", disable=not progress, file=sys.stderr
    )
    for u in range(start + 1, cfg.agent_updates + 1):
        gen.manual_seed(cfg.seed * 1_000_003 + u)
        idx = torch.randint(n_bank, (cfg.agent_starts,), generator=gen)
        rows = {"tokens": bank["tokens"][idx].to(world_model.device)}
        metrics = trainer.update_world_model(world_model, rows, gen)
        bar.update(1)
        bar.set_postfix(ret=f"{metrics['return']:.3f}")
        if u % cfg.checkpoint_every == 0 or u == cfg.agent_updates:
            now = seconds + time.perf_counter() - t0
            with commit_files(out_dir) as commit:  # every file of the checkpoint as one unit
                save_model(out_dir, trainer.ac, step=u, commit=commit)
                for name, opt in trainer.optimizers.items():
                    save_optimizer(_optimizer_dir(out_dir, name), opt, step=u, commit=commit)
                commit.write_json(
                    out_dir / "trainer.json", {"step": u, "seconds": now, "metrics": metrics}
                )
    bar.close()
    return trainer.ac, seconds + time.perf_counter() - t0
