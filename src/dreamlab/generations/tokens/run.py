"""A token run directory: its config, the store it trained on, and loading what it trained.

``RUN/`` holds ``config.json`` (``{"kind": "tokens", "config": TokenRunConfig}``),
``action_spec.json``, ``data.json`` (the episode store's path; ``data/`` when it collected its
own), ``tokenizer/``, ``transformer/``, ``agent/`` (checkpoints), ``eval.json``, ``summary.md``
and ``report.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dreamlab.checkpoint import config_from_dict, has_model, load_model
from dreamlab.generations.tokens.agent import TokenAgent
from dreamlab.generations.tokens.config import KIND, TokenRunConfig
from dreamlab.generations.tokens.worldmodel import TokenWorldModel
from dreamlab.io import atomic_write_json, read_json
from dreamlab.models.actor_critic import ActorCritic
from dreamlab.models.tokens import TokenTransformer
from dreamlab.models.vq import VQTokenizer
from dreamlab.rundir import (
    RunError,
    check_same_settings,
    read_run_config_of,
    write_run_config,
)
from dreamlab.worldmodel import ActionSpec

__all__ = [
    "KIND",
    "TokenRun",
    "load_token_run",
    "read_token_config",
    "run_store",
    "start_run",
    "write_data_files",
]

FREE_SETTINGS = ("device", "num_threads")
"""settings a resumed run may change"""


@dataclass
class TokenRun:
    """A trained token run: world model, agent, start banks."""

    path: Path
    """the run directory"""
    config: TokenRunConfig
    """what it was trained with"""
    world_model: TokenWorldModel
    """tokenizer + transformer behind the WorldModel protocol"""
    agent: TokenAgent | None
    """the actor trained in the dream (None before that stage)"""
    bank: dict[str, torch.Tensor]
    """dream start bank ``{"tokens": (N, n_tokens)}`` (every frame of the data, at most 4096)"""
    seconds: float
    """wall seconds of training, all stages and sessions"""


def read_token_config(path: str | Path) -> TokenRunConfig | None:
    """The config of the token run at ``path``; ``None`` when there is no run there yet.

    Raises:
        RunError: ``path`` holds a run of another generation.
    """
    config = read_run_config_of(path, KIND, "token")
    if config is None:
        return None
    return config_from_dict(TokenRunConfig, config, str(Path(path) / "config.json"))


def start_run(out: Path, cfg: TokenRunConfig, env_from_data: bool = False) -> TokenRunConfig:
    """Create the run at ``out`` with ``cfg``, or check that the run there has the same settings
    (device and threads may change); returns ``cfg``.

    Raises:
        RunError: ``out`` holds another generation's run, or one started with other settings.
    """
    saved = read_token_config(out)
    if saved is not None:
        # with --data the env is the store's (a run recorded before it was keeps its own)
        free = (*FREE_SETTINGS, "env", "env_kwargs") if env_from_data else FREE_SETTINGS
        check_same_settings(out, asdict(saved), asdict(cfg), free=free, flag="--run")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, KIND, asdict(cfg))
    return cfg


def write_data_files(out: Path, store: Any, spec: ActionSpec) -> None:
    """Record the env's action spec and the episode store's path in the run."""
    atomic_write_json(out / "action_spec.json", spec.to_dict())
    atomic_write_json(out / "data.json", {"store": str(Path(store.path).resolve())})


def run_store(path: Path) -> Path | None:
    """The episode store the run at ``path`` trained on (``None``: not recorded yet).

    Raises:
        RunError: the store is recorded but gone.
    """
    file = path / "data.json"
    if not file.exists():
        return None
    data = Path(read_json(file, "token run data")["store"])
    if not (data / "store.json").exists():
        raise RunError(f"{path}: the episode store {data} it trained on is gone")
    return data


def load_token_run(
    path: str | Path, device: str = "cpu"
) -> tuple[TokenRunConfig, TokenWorldModel, TokenAgent | None]:
    """The world model (and agent, once trained) of a finished token run.

    Raises:
        RunError: no token run at ``path``, or its world model is not trained yet.
    """
    path = Path(path)
    cfg = read_token_config(path)
    if cfg is None:
        raise RunError(
            f"{path}: no run here; this command needs a token run (dreamlab train-tokens)"
        )
    for stage in ("tokenizer", "transformer"):
        if not has_model(path / stage):
            raise RunError(f"{path}: the {stage} is not trained yet; run train-tokens first")
    vq = load_model(path / "tokenizer", VQTokenizer, device=device)
    tf = load_model(path / "transformer", TokenTransformer, device=device)
    assert isinstance(vq, VQTokenizer) and isinstance(tf, TokenTransformer)
    spec = ActionSpec(**read_json(path / "action_spec.json", "action spec"))
    wm = TokenWorldModel(vq, tf, spec)
    agent = None
    if has_model(path / "agent"):
        ac = load_model(path / "agent", ActorCritic, device=device)
        assert isinstance(ac, ActorCritic)
        agent = TokenAgent(wm, ac, seed=cfg.seed)
    return cfg, wm, agent
