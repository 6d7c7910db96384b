"""The token run's data: its episode store, and the store tokenized into training windows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.envs.scenarios import scenario_masks
from dreamlab.generations.tokens.config import TokenRunConfig
from dreamlab.generations.tokens.worldmodel import action_tokens
from dreamlab.models import frames_to_tensor
from dreamlab.models.vq import VQTokenizer
from dreamlab.worldmodel import ActionSpec

__all__ = ["TokenData", "open_store", "tokenize_store", "window_batches"]


def open_store(
    cfg: TokenRunConfig, data: Path | None, out: Path, collect_episodes: int, progress: bool
) -> Any:
    """The episode store ``data``, or ``out/data`` filled (resumably) with ``collect_episodes``
    random-policy episodes of ``cfg.env``."""
    from dreamlab.data.collect import CollectConfig, collect
    from dreamlab.data.store import EpisodeStore

    if data is not None:
        return EpisodeStore.open(data)
    path = out / "data"
    collect(
        CollectConfig(
            env=cfg.env,
            out=path,
            episodes=collect_episodes,
            policy="random",
            seed=cfg.seed,
            workers=1,
            env_kwargs=dict(cfg.env_kwargs),
            progress=progress,
        )
    )
    return EpisodeStore.open(path)


@dataclass
class TokenData:
    """Tokenized episodes in memory."""

    tokens: list[np.ndarray]
    """per episode ``(T+1, N)`` int64"""
    actions: list[np.ndarray]
    """per episode ``(T,)`` action ids"""
    rewards: list[np.ndarray]
    """per episode ``(T,)`` float32"""
    terminated: list[np.ndarray]
    """per episode ``(T,)`` bool"""
    prompts: list[np.ndarray]
    """per episode ``(T+1,)`` int64 prompt bit masks (zeros without prompts)"""


@torch.no_grad()
def tokenize_store(
    tokenizer: VQTokenizer, store: Any, spec: ActionSpec, bins: int, prompts: bool
) -> TokenData:
    """Tokenize every episode of ``store`` (and derive its prompt labels from the pixels)."""
    data = TokenData([], [], [], [], [])
    dev = next(tokenizer.parameters()).device
    for i in store.indices:
        ep = store.episode(i)
        obs = np.asarray(ep["obs"])
        toks = [
            tokenizer.tokenize(frames_to_tensor(obs[j : j + 256], dev))
            for j in range(0, len(obs), 256)
        ]
        data.tokens.append(torch.cat(toks).cpu().numpy())
        data.actions.append(action_tokens(np.asarray(ep["action"]), spec, bins).numpy())
        data.rewards.append(np.asarray(ep["reward"], np.float32))
        data.terminated.append(np.asarray(ep["terminated"], bool))
        data.prompts.append(scenario_masks(obs) if prompts else np.zeros(len(obs), np.int64))
    return data


def window_batches(
    data: TokenData, steps: int, batch_size: int, seed: int = 0, end_fraction: float = 0.1
) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
    """Resumable stream of windows of ``steps`` blocks (``steps - 1`` transitions).

    Batch ``s`` comes from a generator seeded with ``(seed, s)``; a fraction ``end_fraction`` of
    windows end at the episode's last frame so that terminations are seen often.
    """
    lengths = np.array([len(a) for a in data.actions])
    ok = np.nonzero(lengths >= steps - 1)[0]
    if len(ok) == 0:
        raise ValueError(f"no episode has the {steps - 1} steps a training window needs")
    weight = (lengths[ok] - steps + 2).astype(np.float64)
    weight /= weight.sum()

    def stream(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            rng = np.random.default_rng([seed, step])
            eps = ok[rng.choice(len(ok), batch_size, p=weight)]
            out: dict[str, list[np.ndarray]] = {
                k: [] for k in ("tokens", "action", "reward", "terminated", "prompt")
            }
            for e in eps:
                last = lengths[e] - (steps - 1)
                s = last if rng.random() < end_fraction else int(rng.integers(0, last + 1))
                out["tokens"].append(data.tokens[e][s : s + steps])
                out["prompt"].append(data.prompts[e][s : s + steps])
                out["action"].append(data.actions[e][s : s + steps - 1])
                out["reward"].append(data.rewards[e][s : s + steps - 1])
                out["terminated"].append(data.terminated[e][s : s + steps - 1])
            step += 1
            yield {k: np.stack(v) for k, v in out.items()}

    return stream
