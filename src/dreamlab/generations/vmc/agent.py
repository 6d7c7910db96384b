"""The V+M+C agent acting in the real environment (``VMCAgent``), and the picklable
factory real-env CMA-ES backends build it with.

A *run directory* is the unit of saving and loading: ``save(run_dir)`` writes ``vae/``,
``mdnrnn/`` and ``controller/`` (each ``config.json`` + ``model.safetensors``), which is the
layout the pipeline produces, and ``load(run_dir)`` rebuilds the agent from exactly those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.agent import predict_inputs
from dreamlab.checkpoint import MODEL_FILE, load_model, save_model
from dreamlab.generations.vmc.worldmodel import VMWorldModel
from dreamlab.models.controller import Controller, ControllerConfig
from dreamlab.models.mdnrnn import MDNRNN
from dreamlab.models.vae import VAE
from dreamlab.worldmodel import ActionSpec, State, WorldModel

__all__ = ["VMCAgent", "VMCAgentFactory", "action_spec_for"]


def action_spec_for(config: ControllerConfig) -> ActionSpec:
    """The env action space a controller config acts in."""
    if config.mapping == "discrete":
        return ActionSpec("discrete", config.action_dim)
    if config.mapping == "carracing":
        return ActionSpec("continuous", 3, [-1.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    return ActionSpec(
        "continuous", config.action_dim, list(config.action_low), list(config.action_high)
    )


class VMCAgent:
    """V+M+C (or any world model + C) as a policy for real envs.

    Args:
        world_model: any :class:`~dreamlab.worldmodel.WorldModel`.
        controller: C; its ``feature_dim`` must equal the world model's.
        temperature: tau for the memory update step (only matters if the world model's memory
            depends on its own sampled z, which V+M's does not: z is replaced by the next frame).
        seed: seeds the generator for that step.
    """

    def __init__(
        self,
        world_model: WorldModel,
        controller: Controller,
        *,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        if world_model.feature_dim != controller.config.feature_dim:
            raise ValueError(
                f"VMCAgent: world model features have size {world_model.feature_dim}, the "
                f"controller reads {controller.config.feature_dim} (inputs="
                f"{controller.config.inputs!r})"
            )
        self.world_model = world_model
        self.controller = controller.to(world_model.device).eval()
        self.temperature = temperature
        self.generator = torch.Generator(device=world_model.device).manual_seed(seed)

    @torch.inference_mode()
    def predict(
        self,
        obs: np.ndarray,
        state: State | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, State]:
        """Act on frames; returns ``(actions, state)``.

        Args:
            obs: uint8 frames ``(N, H, W, 3)``, or one frame ``(H, W, 3)``.
            state: the state returned by the previous call (``None`` = fresh memory).
            episode_start: ``(N,)`` bool; memory is reset where true.
            deterministic: accepted for SB3 compatibility; C is deterministic.

        Returns:
            Actions ``(N, A)`` float32 (Box) or ``(N,)`` int64 (Discrete) — without the batch
            axis for a single frame — and the new state (a dict of ``(N, ...)`` tensors).
        """
        frames, state, single = predict_inputs(
            self.world_model, obs, state, episode_start, "VMCAgent.predict"
        )
        state = self.world_model.observe(state, frames)
        features = self.world_model.features(state)  # (N, F)
        action = self.controller(features)  # (N, A) or (N,)
        state, _, _ = self.world_model.step(
            state, action, self.temperature, generator=self.generator
        )
        out = action.cpu().numpy()
        out = (
            out.astype(np.int64)
            if self.controller.config.mapping == "discrete"
            else out.astype(np.float32)
        )
        return (out[0] if single else out), state

    # ------------------------------------------------------------------ run directory I/O
    def save(self, run_dir: str | Path) -> None:
        """Write ``vae/``, ``mdnrnn/`` and ``controller/`` under ``run_dir`` (V+M agents only)."""
        if not isinstance(self.world_model, VMWorldModel):
            raise TypeError(
                f"VMCAgent.save: only V+M world models are saved this way, got "
                f"{type(self.world_model).__name__}; save its parts with dreamlab.checkpoint"
            )
        run = Path(run_dir)
        save_model(run / "vae", self.world_model.vae)
        save_model(run / "mdnrnn", self.world_model.mdnrnn)
        save_model(run / "controller", self.controller, kind="controller")

    @classmethod
    def load(
        cls, run_dir: str | Path, *, device: torch.device | str = "cpu", seed: int = 0
    ) -> VMCAgent:
        """Rebuild a V+M+C agent from a run directory (``vae/``, ``mdnrnn/``, ``controller/``).

        The action space and the features C reads come from the controller's config.

        Raises:
            dreamlab.checkpoint.CheckpointError: a part is missing, corrupt or of another kind.
            ValueError: the parts do not fit together.
        """
        run = Path(run_dir)
        vae = load_model(run / "vae", VAE, device=device)
        mdnrnn = load_model(run / "mdnrnn", MDNRNN, device=device)
        controller = load_model(run / "controller", Controller, device=device)
        assert isinstance(vae, VAE) and isinstance(mdnrnn, MDNRNN)
        assert isinstance(controller, Controller)
        world_model = VMWorldModel(
            vae, mdnrnn, action_spec_for(controller.config), features=controller.config.inputs
        )
        return cls(world_model, controller, seed=seed)


_MODEL_CACHE: dict[tuple[str, str, str, float, float], VMWorldModel] = {}
"""Per-process V+M loaded by :class:`VMCAgentFactory` (keyed by paths, device and the
weight files' modification times, so a model trained again is loaded again)."""


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # missing: load_model names the problem
        return 0.0


class VMCAgentFactory:
    """Picklable ``factory(params (D,)) -> VMCAgent`` for real-env CMA-ES backends.

    V and M are loaded from disk once per worker process and shared by every agent it makes;
    each call only builds the tiny controller from the candidate's parameters.

    Args:
        vae_dir: directory of the VAE checkpoint.
        mdnrnn_dir: directory of the MDN-RNN checkpoint.
        controller_config: layout of C (its parameter vector is what CMA-ES searches).
        device: where workers run the models.
    """

    def __init__(
        self,
        vae_dir: str | Path,
        mdnrnn_dir: str | Path,
        controller_config: ControllerConfig,
        device: str = "cpu",
    ) -> None:
        self.vae_dir = str(vae_dir)
        self.mdnrnn_dir = str(mdnrnn_dir)
        self.controller_config = controller_config
        self.device = device

    def world_model(self) -> VMWorldModel:
        """This process's V+M (loaded on first use)."""
        key = (
            self.vae_dir,
            self.mdnrnn_dir,
            self.device,
            _mtime(Path(self.vae_dir) / MODEL_FILE),
            _mtime(Path(self.mdnrnn_dir) / MODEL_FILE),
        )
        wm = _MODEL_CACHE.get(key)
        if wm is None:
            vae = load_model(self.vae_dir, VAE, device=self.device)
            mdnrnn = load_model(self.mdnrnn_dir, MDNRNN, device=self.device)
            assert isinstance(vae, VAE) and isinstance(mdnrnn, MDNRNN)
            wm = VMWorldModel(
                vae,
                mdnrnn,
                action_spec_for(self.controller_config),
                features=self.controller_config.inputs,
            )
            _MODEL_CACHE[key] = wm
        return wm

    def __call__(self, params: Any) -> VMCAgent:
        controller = Controller(self.controller_config)
        controller.set_flat_params(np.asarray(params, dtype=np.float32))
        return VMCAgent(self.world_model(), controller)
