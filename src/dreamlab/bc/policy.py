"""A trained BC network as a policy with the Stable-Baselines3 ``predict`` shape.

``BCPolicy.predict(obs (N, H, W, 3) uint8, state, episode_start (N,)) -> (actions, state)``, so
:func:`dreamlab.eval.evaluate.evaluate_policy` scores it like every other agent.

- Pixel inputs: the state is the last ``frame_stack`` frames of each env ``(N, K, H, W, 3)``; at an
  episode start the stack is filled with the first frame (training stacks are padded the same
  way, see :mod:`dreamlab.bc.data`).
- Feature inputs: the state is the world model's (V+M: ``z``, ``h``, ``c``). Per call: observe the
  frame, read the features, act, advance M's memory with the action taken, the same loop as the
  V+M+C agent (:class:`dreamlab.generations.vmc.agent.VMCAgent`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.checkpoint import CheckpointError, load_model
from dreamlab.generations.vmc.evaluate import register_agent
from dreamlab.io import atomic_write_json, read_json
from dreamlab.models import frames_to_tensor
from dreamlab.models.bc import BCNet
from dreamlab.worldmodel import State, WorldModel, select_state

__all__ = ["SOURCE_FILE", "BCPolicy"]

SOURCE_FILE = "bc.json"
"""written beside a BC checkpoint: what it was trained on (demos, world model run, frames)"""


class BCPolicy:
    """A :class:`~dreamlab.models.bc.BCNet` acting in an env.

    Args:
        net: the trained network.
        world_model: required for ``inputs='features'`` (its ``feature_dim`` must match), unused
            for pixels.
    """

    def __init__(self, net: BCNet, world_model: WorldModel | None = None) -> None:
        c = net.config
        if c.inputs == "features":
            if world_model is None:
                raise ValueError("BCPolicy: a features BC network needs the world model it reads")
            if world_model.feature_dim != c.feature_dim:
                raise ValueError(
                    f"BCPolicy: the world model's features have size {world_model.feature_dim}, "
                    f"the network reads {c.feature_dim}"
                )
        self.net = net.eval()
        self.world_model = world_model if c.inputs == "features" else None

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.inference_mode()
    def predict(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Actions for a batch of frames.

        Args:
            obs: uint8 frames ``(N, H, W, 3)``.
            state: the state returned by the previous call (``None``: every env starts fresh).
            episode_start: ``(N,)`` bool; memory is reset where true.
            deterministic: accepted for SB3 compatibility; the policy is deterministic.

        Returns:
            ``(actions, state)``: ``(N, A)`` float32 (Box) or ``(N,)`` int64 (Discrete).
        """
        frames = np.asarray(obs)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"BCPolicy.predict: obs of shape {frames.shape} and dtype {frames.dtype}; "
                "expected uint8 (N, H, W, 3)"
            )
        n = frames.shape[0]
        start = (
            np.ones(n, dtype=bool)
            if episode_start is None
            else np.asarray(episode_start, dtype=bool)
        )
        if start.shape != (n,):
            raise ValueError(
                f"BCPolicy.predict: episode_start of shape {start.shape}; expected ({n},)"
            )
        if self.world_model is None:
            return self._predict_pixels(frames, state, start)
        return self._predict_features(frames, state, start)

    def _predict_pixels(
        self, frames: np.ndarray, state: np.ndarray | None, start: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        k = self.net.config.frame_stack
        n = frames.shape[0]
        if state is None or state.shape[0] != n:
            stack = np.repeat(frames[:, None], k, axis=1)  # (N, K, H, W, 3)
        else:
            stack = np.concatenate([state[:, 1:], frames[:, None]], axis=1)  # (N, K, H, W, 3)
            stack[start] = frames[start, None]
        actions = self.net.act(torch.as_tensor(stack, device=self.device))
        return self._to_numpy(actions), stack

    def _predict_features(
        self, frames: np.ndarray, state: State | None, start: np.ndarray
    ) -> tuple[np.ndarray, State]:
        wm = self.world_model
        assert wm is not None
        n = frames.shape[0]
        fresh = wm.initial_state(n)
        if state is None or next(iter(state.values())).shape[0] != n:
            state = fresh
        elif start.any():
            state = select_state(torch.as_tensor(start, device=wm.device), fresh, state)
        state = wm.observe(state, frames_to_tensor(frames, device=wm.device))
        actions = self.net.act(wm.features(state).to(self.device))  # (N, A) or (N,)
        state, _, _ = wm.step(state, actions.to(wm.device))
        return self._to_numpy(actions), state

    def _to_numpy(self, actions: torch.Tensor) -> np.ndarray:
        out = actions.cpu().numpy()
        if self.net.config.action_kind == "discrete":
            return out.astype(np.int64)
        return out.astype(np.float32)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        bc_dir: str | Path,
        world_model: WorldModel | None = None,
        *,
        device: torch.device | str = "cpu",
    ) -> BCPolicy:
        """Rebuild a policy from a directory written by :func:`dreamlab.bc.train.train_bc`.

        Args:
            bc_dir: holds ``config.json`` + ``model.safetensors`` (kind ``bc``) and ``bc.json``.
            world_model: for a features network; ``None`` loads V+M from the run recorded in
                ``bc.json`` (``world_model_run``).

        Raises:
            CheckpointError: missing or foreign checkpoint, or no world model to read features.
        """
        bc_dir = Path(bc_dir)
        net = load_model(bc_dir, BCNet, device=device)
        assert isinstance(net, BCNet)
        if net.config.inputs == "features" and world_model is None:
            source = read_source(bc_dir)
            run = source.get("world_model_run")
            if not run:
                raise CheckpointError(
                    f"{bc_dir / SOURCE_FILE}: names no world_model_run for this features BC policy"
                )
            world_model = load_vm_world_model(Path(run), source.get("action_space"))
        return cls(net, world_model)


def read_source(bc_dir: str | Path) -> dict[str, Any]:
    """``bc.json`` of a BC directory (empty when absent)."""
    path = Path(bc_dir) / SOURCE_FILE
    return dict(read_json(path, "BC source")) if path.exists() else {}


def write_source(bc_dir: str | Path, source: dict[str, Any]) -> None:
    atomic_write_json(Path(bc_dir) / SOURCE_FILE, source)


def load_vm_world_model(run_dir: Path, action_space: dict[str, Any] | None) -> WorldModel:
    """V+M of a pipeline run directory (``vae/``, ``mdnrnn/``) as a world model with [z, h]."""
    from dreamlab.data.schema import space_from_description
    from dreamlab.generations.vmc.worldmodel import VMWorldModel
    from dreamlab.models.mdnrnn import MDNRNN
    from dreamlab.models.vae import VAE

    for part in ("vae", "mdnrnn"):
        if not (run_dir / part / "config.json").exists():
            raise CheckpointError(f"{run_dir}: no {part}/ checkpoint for the BC features")
    if action_space is None:
        raise CheckpointError(f"{run_dir}: the BC source records no action space")
    vae = load_model(run_dir / "vae", VAE)
    mdnrnn = load_model(run_dir / "mdnrnn", MDNRNN)
    assert isinstance(vae, VAE) and isinstance(mdnrnn, MDNRNN)
    return VMWorldModel(vae, mdnrnn, space_from_description(action_space), features="zh")


# `dreamlab evaluate --agent bc bc_latent` on a V/M/C run scores what `dreamlab train-bc` saved in
# RUN/bc and RUN/bc_latent (bc_latent reads the V+M recorded in its bc.json)
register_agent("bc", BCPolicy.load, "train-bc")
register_agent("bc_latent", BCPolicy.load, "train-bc")
