"""Behaviour learning in imagination: Dreamer's actor-critic on rollouts of a world model.

One update (:meth:`ImaginationTrainer.update` for the RSSM's raw tensors,
:meth:`ImaginationTrainer.update_world_model` for any :class:`~dreamlab.worldmodel.WorldModel`):

1. start from real states: posterior states of replayed sequences, or rows of a start bank (no
   gradient);
2. imagine ``horizon`` steps with the model, acting with the current actor (no gradient: the
   actor learns with Reinforce gradients, so nothing is backpropagated through the model);
3. the model gives rewards and continuation flags of the imagined steps, the critic values;
4. lambda-returns ``R_t = r_t + gamma c_t ((1 - lambda) v_{t+1} + lambda R_{t+1})``, ``R_H = v_H``;
5. actor: ``-logpi(a_t | s_t) * sg((R_t - v_t) / max(1, S)) - eta * H[pi(. | s_t)]`` where S is
   the running 5th-95th percentile range of the returns (return normalisation);
6. critic: two-hot cross-entropy to ``sg(R_t)`` plus the same to the slow critic's value (the
   slow critic is an EMA of the critic's weights);
7. every term is weighted by the imagined probability the episode is still running.

Steps 1-2 are :func:`rollout` (any model, through a features function and a step function);
steps 3-7 are :meth:`ImaginationTrainer.learn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from dreamlab.models.actor_critic import ActorCritic
from dreamlab.models.rssm import RSSM
from dreamlab.worldmodel import StartLatents, WorldModel, check_start_latents

__all__ = [
    "ImaginationConfig",
    "ImaginationTrainer",
    "Imagined",
    "imagine",
    "imagine_world_model",
    "lambda_returns",
    "rollout",
]

S = TypeVar("S")


@dataclass
class ImaginationConfig:
    """Settings of actor-critic learning in imagination (DreamerV3 defaults unless noted)."""

    horizon: int = 15
    """imagined steps per start state"""
    gamma: float = 0.985
    """discount per step"""
    lambda_: float = 0.95
    """lambda of the lambda-returns"""
    entropy: float = 3e-4
    """weight of the policy-entropy bonus (returns are normalised, so this is scale-free)"""
    actor_lr: float = 3e-5
    """actor learning rate (Adam)"""
    critic_lr: float = 3e-5
    """critic learning rate (Adam)"""
    grad_clip: float = 100.0
    """clip each network's gradient norm to this (0 disables)"""
    slow_critic_fraction: float = 0.02
    """EMA step of the slow critic towards the critic after every update"""
    slow_critic_weight: float = 1.0
    """weight of the critic's regression to the slow critic's value"""
    return_decay: float = 0.99
    """EMA decay of the return scale (percentile range)"""
    max_starts: int = 1024
    """imagine from at most this many start states per update (a random subset)"""
    temperature: float = 1.0
    """sampling temperature of the prior while imagining"""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(
                    f"ImaginationConfig.{name}={getattr(self, name)!r}: expected {expected}"
                )

        need(self.horizon >= 1, "horizon", ">= 1")
        need(0 < self.gamma <= 1, "gamma", "in (0, 1]")
        need(0 <= self.lambda_ <= 1, "lambda_", "in [0, 1]")
        need(self.entropy >= 0, "entropy", ">= 0")
        need(self.actor_lr > 0, "actor_lr", "> 0")
        need(self.critic_lr > 0, "critic_lr", "> 0")
        need(0 < self.slow_critic_fraction <= 1, "slow_critic_fraction", "in (0, 1]")
        need(0 <= self.return_decay < 1, "return_decay", "in [0, 1)")
        need(self.max_starts >= 1, "max_starts", ">= 1")


@dataclass
class Imagined:
    """An imagined batch of trajectories (no gradient attached)."""

    features: torch.Tensor
    """``(H+1, N, F)`` states s_0..s_H"""
    actions: torch.Tensor
    """``(H, N)`` int64 or ``(H, N, A)`` float: policy-form actions a_0..a_{H-1}"""
    rewards: torch.Tensor
    """``(H, N)`` predicted reward of each transition s_t -> s_{t+1}"""
    conts: torch.Tensor
    """``(H, N)`` predicted probability that the episode continues after that transition"""


@torch.no_grad()
def rollout(
    actor_critic: ActorCritic,
    state: S,
    features: Callable[[S], torch.Tensor],
    step: Callable[[S, torch.Tensor], tuple[S, torch.Tensor, torch.Tensor]],
    horizon: int,
    generator: torch.Generator | None = None,
) -> Imagined:
    """Act with the actor for ``horizon`` imagined steps from ``state`` (any model).

    Args:
        actor_critic: samples the actions.
        state: the model's start state, whatever its form.
        features: ``state -> (N, F)`` actor input.
        step: ``(state, env action) -> (state', reward (N,), continuation (N,) in [0, 1])``.
        horizon: imagined steps.
        generator: for the actor's samples (the model's own are ``step``'s business).
    """
    feats = [features(state)]
    actions, rewards, conts = [], [], []
    for _ in range(horizon):
        action = actor_critic.policy(feats[-1]).sample(generator)  # (N,) or (N, A)
        state, reward, cont = step(state, actor_critic.to_env(action))
        actions.append(action)
        rewards.append(reward)
        conts.append(cont)
        feats.append(features(state))
    return Imagined(
        torch.stack(feats), torch.stack(actions), torch.stack(rewards), torch.stack(conts)
    )


def imagine(
    rssm: RSSM,
    actor_critic: ActorCritic,
    deter: torch.Tensor,
    stoch: torch.Tensor,
    horizon: int,
    temperature: float = 1.0,
) -> Imagined:
    """Roll the RSSM's prior forward ``horizon`` steps from ``deter (N, D)``, ``stoch (N, S*K)``."""

    def features(state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return torch.cat(state, -1)  # (N, D + S*K)

    def step(
        state: tuple[torch.Tensor, torch.Tensor], env_action: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]:
        deter = rssm.img_step(*state, rssm.encode_action(env_action))  # (N, D)
        stoch = rssm.sample_stoch(rssm.prior_logits(deter), temperature)  # (N, S*K)
        feat = torch.cat([deter, stoch], -1)
        return (deter, stoch), rssm.reward(feat), torch.sigmoid(rssm.cont_logit(feat))

    return rollout(actor_critic, (deter, stoch), features, step, horizon)


@torch.no_grad()
def imagine_world_model(
    world_model: WorldModel,
    actor_critic: ActorCritic,
    start: StartLatents,
    horizon: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Imagined:
    """Dream ``horizon`` steps of any world model from start-bank rows ``start`` (each ``(N, ...)``);
    continuation is 1 until the model predicts termination. ``generator`` drives the model's
    samples and the actor's."""

    def features(state: Any) -> torch.Tensor:
        return world_model.features(state).clone()  # inference-mode outputs can't enter autograd

    def step(state: Any, env_action: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        state, reward, terminated = world_model.step(state, env_action, temperature, generator)
        return state, reward.clone(), (~terminated).float()

    state = world_model.start_state(start, generator)
    return rollout(actor_critic, state, features, step, horizon, generator)


def lambda_returns(
    rewards: torch.Tensor,
    conts: torch.Tensor,
    values: torch.Tensor,
    gamma: float,
    lambda_: float,
) -> torch.Tensor:
    """Lambda-returns ``(H, N)``.

    Args:
        rewards: ``(H, N)`` reward of transition t.
        conts: ``(H, N)`` continuation after transition t.
        values: ``(H+1, N)`` values of s_0..s_H.
    """
    horizon = rewards.shape[0]
    out = torch.empty_like(rewards)
    last = values[-1]
    for t in reversed(range(horizon)):
        disc = gamma * conts[t]
        last = rewards[t] + disc * ((1.0 - lambda_) * values[t + 1] + lambda_ * last)
        out[t] = last
    return out


class ImaginationTrainer:
    """Owns the actor's and critic's optimizers and runs imagination updates.

    Args:
        actor_critic: the networks (trained in place).
        config: settings.
    """

    def __init__(self, actor_critic: ActorCritic, config: ImaginationConfig) -> None:
        self.ac = actor_critic
        self.config = config
        self.actor_opt = torch.optim.Adam(
            actor_critic.actor.parameters(), lr=config.actor_lr, eps=1e-5
        )
        self.critic_opt = torch.optim.Adam(
            actor_critic.critic.parameters(), lr=config.critic_lr, eps=1e-5
        )

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``{"actor": ..., "critic": ...}`` (to checkpoint and restore them)."""
        return {"actor": self.actor_opt, "critic": self.critic_opt}

    def _clip(self, params: Any) -> float:
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        return float(torch.nn.utils.clip_grad_norm_(list(params), max_norm))

    def update(
        self,
        rssm: RSSM,
        deter: torch.Tensor,
        stoch: torch.Tensor,
        start_cont: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """One actor and one critic step from start states ``deter (N, D)``, ``stoch (N, S*K)``.

        Args:
            rssm: the world model (not changed).
            deter: start memories (detached inside).
            stoch: start latents.
            start_cont: ``(N,)`` 1 where the start state is not an episode's final state.
            generator: picks the subset of start states when there are more than ``max_starts``.

        Returns:
            Metrics (``actor_loss``, ``critic_loss``, ``return``, ``entropy``, ...).
        """
        c = self.config
        deter, stoch = deter.detach(), stoch.detach()
        n = deter.shape[0]
        if n > c.max_starts:
            idx = torch.randperm(n, generator=generator, device=deter.device)[: c.max_starts]
            deter, stoch = deter[idx], stoch[idx]
            start_cont = None if start_cont is None else start_cont[idx]
        was_training = rssm.training
        rssm.eval()
        traj = imagine(rssm, self.ac, deter, stoch, c.horizon, c.temperature)
        rssm.train(was_training)
        return self.learn(traj, start_cont)

    def update_world_model(
        self,
        world_model: WorldModel,
        start: StartLatents,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """One actor and one critic step on dreams of any world model from start-bank rows
        ``start`` (at most ``max_starts`` of them, a random subset); ``generator`` drives the
        subset and every sample of the dreams. Returns metrics as :meth:`update`."""
        c = self.config
        n = check_start_latents(start)
        if n > c.max_starts:
            idx = torch.randperm(n, generator=generator, device=world_model.device)[: c.max_starts]
            start = {k: v[idx.to(v.device)] for k, v in start.items()}
        traj = imagine_world_model(world_model, self.ac, start, c.horizon, c.temperature, generator)
        return self.learn(traj)

    def learn(self, traj: Imagined, start_cont: torch.Tensor | None = None) -> dict[str, float]:
        """One actor and one critic step on imagined trajectories (steps 3-7 of the module
        docstring); ``start_cont (N,)`` is 1 where the start state is not an episode's end."""
        c = self.config
        feats = traj.features  # (H+1, N, F)
        if start_cont is None:
            start_cont = torch.ones(feats.shape[1], device=feats.device)
        with torch.no_grad():
            values = self.ac.value(feats)  # (H+1, N)
            returns = lambda_returns(traj.rewards, traj.conts, values, c.gamma, c.lambda_)  # (H, N)
            alive = torch.cat([start_cont[None].float(), traj.conts[:-1]], 0)  # (H, N)
            weight = torch.cumprod(alive, 0)  # (H, N)
            scale = self.ac.update_return_scale(returns, c.return_decay)
            advantage = (returns - values[:-1]) / scale  # (H, N)

        # actor (Reinforce)
        dist = self.ac.policy(feats[:-1].flatten(0, 1))
        logp = dist.log_prob(traj.actions.flatten(0, 1)).view_as(returns)  # (H, N)
        entropy = dist.entropy().view_as(returns)  # (H, N)
        actor_loss = -(weight * (logp * advantage + c.entropy * entropy)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_grad = self._clip(self.ac.actor.parameters())
        self.actor_opt.step()

        # critic (two-hot regression to the returns and to the slow critic)
        logits = self.ac.critic(feats[:-1])  # (H, N, K)
        with torch.no_grad():
            slow = self.ac.value(feats[:-1], slow=True)  # (H, N)
        critic_loss = self.ac.twohot.loss(logits, returns) + c.slow_critic_weight * (
            self.ac.twohot.loss(logits, slow)
        )
        critic_loss = (weight * critic_loss).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_grad = self._clip(self.ac.critic.parameters())
        self.critic_opt.step()
        self.ac.update_slow_critic(c.slow_critic_fraction)

        return {
            "actor_loss": float(actor_loss.detach()),
            "critic_loss": float(critic_loss.detach()),
            "return": float(returns[0].mean()),
            "value": float(values[0].mean()),
            "imagined_reward": float(traj.rewards.mean()),
            "entropy": float(entropy.detach().mean()),
            "return_scale": float(scale),
            "actor_grad_norm": actor_grad,
            "critic_grad_norm": critic_grad,
        }
