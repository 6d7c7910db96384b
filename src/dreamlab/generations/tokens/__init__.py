"""Generation 4 (docs/tokens.md): a VQ tokenizer and a causal transformer over frame tokens
(IRIS / GAIA-1), scenario prompts with classifier-free guidance, an actor-critic in its dream.

========================  ====================================================================
module                    what
========================  ====================================================================
``config``                :class:`TokenRunConfig`, presets ``tiny`` and ``iris``
``worldmodel``            ``TokenWorldModel`` (KV cache, prompts) and its start banks
``data``                  the episode store, tokenized into training windows
``agent``                 ``TokenAgent`` and its training in the dream (shared actor-critic)
``run``                   the run directory: config, store, loading a trained run
``train``                 ``train-tokens``: the stages, resumable; ``dreamlab pipeline``
``probe``                 open-loop fidelity, imagination speed, prompt agreement
``evaluate``              ``eval.json``, ``summary.md``, ``report.md``
``dream``                 ``dreamlab dream`` of a token run
``contender``             ``compare-models`` builder
========================  ====================================================================

The callables of :data:`GENERATION` import the heavy modules when called.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from dreamlab.generations import Generation, lazy, one_trained_agent
from dreamlab.generations.tokens.config import KIND, TokenRunConfig, token_preset

__all__ = ["GENERATION"]


PIPELINE_PRESETS = {"catch-tokens": "tiny", "catch-tokens-iris": "iris"}
"""``dreamlab pipeline --preset`` names -> :func:`token_preset`'s model sizes (the registry's
preset names are unique across generations; ``train-tokens --preset`` takes the short ones)"""


def _pipeline(run: Path, preset: str | None, cfg: Any) -> Path:
    from dreamlab.generations.tokens.train import run_pipeline

    return run_pipeline(Path(run), PIPELINE_PRESETS.get(preset or "", preset), cfg)


def _load_world_model(run: Path, device: str) -> Any:
    from dreamlab.generations.tokens.run import load_token_run

    return load_token_run(run, device)[1]


def _episodes(run: Path) -> Path:
    """The store a token run records (``RUN/data.json``: its ``--data``), else ``RUN/data``."""
    from dreamlab.generations.tokens.run import run_store

    return run_store(run) or Path(run) / "data"


def _load_agent(run: Path, device: str) -> Any:
    from dreamlab.generations.tokens.run import load_token_run
    from dreamlab.rundir import RunError

    agent = load_token_run(run, device)[2]
    if agent is None:
        raise RunError(f"{run}: the agent is not trained yet; run train-tokens first")
    return agent


GENERATION = Generation(
    kind=KIND,
    number=4,
    title="VQ tokens + causal transformer (IRIS / GAIA-1), prompts, actor-critic in the dream",
    config_class=TokenRunConfig,
    presets={name: partial(token_preset, size) for name, size in PIPELINE_PRESETS.items()},
    model_kinds=("vq", "token_transformer", "actor_critic"),
    stages=("collect", "tokenizer", "transformer", "agent", "evaluate", "report"),
    train_command="train-tokens",
    pipeline=_pipeline,
    load_world_model=_load_world_model,
    load_agent=one_trained_agent(KIND, _load_agent),
    episodes=_episodes,
    evaluate=lazy("dreamlab.generations.tokens.evaluate:evaluate_tokens"),
    dream=lazy("dreamlab.generations.tokens.dream:dream_tokens"),
    report=lazy("dreamlab.generations.tokens.evaluate:write_report"),
    build_contender=lazy("dreamlab.generations.tokens.contender:build_contender"),
    contender_name="tokens",
)
