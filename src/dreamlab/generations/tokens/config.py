"""The settings of one token run (``RUN/config.json``'s ``config``) and its presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from dreamlab.generations.own import StoreFacts
from dreamlab.models.vq import VQConfig, vq_preset
from dreamlab.rundir import RunError

__all__ = ["KIND", "PRESETS", "TokenRunConfig", "own_config", "token_preset", "tokenizer_config"]

KIND = "tokens"
"""what ``RUN/config.json`` records for a token run"""

PRESETS = ("tiny", "iris")
"""the preset names :func:`token_preset` accepts"""


@dataclass
class TokenRunConfig:
    """Everything one token run trains with (stored in ``DIR/config.json``)."""

    preset: str = "tiny"
    """model sizes: tiny (CPU, 32x32) or iris (IRIS's sizes, a GPU)"""
    env: str = "catch-32"
    """env preset the episodes come from (and the agent is evaluated in)"""
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"discrete": True})
    """keyword arguments of the env"""
    prompts: bool = True
    """learn scenario prompts (Catch only: words derived from the frames)"""
    frame_size: int | None = None
    """side of the frames (None: the preset's, 32 for tiny); the tokenizer keeps the preset's
    token grid by one more stride-2 stage per doubling"""
    vq_steps: int = 500
    """tokenizer optimizer steps"""
    vq_batch: int = 64
    """frames per tokenizer step"""
    vq_lr: float = 2e-3
    """tokenizer learning rate"""
    transformer_steps: int = 4800
    """transformer optimizer steps (1600 left the dream too blurry to act in: the agent
    caught 0.60-0.80 of the balls in reality; 4800, 0.92; docs/tokens.md)"""
    transformer_batch: int = 24
    """windows per transformer step"""
    transformer_lr: float = 1e-3
    """transformer learning rate"""
    agent_updates: int = 800
    """actor-critic updates in imagination (on catch-32 the catch rate climbs with them: 0.20
    after 60, 0.62 after 200, 0.80 after 800 on a 1600-step transformer; docs/tokens.md)"""
    agent_starts: int = 64
    """imagined rollouts per update (start frames drawn from the data)"""
    horizon: int = 10
    """imagined steps per rollout"""
    action_bins: int = 9
    """bins of a 1-D Box action (discrete actions are used as they are)"""
    eval_episodes: int = 50
    """real-env episodes of the final evaluation"""
    checkpoint_every: int = 100
    """optimizer steps (agent: updates) between checkpoints"""
    seed: int = 0
    """seed of everything"""
    device: str = "cpu"
    """torch device"""
    num_threads: int = 1
    """torch CPU threads (0 keeps torch's default)"""

    def scaled(self, scale: float) -> TokenRunConfig:
        """A copy with every training budget multiplied by ``scale`` (at least 2 steps each)."""

        def s(n: int) -> int:
            return max(2, round(n * scale))

        return dataclasses.replace(
            self,
            vq_steps=s(self.vq_steps),
            transformer_steps=s(self.transformer_steps),
            agent_updates=s(self.agent_updates),
            eval_episodes=max(2, round(self.eval_episodes * min(1.0, scale * 5))),
        )


def token_preset(name: str) -> TokenRunConfig:
    """``tiny`` (CPU budget, ~32 CPU-minutes on catch-32), ``iris`` (IRIS's sizes on 64x64 Catch, a GPU)."""
    if name == "tiny":
        return TokenRunConfig()
    if name == "iris":
        return TokenRunConfig(
            preset="iris",
            env="catch",
            vq_steps=20_000,
            transformer_steps=50_000,
            agent_updates=2000,
            agent_starts=512,
            horizon=20,
            device="cuda",
            num_threads=0,
        )
    raise ValueError(f"unknown token preset {name!r}; known: {', '.join(PRESETS)}")


def tokenizer_config(cfg: TokenRunConfig) -> VQConfig:
    """The tokenizer of ``cfg``: its preset's, for frames of ``cfg.frame_size`` (one more
    stride-2 stage per doubling of the preset's frame size, so the token grid stays the same).

    Raises:
        RunError: a frame size the grid does not divide.
    """
    vcfg = vq_preset(cfg.preset)
    size = cfg.frame_size
    if size is None or size == vcfg.frame_size:
        return vcfg
    downsample = max(1, vcfg.downsample + round(math.log2(size / vcfg.frame_size)))
    if size % 2**downsample:
        raise RunError(
            f"frames of {size}x{size}: the {cfg.preset!r} tokenizer needs a side divisible by "
            f"{2**downsample} (e.g. {vcfg.frame_size} or {vcfg.frame_size * 2}); resize the frames"
        )
    return dataclasses.replace(vcfg, frame_size=size, downsample=downsample)


def own_config(
    facts: StoreFacts, env: str, env_kwargs: dict[str, Any], seed: int, scale: float = 1.0
) -> TokenRunConfig:
    """A token run sized from a store's :class:`~dreamlab.generations.own.StoreFacts`: the
    tokenizer for its frame size, no prompts (they are Catch's words), imagined rollouts of at
    most 15 steps and no longer than a dream may last; every budget times ``scale``."""
    cfg = dataclasses.replace(
        TokenRunConfig(),
        preset="tiny",
        env=env,
        env_kwargs=dict(env_kwargs),
        prompts=False,
        frame_size=facts.frame_size,
        horizon=min(15, facts.dream_steps),
        seed=seed,
    )
    tokenizer_config(cfg)  # a frame size it cannot read is one error before anything is written
    return cfg.scaled(scale) if scale != 1.0 else cfg
