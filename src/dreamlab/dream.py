"""A dream is just another environment: Gymnasium envs over any :class:`WorldModel`.

- :class:`DreamVecEnv`: N dreams advanced as one tensor computation per step, with same-step
  autoreset. Its fast path is tensors in / tensors out (:meth:`DreamVecEnv.reset_tensor`,
  :meth:`DreamVecEnv.step_tensor`); ``reset``/``step`` give the ``gymnasium.vector.VectorEnv``
  numpy interface on top. CMA-ES evaluates whole populations through it.
- :class:`DreamEnv`: one dream as a plain ``gymnasium.Env`` (passes ``check_env``), for anything
  written against the single-env API.

Observations are the controller features ``world_model.features(state)`` (``[z, h]`` for V+M),
actions are the real env's actions, rewards and terminations come from the world model, and
``render()`` decodes what the model imagines. Dreams begin at rows of a *start bank* drawn from
real data (see :func:`dreamlab.generations.vmc.worldmodel.start_latents_from_store`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from dreamlab.worldmodel import StartLatents, State, WorldModel, check_start_latents

__all__ = ["DreamEnv", "DreamVecEnv", "frames_to_uint8", "record_dream"]


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Model frames ``(B, 3, H, W)`` in ``[0, 1]`` -> uint8 ``(B, H, W, 3)`` numpy."""
    x = frames.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)  # (B, 3, H, W)
    return x.movedim(-3, -1).cpu().numpy()  # (B, H, W, 3)


def _seed_from(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63 - 1))


class DreamVecEnv(VectorEnv):
    """N parallel dreams of one world model, stepped as a single batched computation.

    Args:
        world_model: any :class:`~dreamlab.worldmodel.WorldModel`.
        start_latents: start bank, each tensor ``(N_bank, ...)``; a reset draws rows uniformly.
        action_space: the real env's (single) action space.
        num_envs: number of parallel dreams N.
        temperature: MDN sampling temperature tau (higher = more uncertain, harder dreams).
        max_episode_steps: dreams are truncated after this many steps.
        autoreset: reset finished dreams in the same step (their last observation goes to
            ``info["final_obs"]``); with ``False`` finished dreams keep running until ``reset``.
        render_mode: ``None`` or ``"rgb_array"``.
    """

    metadata: dict[str, Any] = {
        "autoreset_mode": AutoresetMode.SAME_STEP,
        "render_modes": ["rgb_array"],
    }

    def __init__(
        self,
        world_model: WorldModel,
        start_latents: StartLatents,
        action_space: gym.Space[Any],
        num_envs: int,
        *,
        temperature: float = 1.0,
        max_episode_steps: int = 1000,
        autoreset: bool = True,
        render_mode: str | None = None,
    ) -> None:
        if num_envs <= 0:
            raise ValueError(f"DreamVecEnv: num_envs must be > 0, got {num_envs}")
        if max_episode_steps <= 0:
            raise ValueError(f"DreamVecEnv: max_episode_steps must be > 0, got {max_episode_steps}")
        if temperature < 0:
            raise ValueError(f"DreamVecEnv: temperature must be >= 0, got {temperature}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(
                f"DreamVecEnv: render_mode must be None or 'rgb_array', got {render_mode!r}"
            )
        if not isinstance(action_space, gym.spaces.Discrete | gym.spaces.Box):
            raise ValueError(
                f"DreamVecEnv: action space must be Discrete or Box, got {action_space}"
            )
        self.world_model = world_model
        self.device = torch.device(world_model.device)
        self.num_bank = check_start_latents(start_latents)
        self.start_latents = {k: v.to(self.device) for k, v in start_latents.items()}
        self.num_envs = num_envs
        self._num_envs_made = num_envs
        self.temperature = float(temperature)
        self.max_episode_steps = int(max_episode_steps)
        self.autoreset = autoreset
        self.render_mode = render_mode
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.single_action_space = action_space
        self.action_space = batch_space(action_space, num_envs)
        feat = world_model.feature_dim
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (feat,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.generator: torch.Generator | None = None
        self.state: State | None = None
        self.elapsed_steps = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ tensor API (fast path)
    def _rows(self, count: int) -> dict[str, torch.Tensor]:
        assert self.generator is not None
        idx = torch.randint(
            self.num_bank, (count,), generator=self.generator, device=self.device
        )  # (count,)
        return {k: v[idx] for k, v in self.start_latents.items()}

    @torch.inference_mode()
    def reset_tensor(
        self, seed: int | None = None, start_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Start every dream afresh; returns observations ``(N, F)``.

        Args:
            seed: seeds the dream generator (start rows and every later MDN sample).
            start_indices: optional ``(N,)`` rows of the start bank to use instead of random
                ones (e.g. the same starts for every CMA-ES candidate: common random numbers).
        """
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
            self.generator = torch.Generator(device=self.device).manual_seed(seed)
        elif self.generator is None:
            self.generator = torch.Generator(device=self.device).manual_seed(
                _seed_from(self.np_random)
            )
        if self.num_envs != self._num_envs_made:  # dreams were dropped (keep_dreams)
            self.num_envs = self._num_envs_made
            self.elapsed_steps = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        if start_indices is not None:
            idx = torch.as_tensor(start_indices, dtype=torch.long, device=self.device)
            if (
                idx.shape != (self.num_envs,)
                or int(idx.min()) < 0
                or int(idx.max()) >= self.num_bank
            ):
                raise ValueError(
                    f"DreamVecEnv.reset: start_indices must be ({self.num_envs},) in "
                    f"[0, {self.num_bank}), got shape {tuple(idx.shape)}"
                )
            rows = {k: v[idx] for k, v in self.start_latents.items()}
        else:
            rows = self._rows(self.num_envs)
        self.state = self.world_model.start_state(rows, generator=self.generator)
        self.elapsed_steps.zero_()
        return self.world_model.features(self.state)  # (N, F)

    def keep_dreams(self, rows: torch.Tensor) -> None:
        """Drop every dream but ``rows`` ``(M,)`` (indices into the current batch): later
        :meth:`step_tensor` calls step those M dreams, in that order, with their memory and step
        counts, so finished dreams cost nothing; the next reset restores all ``num_envs``.
        Tensor API only (the numpy ``step`` expects the full batch)."""
        if self.state is None:
            raise RuntimeError("DreamVecEnv.keep_dreams called before reset()")
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        self.state = {k: v[rows] for k, v in self.state.items()}
        self.elapsed_steps = self.elapsed_steps[rows]
        self.num_envs = int(rows.numel())

    @torch.inference_mode()
    def step_tensor(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Advance every dream one step.

        Args:
            action: ``(N, A)`` float (Box) or ``(N,)`` int64 (Discrete).

        Returns:
            ``(obs (N, F), reward (N,), terminated (N,) bool, truncated (N,) bool, final_obs)``.
            With autoreset, finished dreams are already reset in ``obs`` and ``final_obs``
            ``(N, F)`` holds every dream's observation before that reset (``None`` when no dream
            finished or autoreset is off).
        """
        if self.state is None:
            raise RuntimeError("DreamVecEnv.step called before reset()")
        action = action.to(self.device)
        if action.shape[0] != self.num_envs:
            raise ValueError(
                f"DreamVecEnv.step: expected actions for {self.num_envs} dreams, got shape "
                f"{tuple(action.shape)}"
            )
        state, reward, terminated = self.world_model.step(
            self.state, action, self.temperature, generator=self.generator
        )
        self.elapsed_steps += 1
        truncated = (self.elapsed_steps >= self.max_episode_steps) & ~terminated  # (N,)
        obs = self.world_model.features(state)  # (N, F)
        final_obs = None
        if self.autoreset:
            done = terminated | truncated  # (N,)
            if bool(done.any()):
                final_obs = obs
                idx = done.nonzero().squeeze(1)  # (k,)
                fresh = self.world_model.start_state(self._rows(idx.numel()), self.generator)
                state = {k: v.clone() for k, v in state.items()}
                for key, value in fresh.items():
                    state[key][idx] = value
                self.elapsed_steps[idx] = 0
                obs = self.world_model.features(state)  # (N, F)
        self.state = state
        return obs, reward, terminated, truncated, final_obs

    # ------------------------------------------------------------------ gymnasium VectorEnv API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Numpy form of :meth:`reset_tensor`; ``options={"start_indices": ...}`` is honoured."""
        start = (options or {}).get("start_indices")
        obs = self.reset_tensor(seed=seed, start_indices=start)
        return obs.float().cpu().numpy(), {}

    def _action_tensor(self, actions: Any) -> torch.Tensor:
        if isinstance(actions, torch.Tensor):
            return actions
        if self.discrete:
            return torch.as_tensor(np.asarray(actions), dtype=torch.long)
        return torch.as_tensor(np.asarray(actions, dtype=np.float32))

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Numpy form of :meth:`step_tensor` (``info["final_obs"]`` / ``info["_final_obs"]``)."""
        obs, reward, terminated, truncated, final_obs = self.step_tensor(
            self._action_tensor(actions)
        )
        info: dict[str, Any] = {}
        if final_obs is not None:
            info["final_obs"] = final_obs.float().cpu().numpy()
            info["_final_obs"] = (terminated | truncated).cpu().numpy()
        return (
            obs.float().cpu().numpy(),
            reward.double().cpu().numpy(),
            terminated.cpu().numpy(),
            truncated.cpu().numpy(),
            info,
        )

    @torch.inference_mode()
    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """What every dream looks like now: uint8 ``(N, H, W, 3)`` (``None`` without rgb_array)."""
        if self.render_mode != "rgb_array" or self.state is None:
            return None
        return frames_to_uint8(self.world_model.decode(self.state))

    def close_extras(self, **kwargs: Any) -> None:
        """Drop the dream state (frees device memory)."""
        self.state = None


class DreamEnv(gym.Env[np.ndarray, Any]):
    """One dream as a ``gymnasium.Env``: observations are features ``(F,)`` float32.

    Args:
        world_model: any :class:`~dreamlab.worldmodel.WorldModel`.
        start_latents: start bank (each tensor ``(N_bank, ...)``).
        action_space: the real env's action space.
        temperature: MDN sampling temperature tau.
        max_episode_steps: truncate after this many steps.
        render_mode: ``None`` or ``"rgb_array"`` (the decoded imagination, uint8 ``(H, W, 3)``).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        world_model: WorldModel,
        start_latents: StartLatents,
        action_space: gym.Space[Any],
        *,
        temperature: float = 1.0,
        max_episode_steps: int = 1000,
        render_mode: str | None = None,
    ) -> None:
        self._vec = DreamVecEnv(
            world_model,
            start_latents,
            action_space,
            1,
            temperature=temperature,
            max_episode_steps=max_episode_steps,
            autoreset=False,
            render_mode=render_mode,
        )
        self.world_model = world_model
        self.action_space = action_space
        self.observation_space = self._vec.single_observation_space
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self._needs_reset = True

    @property
    def temperature(self) -> float:
        """MDN sampling temperature tau of this dream."""
        return self._vec.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"DreamEnv.temperature must be >= 0, got {value}")
        self._vec.temperature = float(value)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new dream at a random real start point."""
        super().reset(seed=seed)
        # Derive the dream's torch seed from the env's np_random so reset(seed=s) is reproducible
        # and later unseeded resets still differ.
        dream_seed = (
            _seed_from(self.np_random) if seed is not None or self._vec.generator is None else None
        )
        start = (options or {}).get("start_index")
        idx = None if start is None else torch.tensor([int(start)])
        obs = self._vec.reset_tensor(seed=dream_seed, start_indices=idx)  # (1, F)
        self._needs_reset = False
        return obs[0].float().cpu().numpy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Imagine one step of ``action`` (an element of ``action_space``)."""
        if self._needs_reset:
            raise RuntimeError("DreamEnv.step called before reset() (or after the dream ended)")
        if self._vec.discrete:
            a = torch.tensor([int(np.asarray(action).item())], dtype=torch.long)  # (1,)
        else:
            arr = np.asarray(action, dtype=np.float32)
            if arr.shape != self.action_space.shape:
                raise ValueError(
                    f"DreamEnv.step: action of shape {arr.shape}, expected "
                    f"{self.action_space.shape}"
                )
            a = torch.from_numpy(arr).unsqueeze(0)  # (1, A)
        obs, reward, terminated, truncated, _ = self._vec.step_tensor(a)
        term, trunc = bool(terminated[0]), bool(truncated[0])
        self._needs_reset = term or trunc
        return obs[0].float().cpu().numpy(), float(reward[0]), term, trunc, {}

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """The decoded imagination as uint8 ``(H, W, 3)`` (``None`` without rgb_array)."""
        frames = self._vec.render()
        return None if frames is None else frames[0]

    def close(self) -> None:
        """Release the dream state."""
        self._vec.close()


@torch.inference_mode()
def dream_feature_stats(
    world_model: WorldModel,
    start_latents: StartLatents,
    action_space: gym.Space[Any],
    *,
    num_dreams: int = 256,
    steps: int = 100,
    temperature: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation of the features C sees in random-action dreams.

    Used to standardize C's inputs (``ControllerConfig.input_mean`` / ``input_std``): z and h
    differ in scale by ~4x and across dimensions by ~10x, so without it no single CMA-ES step
    size fits every weight. Dreams restart as they end (autoreset), so every step counts.

    Args:
        world_model: the dream's world model.
        start_latents: the start bank the controller will train from.
        action_space: the real env's action space (random actions are drawn from it).
        num_dreams: parallel dreams.
        steps: steps per dream.
        temperature: MDN sampling temperature.
        seed: seeds the dreams and the random actions.

    Returns:
        ``(mean (F,), std (F,))`` float32 CPU tensors; std is clamped to >= 1e-3 so constant
        features do not blow up.
    """
    if num_dreams <= 0 or steps <= 0:
        raise ValueError(
            f"dream_feature_stats: num_dreams and steps must be > 0, got {num_dreams}, {steps}"
        )
    env = DreamVecEnv(
        world_model,
        start_latents,
        action_space,
        num_dreams,
        temperature=temperature,
        max_episode_steps=steps,
    )
    space = batch_space(action_space, num_dreams)
    space.seed(seed)
    obs = env.reset_tensor(seed=seed).float()  # (N, F)
    total = torch.zeros(obs.shape[1], dtype=torch.float64)  # (F,)
    total_sq = torch.zeros(obs.shape[1], dtype=torch.float64)  # (F,)
    for _ in range(steps):
        rows = obs.double().cpu()  # (N, F)
        total += rows.sum(0)
        total_sq += (rows**2).sum(0)
        action = torch.as_tensor(np.asarray(space.sample()))  # (N, A) float32 or (N,) int64
        obs, *_ = env.step_tensor(action)
        obs = obs.float()
    env.close()
    count = num_dreams * steps
    mean = total / count  # (F,)
    var = (total_sq / count - mean**2).clamp(min=0.0)  # (F,)
    return mean.float(), var.sqrt().clamp(min=1e-3).float()


def record_dream(
    world_model: WorldModel,
    start_latents: StartLatents,
    action_space: gym.Space[Any],
    policy: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    steps: int = 150,
    temperature: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """One dream from a random row of the start bank, decoded: what ``dreamlab dream`` films.

    Args:
        world_model: the dream's world model.
        start_latents: its start bank.
        action_space: the real env's action space.
        policy: features ``(1, F)`` -> actions ``(1,)`` int64 or ``(1, A)`` float (a dream
            policy, as compare-models' contenders have); ``None`` acts uniformly at random.
        steps: at most this many steps (the dream may end sooner).
        temperature: sampling temperature of the dream.
        seed: seeds the start row, the dream's samples and the random actions.

    Returns:
        The decoded frames, uint8 ``(T + 1, H, W, 3)`` (the start included).
    """
    env = DreamEnv(
        world_model,
        start_latents,
        action_space,
        temperature=temperature,
        max_episode_steps=steps,
        render_mode="rgb_array",
    )
    action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    try:
        for _ in range(steps):
            if policy is None:
                action = action_space.sample()
            else:
                with torch.inference_mode():
                    feats = torch.as_tensor(obs, device=world_model.device)[None]  # (1, F)
                    action = policy(feats)[0].cpu().numpy()
            obs, _, terminated, truncated, _ = env.step(action)
            frames.append(env.render())
            if terminated or truncated:
                break
    finally:
        env.close()
    return np.stack(frames)
