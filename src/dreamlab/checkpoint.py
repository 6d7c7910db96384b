"""Checkpoints as JSON config + safetensors weights: loading a stranger's file never runs code.

A model directory holds::

    DIR/config.json            {"kind": "vae", "config": {...}, "dreamlab_version": "0.1.0"}
    DIR/model.safetensors      the state_dict
    DIR/optimizer.safetensors  optimizer state flattened to tensors (+ JSON in the header), for resume

Models are found by *kind* in :data:`MODEL_KINDS` (``kind -> (ConfigClass, ModelClass)``); a
model class must take its config dataclass as its only constructor argument and keep it in
``self.config``. New model families call :func:`register_model`.

Every file is written atomically, alone or, given a :class:`~dreamlab.io.Commit`, together with
the other files of one checkpoint; a file's safetensors header may carry the training ``step``.
Every read first finishes a checkpoint that a kill left half-moved (:func:`dreamlab.io.settle`),
and weights are checked for NaN and infinity as they load.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from dreamlab import __version__
from dreamlab.io import (
    Commit,
    DreamlabError,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    settle,
)
from dreamlab.models.actor_critic import ActorCritic, ActorCriticConfig
from dreamlab.models.bc import BCConfig, BCNet
from dreamlab.models.controller import Controller, ControllerConfig
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.models.rssm import RSSM, RSSMConfig
from dreamlab.models.vae import VAE, VAEConfig
from dreamlab.typed import ConfigTypeError, dataclass_from_json

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "MODEL_KINDS",
    "OPTIMIZER_FILE",
    "CheckpointError",
    "IncompatibleModelError",
    "check_finite",
    "check_latents_compatible",
    "check_vae_frames_compatible",
    "config_from_dict",
    "has_model",
    "kind_of",
    "kind_of_class",
    "load_model",
    "load_optimizer",
    "load_weights",
    "optimizer_step",
    "read_config",
    "register_model",
    "save_model",
    "save_optimizer",
    "weights_step",
    "write_safetensors",
]

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"

ModelEntry = tuple[type, type[nn.Module]]

MODEL_KINDS: dict[str, ModelEntry] = {
    "vae": (VAEConfig, VAE),
    "mdnrnn": (MDNRNNConfig, MDNRNN),
    "controller": (ControllerConfig, Controller),
    "bc": (BCConfig, BCNet),
    "rssm": (RSSMConfig, RSSM),
    "actor_critic": (ActorCriticConfig, ActorCritic),
}
"""kind name -> (config dataclass, model class); extended by :func:`register_model`."""


class CheckpointError(DreamlabError, ValueError):
    """A checkpoint directory is missing, corrupt or does not match what the caller expects."""


class IncompatibleModelError(DreamlabError, ValueError):
    """Two artefacts that must fit together (model and data, V and M) do not."""


def register_model(kind: str, config_cls: type, model_cls: type[nn.Module]) -> None:
    """Make ``kind`` loadable by :func:`load_model`.

    Raises:
        ValueError: when ``kind`` is already registered to different classes.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise ValueError(f"register_model({kind!r}): config class {config_cls} is not a dataclass")
    existing = MODEL_KINDS.get(kind)
    if existing is not None and existing != (config_cls, model_cls):
        raise ValueError(f"register_model: kind {kind!r} is already registered to {existing[1]}")
    MODEL_KINDS[kind] = (config_cls, model_cls)


def kind_of(model: nn.Module, kinds: Mapping[str, ModelEntry] = MODEL_KINDS) -> str:
    """The registered kind of ``model``'s class.

    Raises:
        CheckpointError: when the class is not registered.
    """
    for kind, (_, model_cls) in kinds.items():
        if type(model) is model_cls:
            return kind
    raise CheckpointError(
        f"model class {type(model).__name__} is not registered in MODEL_KINDS "
        "(call dreamlab.checkpoint.register_model)"
    )


def config_from_dict(
    config_cls: type,
    data: Mapping[str, Any],
    source: str = "config",
    *,
    complete: bool | None = None,
) -> Any:
    """Rebuild a config dataclass (nested ones included) from its ``asdict`` JSON form, every
    value's type checked against its field (:func:`dreamlab.typed.dataclass_from_json`).

    Fields missing from ``data`` take their defaults (files from older versions keep loading),
    unless ``complete`` (default: ``data`` is a :class:`~dreamlab.typed.FullRecord`, a run
    config that lost keys since it was written).

    Raises:
        CheckpointError: naming ``source`` and the field: unknown or missing fields, a value of
            the wrong type, or one the config rejects.
    """
    try:
        return dataclass_from_json(config_cls, data, source, complete=complete)
    except ConfigTypeError as e:
        raise CheckpointError(str(e)) from None


def write_safetensors(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    commit: Commit | None = None,
) -> None:
    """Write ``tensors`` as a safetensors file at ``path``: atomically, or staged in ``commit``.

    The bytes are built in memory and written by dreamlab (safetensors' own ``save_file`` leaves
    a stray temporary file when killed and makes the file mode 0600 whatever the umask).
    """
    data = safetensors_bytes(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata=dict(metadata) if metadata is not None else None,
    )
    if commit is not None:
        commit.write_bytes(path, data)
    else:
        atomic_write_bytes(path, data)


def save_model(
    directory: str | Path,
    model: nn.Module,
    config: Any | None = None,
    kind: str | None = None,
    *,
    step: int | None = None,
    commit: Commit | None = None,
) -> None:
    """Write ``DIR/config.json`` and ``DIR/model.safetensors`` atomically.

    Args:
        directory: model directory (created if needed).
        model: the module whose ``state_dict`` is saved.
        config: its config dataclass; defaults to ``model.config``.
        kind: registry kind; defaults to the kind registered for ``type(model)``.
        step: training step stored in the weights' header (used by resume).
        commit: stage both files in this unit of :func:`dreamlab.io.commit_files` (a checkpoint
            of several files) instead of writing them at once.
    """
    directory = Path(directory)
    config = config if config is not None else model.config
    kind = kind or kind_of(model)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise CheckpointError(
            f"save_model: config must be a dataclass instance, got {type(config).__name__}"
        )
    metadata = {"kind": kind}
    if step is not None:
        metadata["step"] = str(step)
    write_safetensors(directory / MODEL_FILE, model.state_dict(), metadata, commit)
    record = {"kind": kind, "config": dataclasses.asdict(config), "dreamlab_version": __version__}
    if commit is not None:
        commit.write_json(directory / CONFIG_FILE, record)
    else:
        atomic_write_json(directory / CONFIG_FILE, record)


def has_model(directory: str | Path) -> bool:
    """Whether ``directory`` holds both a config and weights."""
    directory = Path(directory)
    settle(directory)
    return (directory / CONFIG_FILE).is_file() and (directory / MODEL_FILE).is_file()


def read_config(
    directory: str | Path, kinds: Mapping[str, ModelEntry] = MODEL_KINDS
) -> tuple[str, Any]:
    """Read ``DIR/config.json`` into ``(kind, config dataclass)``.

    Raises:
        CheckpointError: missing/corrupt file or an unregistered kind.
    """
    path = Path(directory) / CONFIG_FILE
    settle(directory)
    try:
        data = read_json(path, what="model config")
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(data, dict) or "kind" not in data or "config" not in data:
        raise CheckpointError(f"{path}: expected a JSON object with keys 'kind' and 'config'")
    kind = data["kind"]
    if kind not in kinds:
        raise CheckpointError(f"{path}: unknown model kind {kind!r}; known kinds {sorted(kinds)}")
    return kind, config_from_dict(kinds[kind][0], data["config"], source=str(path))


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    settle(path.parent)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt {what} ({e})") from None


def _read_metadata(path: Path, what: str) -> dict[str, str]:
    settle(path.parent)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt {what} ({e})") from None


def weights_step(directory: str | Path) -> int | None:
    """The training step recorded in ``DIR/model.safetensors``'s header, if any."""
    step = _read_metadata(Path(directory) / MODEL_FILE, "model weights").get("step")
    return int(step) if step is not None else None


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load ``DIR/model.safetensors`` into ``model``, checking every name and shape first.

    Raises:
        CheckpointError: missing/corrupt file, missing or unexpected tensors, a tensor whose
            shape differs from the model's (named, with both shapes), or a tensor holding NaN or
            infinity.
    """
    path = Path(directory) / MODEL_FILE
    state = _read_safetensors(path, "model weights")
    check_finite(state, path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match {type(model).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {tuple(state[name].shape)} but the config "
                f"builds {tuple(tensor.shape)}"
            )
    model.load_state_dict(state)


def check_finite(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming ``path`` and the tensor when a float tensor holds
    NaN or infinity (weights of a diverged training, or flipped bytes)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {bad} NaN or infinite values of {tensor.numel()}; "
                "these weights are unusable (a diverged training or a damaged file): train again "
                "or restore the file"
            )


def load_model(
    directory: str | Path,
    kinds: Mapping[str, ModelEntry] | type[nn.Module] = MODEL_KINDS,
    *,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build a model from ``DIR/config.json`` and load ``DIR/model.safetensors`` into it.

    Args:
        directory: model directory written by :func:`save_model`.
        kinds: a registry (``kind -> (ConfigClass, ModelClass)``), or one model class: then the
            file's kind must be the kind registered for that class.
        device: where to put the model.

    Returns:
        The model, in eval mode.

    Raises:
        CheckpointError: missing/corrupt files, a kind mismatch, or weights that do not match
            the config.
    """
    directory = Path(directory)
    if isinstance(kinds, type):
        expected_kind = kind_of_class(kinds)
        file_kind, _ = read_config(directory, MODEL_KINDS)
        if file_kind != expected_kind:
            raise CheckpointError(
                f"{directory / CONFIG_FILE}: holds a {file_kind!r} model, expected {expected_kind!r} "
                f"({kinds.__name__})"
            )
        kinds = {expected_kind: MODEL_KINDS[expected_kind]}
    kind, config = read_config(directory, kinds)
    model = kinds[kind][1](config)
    load_weights(model, directory)
    return model.to(device).eval()


def kind_of_class(model_cls: type[nn.Module]) -> str:
    """The kind registered for ``model_cls``."""
    for kind, (_, cls) in MODEL_KINDS.items():
        if cls is model_cls:
            return kind
    raise CheckpointError(f"model class {model_cls.__name__} is not registered in MODEL_KINDS")


def save_optimizer(
    directory: str | Path,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    extra: Mapping[str, torch.Tensor] | None = None,
    commit: Commit | None = None,
) -> None:
    """Write the optimizer state (and extra tensors, e.g. RNG states) to ``optimizer.safetensors``
    (staged in ``commit`` when given, see :func:`save_model`).

    Tensors of ``state_dict()["state"]`` become ``state.{param}.{name}``; numbers and
    ``param_groups`` go to JSON in the safetensors header. No pickle is involved.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in sd["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    for name, value in (extra or {}).items():
        tensors[f"extra.{name}"] = value.detach().cpu().contiguous()
    metadata = {
        "step": str(step),
        "optimizer": type(optimizer).__name__,
        "param_groups": json.dumps(sd["param_groups"]),
        "scalars": json.dumps(scalars),
    }
    write_safetensors(Path(directory) / OPTIMIZER_FILE, tensors, metadata, commit)


def load_optimizer(
    directory: str | Path, optimizer: torch.optim.Optimizer
) -> tuple[int, dict[str, torch.Tensor]]:
    """Restore ``optimizer`` from ``DIR/optimizer.safetensors``.

    Returns:
        ``(step, extra tensors)`` as saved by :func:`save_optimizer`.

    Raises:
        CheckpointError: missing/corrupt file or a state that does not fit ``optimizer``.
    """
    path = Path(directory) / OPTIMIZER_FILE
    meta = _read_metadata(path, "optimizer state")
    tensors = _read_safetensors(path, "optimizer state")
    try:
        step = int(meta["step"])
        param_groups = json.loads(meta["param_groups"])
        scalars = json.loads(meta["scalars"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: header is missing or has a bad field ({e})") from None
    if meta.get("optimizer") != type(optimizer).__name__:
        raise CheckpointError(
            f"{path}: saved by a {meta.get('optimizer')} optimizer, cannot load into "
            f"{type(optimizer).__name__}"
        )
    state: dict[int, dict[str, Any]] = {}
    extra: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        section, _, rest = key.partition(".")
        if section == "extra":
            extra[rest] = value
        elif section == "state":
            param_id, _, name = rest.partition(".")
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in scalars.items():
        state.setdefault(int(param_id), {}).update(values)
    current = optimizer.state_dict()["param_groups"]
    saved_sizes = [len(g["params"]) for g in param_groups]
    current_sizes = [len(g["params"]) for g in current]
    if saved_sizes != current_sizes:
        raise CheckpointError(
            f"{path}: parameter groups of sizes {saved_sizes} do not match the model's "
            f"{current_sizes}"
        )
    try:
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit the model ({e})") from None
    return step, extra


def optimizer_step(directory: str | Path) -> int | None:
    """The step recorded in ``DIR/optimizer.safetensors``'s header, or ``None`` if absent."""
    path = Path(directory) / OPTIMIZER_FILE
    settle(directory)
    if not path.is_file():
        return None
    step = _read_metadata(path, "optimizer state").get("step")
    return int(step) if step is not None else None


def check_vae_frames_compatible(
    vae_config: VAEConfig, frame_shape: tuple[int, ...], *, vae_source: str, data_source: str
) -> None:
    """Raise unless frames of ``frame_shape`` ``(H, W, 3)`` fit a VAE with ``vae_config``.

    Raises:
        IncompatibleModelError: naming both sides and their sizes.
    """
    size = vae_config.frame_size
    if tuple(frame_shape) != (size, size, 3):
        raise IncompatibleModelError(
            f"VAE {vae_source} expects frames of shape ({size}, {size}, 3) but {data_source} "
            f"holds frames of shape {tuple(frame_shape)}"
        )


def check_latents_compatible(
    mdn_config: MDNRNNConfig,
    z_dim: int,
    action_dim: int | None = None,
    *,
    model_source: str,
    data_source: str,
) -> None:
    """Raise unless latents of size ``z_dim`` (and actions of ``action_dim``) fit the MDN-RNN.

    Raises:
        IncompatibleModelError: naming both sides and their sizes.
    """
    if mdn_config.z_dim != z_dim:
        raise IncompatibleModelError(
            f"MDN-RNN {model_source} has z_dim {mdn_config.z_dim} but {data_source} holds "
            f"latents of size {z_dim}"
        )
    if action_dim is not None and mdn_config.action_dim != action_dim:
        raise IncompatibleModelError(
            f"MDN-RNN {model_source} has action_dim {mdn_config.action_dim} but {data_source} "
            f"has actions of size {action_dim}"
        )
