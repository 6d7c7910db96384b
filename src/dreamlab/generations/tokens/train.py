"""Generation four: train the token world model and an agent inside its dream, resumably.

``dreamlab train-tokens --data STORE --run DIR`` (or ``--env catch-32 --collect-episodes N``)
runs its stages in ``DIR``, each resuming from its own checkpoint (wall time per stage in
``DIR/timings.json``):

0. ``collect``: without ``--data``, random-policy episodes into ``DIR/data``;
1. ``tokenizer/``: the VQ tokenizer on single frames (:mod:`dreamlab.models.vq`);
2. ``transformer/``: the causal transformer on windows of tokenized episodes, with scenario
   prompts derived from the pixels (Catch: :mod:`dreamlab.envs.scenarios`);
3. ``agent/``: an actor-critic trained only on imagined rollouts of the token world model
   (:mod:`dreamlab.generations.tokens.agent`);
4. ``evaluate``: ``eval.json``: the agent in the real env, open-loop fidelity, imagination speed;
   ``summary.md`` (:mod:`dreamlab.generations.tokens.evaluate`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro

from dreamlab.data.store import EpisodeStore
from dreamlab.envs.scenarios import CATCH_WORDS
from dreamlab.eval.kindness import KINDNESS_FILE
from dreamlab.generations.args import PipelineConfig
from dreamlab.generations.own import open_own, store_env
from dreamlab.generations.tokens.agent import TokenAgent, train_agent
from dreamlab.generations.tokens.config import (
    TokenRunConfig,
    own_config,
    token_preset,
    tokenizer_config,
)
from dreamlab.generations.tokens.data import open_store, tokenize_store, window_batches
from dreamlab.generations.tokens.evaluate import evaluate_run, token_kindness, write_report
from dreamlab.generations.tokens.run import (
    TokenRun,
    read_token_config,
    run_store,
    start_run,
    write_data_files,
)
from dreamlab.generations.tokens.worldmodel import TokenWorldModel, token_start_bank
from dreamlab.io import read_json
from dreamlab.models.tokens import TokenTransformer, token_transformer_preset
from dreamlab.models.vq import VQTokenizer
from dreamlab.rundir import RunError, store_action_space, timed
from dreamlab.train.batches import frame_batches
from dreamlab.train.fit import TrainConfig, fit
from dreamlab.worldmodel import ActionSpec

__all__ = [
    "COLLECT_EPISODES",
    "TrainTokensArgs",
    "run_pipeline",
    "train_tokens",
    "train_tokens_cmd",
]

COLLECT_EPISODES = 200
"""random-policy episodes a run collects when it is given no store"""


def _models(
    cfg: TokenRunConfig, spec: ActionSpec, prompts: bool
) -> tuple[VQTokenizer, TokenTransformer]:
    """Fresh tokenizer and transformer of the run's preset (seeded)."""
    vcfg = tokenizer_config(cfg)
    n_act = spec.n if spec.kind == "discrete" else cfg.action_bins
    tcfg = token_transformer_preset(cfg.preset, vcfg.tokens_per_frame, vcfg.codebook_size, n_act)
    if prompts:
        tcfg = dataclasses.replace(tcfg, prompt_words=CATCH_WORDS)
    torch.manual_seed(cfg.seed)
    return VQTokenizer(vcfg), TokenTransformer(tcfg)


def train_tokens(
    cfg: TokenRunConfig,
    out: str | Path,
    *,
    data: str | Path | None = None,
    collect_episodes: int = COLLECT_EPISODES,
    progress: bool = True,
    evaluate: bool = True,
) -> TokenRun:
    """Run (or resume) every stage of a token run in ``out``; see the module docstring.

    Raises:
        RunError: ``out`` holds another run or one started with other settings.
        ValueError: the store's frames do not fit the preset's tokenizer.
    """
    out = Path(out)
    if read_token_config(out) is None:  # a bad --data or env fails before the run is written
        if data is not None:
            EpisodeStore.open(data)
        else:
            from dreamlab.envs import make_env

            make_env(cfg.env, **cfg.env_kwargs).close()
    cfg = start_run(out, cfg, env_from_data=data is not None)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    store = timed(
        out,
        "collect",
        lambda: open_store(cfg, Path(data) if data else None, out, collect_episodes, progress),
    )
    spec = ActionSpec.from_space(store_action_space(store))
    write_data_files(out, store, spec)
    prompts = cfg.prompts and cfg.env.startswith("catch")
    vq, tf = _models(cfg, spec, prompts)
    shape = tuple(store.meta.obs_shape or ())
    if shape != (vq.config.frame_size, vq.config.frame_size, 3):
        raise ValueError(
            f"{store.path}: frames of shape {shape}, the {cfg.preset!r} tokenizer reads "
            f"({vq.config.frame_size}, {vq.config.frame_size}, 3); pick a preset or env that fits"
        )
    common: dict[str, Any] = dict(
        device=cfg.device,
        num_threads=cfg.num_threads,
        progress=progress,
        tensorboard=False,
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
    )

    r_vq = timed(
        out,
        "tokenizer",
        lambda: fit(
            vq,
            frame_batches(store, cfg.vq_batch, seed=cfg.seed),
            TrainConfig(batch_size=cfg.vq_batch, lr=cfg.vq_lr, log_every=25, **common),
            out / "tokenizer",
            total_steps=cfg.vq_steps,
            stage="tokenizer",
        ),
    )
    vq.eval()

    def transformer_stage() -> Any:
        tdata = tokenize_store(vq, store, spec, tf.config.action_tokens, prompts)
        return fit(
            tf,
            window_batches(tdata, tf.config.context_steps, cfg.transformer_batch, seed=cfg.seed),
            TrainConfig(
                batch_size=cfg.transformer_batch, lr=cfg.transformer_lr, log_every=25, **common
            ),
            out / "transformer",
            total_steps=cfg.transformer_steps,
            stage="transformer",
        )

    r_tf = timed(out, "transformer", transformer_stage)
    tf.eval()
    wm = TokenWorldModel(vq, tf, spec)
    bank = token_start_bank(wm, store, frames="all", max_rows=4096)
    ac, agent_seconds = timed(
        out, "agent", lambda: train_agent(wm, bank, cfg, out / "agent", progress)
    )
    agent = TokenAgent(wm, ac, seed=cfg.seed)
    seconds = r_vq.seconds + r_tf.seconds + agent_seconds
    run = TokenRun(out, cfg, wm, agent, bank, seconds)
    if evaluate:
        timed(out, "evaluate", lambda: evaluate_run(run, store, progress))
    return run


def _open_own(run: Path, options: PipelineConfig, saved: TokenRunConfig | None) -> TokenRunConfig:
    """A run sized from ``--env``/``--data`` (:func:`~dreamlab.generations.tokens.config.own_config`);
    an existing one must have been made from the same env."""
    return open_own(
        run,
        options,
        saved,
        own_config,
        title="token run",
        describe=lambda c: (
            f"{tokenizer_config(c).tokens_per_frame} tokens per frame, imagined rollouts of "
            f"{c.horizon} steps"
        ),
    )


def run_pipeline(run: Path, preset: str | None, cfg: PipelineConfig) -> Path:
    """``dreamlab pipeline`` for a token run: every stage of :func:`train_tokens` in ``run`` (a
    new run from ``preset``; an existing one resumes with its own settings and store), the
    evaluation once, then ``report.md``.

    Raises:
        RunError: ``--until``/``--iterations`` (a token run has neither), or no run and no preset.
    """
    if cfg.until is not None or cfg.iterations is not None:
        raise RunError(
            "a token run has no --until or --iterations; its stages (collect, tokenizer, "
            "transformer, agent, evaluate) all run, each resuming from its checkpoint"
        )
    config = read_token_config(run)
    data = run_store(run)
    if cfg.own:
        config, data = _open_own(run, cfg, config), run / "data"
    elif config is None:
        if preset is None:
            raise RunError(f"{run}: no run here; start one with --preset catch-tokens")
        config = token_preset(preset)
    if cfg.seed is not None:
        config = dataclasses.replace(config, seed=cfg.seed)
    file = run / "eval.json"
    evaluated = file.exists() and "fidelity" in read_json(file, "eval")
    train_tokens(config, run, data=data, progress=cfg.progress, evaluate=not evaluated)
    if not (run / KINDNESS_FILE).exists():
        timed(run, "kindness", lambda: token_kindness(run))
    write_report(run)
    return run


# ---------------------------------------------------------------------- CLI
@dataclass
class TrainTokensArgs:
    """Train the token world model (VQ + transformer, IRIS/GAIA-1) and an agent in its dream."""

    out: Annotated[Path, tyro.conf.arg(name="run", aliases=("--out",))] = Path("runs/tokens")
    """run directory (created, or resumed with the same settings)"""
    data: Path | None = None
    """episode store to train on; without it, --collect-episodes are collected into RUN/data"""
    preset: str = "tiny"
    """sizes and budgets: tiny (CPU, 32x32 Catch) or iris (IRIS's sizes, a GPU)"""
    env: str | None = None
    """env preset to collect from (default: the preset's, catch-32 for tiny); with --data the
    run's env is the store's"""
    collect_episodes: int = COLLECT_EPISODES
    """episodes to collect with a random policy when --data is not given"""
    vq_steps: int | None = None
    """override the preset's tokenizer steps"""
    transformer_steps: int | None = None
    """override the preset's transformer steps"""
    agent_updates: int | None = None
    """override the preset's actor-critic updates"""
    eval_episodes: int | None = None
    """override the preset's number of real evaluation episodes"""
    prompts: bool = True
    """learn Catch scenario prompts (fast, slow, from-left, from-right)"""
    seed: int = 0
    """seed of everything"""
    device: str | None = None
    """torch device (default: the preset's)"""
    progress: bool = True
    """progress bars and the summary"""


def train_tokens_cmd(args: TrainTokensArgs) -> Path:
    """CLI wrapper of :func:`train_tokens`."""
    cfg = token_preset(args.preset)
    overrides: dict[str, Any] = {"seed": args.seed, "prompts": args.prompts}
    for name in (
        "env",
        "vq_steps",
        "transformer_steps",
        "agent_updates",
        "eval_episodes",
        "device",
    ):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.data is not None:  # the run's env is the store's (evaluation, play, load_agent)
        store = EpisodeStore.open(args.data)
        overrides["env"], overrides["env_kwargs"] = store_env(store)
        side = (store.meta.obs_shape or (0,))[0]
        if side and side != tokenizer_config(cfg).frame_size:
            overrides["frame_size"] = side
    cfg = dataclasses.replace(cfg, **overrides)
    t0, c0 = time.perf_counter(), time.process_time()
    train_tokens(
        cfg,
        args.out,
        data=args.data,
        collect_episodes=args.collect_episodes,
        progress=args.progress,
    )
    print(
        f"train-tokens: {args.out} done in {time.perf_counter() - t0:.0f} s wall, "
        f"{time.process_time() - c0:.0f} s CPU (this session)",
        file=sys.stderr,
    )
    return Path(args.out)
