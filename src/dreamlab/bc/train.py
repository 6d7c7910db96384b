"""Train a behavioral-cloning policy on demonstrations with the one gradient loop (``fit``).

``train_bc(demos, out_dir, net_config, train_config)`` for pixels;
``train_bc(demos, out_dir, net_config, train_config, world_model=wm)`` for features. The output
directory is a normal model directory (``config.json``, ``model.safetensors``, optimizer state,
``metrics.jsonl``; resumable) plus ``bc.json``, which records what the policy was trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from gymnasium import spaces

from dreamlab.bc.data import feature_batches, feature_dataset, pixel_batches
from dreamlab.bc.policy import read_source, write_source
from dreamlab.data.schema import space_from_description
from dreamlab.data.store import EpisodeStore
from dreamlab.io import read_json
from dreamlab.models.bc import BCConfig, BCNet
from dreamlab.train.fit import FitResult, TrainConfig, fit
from dreamlab.worldmodel import WorldModel

__all__ = ["bc_config_for", "train_bc"]


def bc_config_for(
    demos: EpisodeStore,
    inputs: Literal["pixels", "features"],
    *,
    frame_stack: int = 3,
    feature_dim: int = 0,
    hidden: tuple[int, ...] = (256,),
    channels: tuple[int, ...] = (16, 32, 64, 64),
) -> BCConfig:
    """A :class:`BCConfig` that fits the demonstrations' frames and action space."""
    space = space_from_description(demos.meta.action_space)
    shape = demos.meta.obs_shape
    if shape is None or len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
        raise ValueError(
            f"{demos.path}: demonstrations hold observations of shape {shape}; expected square "
            "(S, S, 3) frames"
        )
    if isinstance(space, spaces.Discrete):
        action: dict[str, Any] = {"action_kind": "discrete", "action_dim": int(space.n)}
    elif isinstance(space, spaces.Box) and len(space.shape) == 1 and space.is_bounded("both"):
        action = {
            "action_kind": "continuous",
            "action_dim": int(space.shape[0]),
            "action_low": tuple(float(v) for v in space.low),
            "action_high": tuple(float(v) for v in space.high),
        }
    else:
        raise ValueError(
            f"{demos.path}: action space {space}; BC needs a Discrete or a bounded 1-D Box"
        )
    return BCConfig(
        inputs=inputs,
        frame_size=int(shape[0]),
        frame_stack=frame_stack,
        channels=channels,
        feature_dim=feature_dim,
        hidden=hidden,
        **action,
    )


def _finished(out_dir: Path, total_steps: int) -> bool:
    """Whether ``out_dir`` holds a training that already reached ``total_steps``."""
    path = out_dir / "trainer.json"
    if not path.exists():
        return False
    try:
        return int(read_json(path, "trainer state")["step"]) >= total_steps
    except (ValueError, KeyError, TypeError):
        return False  # fit itself reports a corrupt trainer state


def _no_batches(start_step: int) -> Iterator[dict[str, Any]]:
    raise RuntimeError(f"train_bc: asked for batches at step {start_step} of a finished training")


def train_bc(
    demos: EpisodeStore,
    out_dir: str | Path,
    net_config: BCConfig,
    train_config: TrainConfig,
    *,
    world_model: WorldModel | None = None,
    source: dict[str, Any] | None = None,
    seed: int = 0,
) -> FitResult:
    """Fit a BC network to ``demos`` and save it (with ``bc.json``) into ``out_dir``.

    Args:
        demos: episodes of the demonstrator (``obs``, ``action``).
        out_dir: model directory; an unfinished training there is resumed.
        net_config: the network (see :func:`bc_config_for`).
        train_config: the loop; ``epochs`` count passes over the demonstration steps.
        world_model: for ``inputs='features'``: computes the features (its ``feature_dim`` must
            equal ``net_config.feature_dim``).
        source: extra facts for ``bc.json`` (e.g. ``world_model_run`` for a features policy).
        seed: seeds the initialisation and the batch stream.

    Raises:
        ValueError: the config does not fit the demonstrations or the world model.
    """
    out_dir = Path(out_dir)
    total = train_config.resolve_steps(demos.num_steps)
    if _finished(out_dir, total):
        batches: Any = _no_batches  # fit returns at once; skip computing features
    elif net_config.inputs == "features":
        if world_model is None:
            raise ValueError("train_bc: inputs='features' needs the world model that computes them")
        if world_model.feature_dim != net_config.feature_dim:
            raise ValueError(
                f"train_bc: BCConfig.feature_dim={net_config.feature_dim} but the world model "
                f"gives {world_model.feature_dim} features"
            )
        features, actions = feature_dataset(demos, world_model)
        batches = feature_batches(features, actions, train_config.batch_size, seed=seed)
    else:
        batches = pixel_batches(demos, net_config.frame_stack, train_config.batch_size, seed=seed)
    torch.manual_seed(seed)
    net = BCNet(net_config)
    result = fit(net, batches, train_config, out_dir, total_steps=total, stage="bc")
    facts = {
        **read_source(out_dir),
        "demos": str(demos.path),
        "demo_episodes": len(demos),
        "demo_steps": demos.num_steps,
        "demo_policy": demos.meta.extra.get("collect", {}).get("policy", "unknown"),
        "action_space": demos.meta.action_space,
        **(source or {}),
    }
    write_source(out_dir, facts)
    return result
