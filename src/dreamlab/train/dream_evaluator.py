"""CMA-ES fitness in the dream: a whole population x rollouts as ONE batched dream.

:class:`DreamEvaluator` answers :class:`~dreamlab.train.evaluators.Evaluator`'s question
(``evaluate(params (P, D), rollouts R, seed) -> returns (P, R)``) with one tensor computation per
step: a :class:`~dreamlab.dream.DreamVecEnv` of ``P * R`` dreams and the batched controller acting
for every candidate at once. Every candidate's rollout r starts from the same bank row (common
random numbers).
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dreamlab.dream import DreamVecEnv
from dreamlab.models.controller import Controller, ControllerConfig
from dreamlab.train.evaluators import check_params
from dreamlab.worldmodel import StartLatents, WorldModel, check_start_latents

__all__ = ["DreamEvaluator", "controller_action_space"]


def controller_action_space(config: ControllerConfig) -> gym.Space[Any]:
    """The env action space a controller config produces actions for."""
    if config.mapping == "discrete":
        return gym.spaces.Discrete(config.action_dim)
    if config.mapping == "carracing":
        return gym.spaces.Box(
            np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32)
        )
    return gym.spaces.Box(
        np.asarray(config.action_low, np.float32), np.asarray(config.action_high, np.float32)
    )


class DreamEvaluator:
    """Population x rollouts as one batched dream.

    Args:
        world_model: the dream's world model; its ``feature_dim`` must equal the controller's.
        start_latents: start bank (each tensor ``(N_bank, ...)``).
        controller: a template controller: its config gives the parameter layout and action
            mapping (a copy is moved to the world model's device; the original is untouched).
        temperature: MDN sampling temperature tau.
        max_episode_steps: dream length limit.
        max_batch: at most this many dreams run at once; larger populations go in chunks.
        common_starts: every candidate's rollout r starts from the same bank row.
        compact: drop finished dreams from the batch (checked every 8 steps, once a quarter of
            it has finished): where dreams end at very different times (Doom: most die within
            a few hundred steps, a few survive to the 2,100-step limit) the batch no longer
            steps the dead ones to the last survivor's end. Same returns in distribution; other
            random draws than without it.
    """

    def __init__(
        self,
        world_model: WorldModel,
        start_latents: StartLatents,
        controller: Controller,
        *,
        temperature: float = 1.0,
        max_episode_steps: int = 1000,
        max_batch: int = 65536,
        common_starts: bool = True,
        compact: bool = False,
    ) -> None:
        if world_model.feature_dim != controller.config.feature_dim:
            raise ValueError(
                f"DreamEvaluator: world model features have size {world_model.feature_dim}, the "
                f"controller reads {controller.config.feature_dim}"
            )
        self.world_model = world_model
        self.start_latents = start_latents
        self.num_bank = check_start_latents(start_latents)
        self.device = torch.device(world_model.device)
        self.controller = copy.deepcopy(controller).to(self.device).eval()
        self.action_space = controller_action_space(controller.config)
        self.temperature = temperature
        self.max_episode_steps = max_episode_steps
        self.max_batch = max_batch
        self.common_starts = common_starts
        self.compact = compact
        # One dream env per batch size, made once: a population and the mean's evaluation use
        # two sizes, and making an env re-validates the whole start bank (tens of MB).
        self._envs: dict[int, DreamVecEnv] = {}
        self.total_env_steps = 0
        """dream steps taken so far (all dreams, including finished ones still in the batch)"""

    def evaluate(self, params: np.ndarray, rollouts: int, seed: int) -> np.ndarray:
        """Returns ``(P, R)`` float64: candidate p's return in dream r."""
        arr = check_params(params, rollouts, self.controller.num_params)
        per_chunk = max(1, self.max_batch // rollouts)
        out = np.empty((arr.shape[0], rollouts), dtype=np.float64)
        for start in range(0, arr.shape[0], per_chunk):
            chunk = arr[start : start + per_chunk]
            out[start : start + len(chunk)] = self._evaluate_chunk(chunk, rollouts, seed)
        return out

    @torch.inference_mode()
    def _evaluate_chunk(self, params: np.ndarray, rollouts: int, seed: int) -> np.ndarray:
        num_candidates = params.shape[0]
        n = num_candidates * rollouts
        env = self._envs.get(n)
        if env is None:
            env = self._envs[n] = DreamVecEnv(
                self.world_model,
                self.start_latents,
                self.action_space,
                n,
                temperature=self.temperature,
                max_episode_steps=self.max_episode_steps,
                autoreset=False,
            )
        starts = None
        if self.common_starts:
            g = torch.Generator().manual_seed(seed)
            starts = torch.randint(self.num_bank, (rollouts,), generator=g).repeat(num_candidates)
        obs = env.reset_tensor(seed=seed, start_indices=starts)  # (n, F)
        weights = torch.as_tensor(params, dtype=torch.float32, device=self.device)  # (P, D)
        returns = torch.zeros(n, dtype=torch.float64, device=self.device)  # (n,)
        alive = torch.ones(n, dtype=torch.bool, device=self.device)  # (n,)
        rows: torch.Tensor | None = None  # (m,) the dreams still in the batch (compact)
        row_weights = weights  # (m, D) each kept dream's candidate
        for t in range(self.max_episode_steps):
            if rows is None:
                action = self.controller.population_forward(
                    weights, obs.view(num_candidates, rollouts, -1)
                )  # (P, R, A) or (P, R)
                action = action.reshape(n, *action.shape[2:])  # (n, A) or (n,)
            else:
                action = self.controller.population_forward(row_weights, obs.unsqueeze(1))
                action = action.squeeze(1)  # (m, A) or (m,)
            obs, reward, terminated, truncated, _ = env.step_tensor(action)
            if rows is None:
                returns += reward.double() * alive
                alive &= ~(terminated | truncated)
            else:
                live = alive[rows]  # (m,)
                returns[rows] += reward.double() * live
                alive[rows] = live & ~(terminated | truncated)
            self.total_env_steps += n if rows is None else int(rows.numel())
            # Checking costs a device sync, so only every few steps; finished dreams add 0.
            if t % 8 == 7:
                if not bool(alive.any()):
                    break
                batch = n if rows is None else int(rows.numel())
                if self.compact and int(alive.sum()) <= 0.75 * batch:
                    local = (alive if rows is None else alive[rows]).nonzero().squeeze(1)
                    env.keep_dreams(local)
                    obs = obs[local]
                    rows = local if rows is None else rows[local]
                    row_weights = weights[torch.div(rows, rollouts, rounding_mode="floor")]
        env.state = None  # drop the dreams' memory until the next reset
        return returns.view(num_candidates, rollouts).cpu().numpy()

    def close(self) -> None:
        """Drop the dream envs (tensors are freed with them)."""
        self._envs.clear()
