"""One gradient loop for every trainable model (V, M, and later ones).

Any ``nn.Module`` with ``compute_loss(batch) -> (loss, metrics)`` and a registered kind (see
:mod:`dreamlab.checkpoint`) trains here: AdamW, gradient clipping, a progress bar, metrics as
JSON lines + TensorBoard, periodic checkpoints that a killed run resumes from, and a hard stop
on a non-finite loss that never overwrites the last good checkpoint.

The stage directory (``runs/NAME/vae``) ends up holding::

    config.json  model.safetensors  optimizer.safetensors  trainer.json
    metrics.jsonl  curves.png  tb/
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dreamlab.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    CheckpointError,
    kind_of,
    load_optimizer,
    load_weights,
    optimizer_step,
    read_config,
    save_model,
    save_optimizer,
    weights_step,
)
from dreamlab.data.sampling import FrameSampler, SequenceSampler
from dreamlab.data.store import EpisodeStore
from dreamlab.io import append_jsonl, atomic_write_json, atomic_write_text, read_json, read_jsonl
from dreamlab.progress import tqdm
from dreamlab.viz import plot_curves

__all__ = [
    "FitResult",
    "TrainConfig",
    "TrainingDivergedError",
    "fit",
    "frame_batches",
    "sequence_batches",
]

TRAINER_FILE = "trainer.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"

Batch = dict[str, Any]
Batches = Iterable[Batch] | Callable[[int], Iterator[Batch]]


@dataclass
class TrainConfig:
    """Settings of the gradient loop shared by every model."""

    epochs: float = 10.0
    """passes over the training data; converted to steps with the data size (see resolve_steps)"""
    steps: int | None = None
    """optimizer steps; when set it overrides epochs"""
    batch_size: int = 100
    """samples per optimizer step (frames for V, sequences for M)"""
    lr: float = 1e-4
    """AdamW learning rate (paper: 1e-4 for V, 1e-3 for M)"""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (0 = plain Adam)"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this value (0 disables)"""
    log_every: int = 50
    """steps between metric records (each record averages the steps since the last)"""
    checkpoint_every: int = 1000
    """steps between checkpoints (one is always written at the end)"""
    seed: int = 0
    """seed of torch's RNG (reparameterisation noise, initialisation done by the caller)"""
    device: str = "cpu"
    """torch device to train on"""
    num_threads: int = 0
    """torch CPU threads (0 keeps torch's default)"""
    progress: bool = True
    """show a progress bar and print a summary at the end"""
    tensorboard: bool = True
    """also write metrics to TensorBoard under OUT_DIR/tb"""

    def __post_init__(self) -> None:
        positive = {
            "batch_size": self.batch_size,
            "log_every": self.log_every,
            "checkpoint_every": self.checkpoint_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"TrainConfig.{name}: expected >= 1, got {value}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"TrainConfig.steps: expected >= 1 or None, got {self.steps}")
        if self.steps is None and self.epochs <= 0:
            raise ValueError(f"TrainConfig.epochs: expected > 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr: expected > 0, got {self.lr}")
        if self.grad_clip < 0:
            raise ValueError(f"TrainConfig.grad_clip: expected >= 0, got {self.grad_clip}")

    def resolve_steps(self, num_samples: int) -> int:
        """Optimizer steps for a dataset of ``num_samples`` (frames or sequences).

        ``steps`` when set, else ``ceil(epochs * num_samples / batch_size)``.
        """
        if self.steps is not None:
            return self.steps
        if num_samples < 1:
            raise ValueError(f"resolve_steps: the dataset is empty (num_samples={num_samples})")
        return max(1, math.ceil(self.epochs * num_samples / self.batch_size))


class TrainingDivergedError(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint was left untouched."""

    def __init__(self, stage: str, step: int, what: str, metrics: dict[str, float]) -> None:
        self.stage = stage
        self.step = step
        self.metrics = metrics
        super().__init__(
            f"{stage}: training diverged at step {step}: {what} is not finite "
            f"(metrics {metrics}). The last checkpoint was kept; lower the learning rate or "
            "check the data."
        )


@dataclass
class FitResult:
    """What :func:`fit` did."""

    stage: str
    """stage name used in metric names"""
    out_dir: Path
    """stage directory holding the checkpoint and logs"""
    step: int
    """optimizer steps completed in total (including before a resume)"""
    start_step: int
    """step this call started from (0 unless resumed)"""
    total_steps: int
    """steps requested"""
    seconds: float
    """wall time of training over all sessions of this run"""
    metrics: dict[str, float] = field(default_factory=dict)
    """the last logged metrics (averages over the last logging window)"""


def _to_tensor(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, np.ndarray | np.generic | int | float | bool):
        return torch.as_tensor(value).to(device, non_blocking=True)
    return value


def _batch_stream(batches: Batches, start_step: int) -> Iterator[Batch]:
    """Endless stream of batches starting at ``start_step``.

    A callable is called with the step to start from (so a sampler can be re-seeded to where a
    killed run stopped) and called again whenever its iterator runs out (next epoch). A
    re-iterable (a list, a sampler with ``__iter__``) is iterated again per epoch. A one-shot
    iterator must last for all steps.
    """
    step = start_step
    while True:
        source = batches(step) if callable(batches) else iter(batches)
        produced = 0
        for batch in source:
            produced += 1
            step += 1
            yield batch
        if produced == 0:
            raise ValueError("fit: the batch source produced no batches")
        if not callable(batches) and iter(batches) is batches:
            raise ValueError(
                "fit: the batch iterator ran out before total_steps; pass a re-iterable or a "
                "callable start_step -> iterator"
            )


def frame_batches(
    store: EpisodeStore, batch_size: int, seed: int = 0, key: str = "obs"
) -> Callable[[int], Iterator[Batch]]:
    """Resumable batch source for the VAE: ``{"obs": (B, H, W, 3) uint8}`` epoch by epoch.

    Epoch ``e`` is the permutation drawn from ``seed`` and ``e``, so the stream started at any
    step is exactly the stream an uninterrupted run saw from that step on. The last batch of an
    epoch is dropped so every step has ``batch_size`` frames.

    Returns:
        ``start_step -> iterator`` for :func:`fit`; ``.steps_per_epoch`` holds batches per epoch.
    """
    sampler = FrameSampler(store, batch_size, seed=seed, key=key, drop_last=True)
    per_epoch = max(1, len(sampler))

    def stream(start_step: int) -> Iterator[Batch]:
        step = start_step
        while True:
            epoch, b = divmod(step, per_epoch)
            perm = np.random.default_rng([seed, epoch]).permutation(sampler.num_frames)
            for i in range(b, per_epoch):
                ids = perm[i * batch_size : (i + 1) * batch_size]
                if len(ids) < batch_size:  # fewer frames than one batch: draw with replacement
                    ids = np.random.default_rng([seed, epoch, i]).integers(
                        0, sampler.num_frames, batch_size
                    )
                step += 1
                yield {key: sampler.gather(ids)}

    stream.steps_per_epoch = per_epoch  # type: ignore[attr-defined]
    return stream


def sequence_batches(
    store: EpisodeStore | Sequence[EpisodeStore],
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    keys: tuple[str, ...] = ("mu", "logvar", "action", "reward", "terminated"),
    cover_ends: bool = True,
) -> Callable[[int], Iterator[Batch]]:
    """Resumable batch source for the MDN-RNN: random windows of ``seq_len`` steps.

    Batch ``s`` is drawn from a generator seeded with ``(seed, s)``, so a resumed run continues
    the exact stream. Per-observation keys have ``seq_len + 1`` rows, per-step keys ``seq_len``.

    ``cover_ends`` draws windows around uniformly drawn steps so that episode ends (where
    ``terminated`` is true) are seen about as often as other steps (see
    :class:`~dreamlab.data.sampling.SequenceSampler`).

    Several stores (e.g. random play and the agent's own play) are sampled as one: each window
    comes from a store with probability proportional to the steps it holds.

    Returns:
        ``start_step -> iterator`` for :func:`fit`; ``.steps_per_epoch`` holds batches per pass.
    """
    stores = list(store) if isinstance(store, list | tuple) else [store]
    if not stores:
        raise ValueError("sequence_batches: no stores given")
    samplers = [
        SequenceSampler(s, seq_len, batch_size, seed=seed, keys=keys, cover_ends=cover_ends)
        for s in stores
    ]
    weights = np.array([s.eligible_steps for s in samplers], np.float64)
    weights /= weights.sum()

    def stream(start_step: int) -> Iterator[Batch]:
        step = start_step
        while True:
            rng = np.random.default_rng([seed, step])
            step += 1
            if len(samplers) == 1:
                yield samplers[0].gather(samplers[0].draw(rng, batch_size))
                continue
            counts = rng.multinomial(batch_size, weights)  # windows per store
            parts = [
                s.gather(s.draw(rng, int(k))) for s, k in zip(samplers, counts, strict=True) if k
            ]
            yield {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    stream.steps_per_epoch = sum(len(s) for s in samplers)  # type: ignore[attr-defined]
    return stream


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(extra: dict[str, torch.Tensor], device: torch.device) -> None:
    if "torch_cpu" in extra:
        torch.set_rng_state(extra["torch_cpu"].to(torch.uint8))
    if device.type == "cuda" and "torch_cuda" in extra:
        torch.cuda.set_rng_state(extra["torch_cuda"].to(torch.uint8), device)


def _try_resume(
    model: nn.Module, optimizer: torch.optim.Optimizer, out_dir: Path, device: torch.device
) -> tuple[int, float]:
    """Load the checkpoint in ``out_dir`` if there is one; return ``(step, elapsed seconds)``."""
    trainer_path = out_dir / TRAINER_FILE
    if not trainer_path.exists():
        if (out_dir / MODEL_FILE).exists() or (out_dir / CONFIG_FILE).exists():
            raise CheckpointError(
                f"{out_dir}: holds a model but no {TRAINER_FILE}, so it cannot be resumed; "
                "refusing to overwrite it (use another directory or delete it)"
            )
        return 0, 0.0
    try:
        state = read_json(trainer_path, what="trainer state")
        step = int(state["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{trainer_path}: corrupt trainer state ({e})") from None
    _, saved_config = read_config(out_dir)
    config: Any = model.config
    if asdict(saved_config) != asdict(config):
        raise CheckpointError(
            f"{out_dir / CONFIG_FILE}: the checkpoint was trained with config "
            f"{asdict(saved_config)}, but the model has {asdict(config)}; "
            "use another directory to train a different model"
        )
    steps = {"trainer.json": step, MODEL_FILE: weights_step(out_dir)}
    steps["optimizer.safetensors"] = optimizer_step(out_dir)
    if len(set(steps.values())) != 1:
        raise CheckpointError(
            f"{out_dir}: checkpoint files are from different steps {steps} (killed while "
            "saving?); delete the directory to restart this stage"
        )
    load_weights(model, out_dir)
    model.to(device)
    _, extra = load_optimizer(out_dir, optimizer)
    _set_rng_state(extra, device)
    return step, float(state.get("seconds", 0.0))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric records logged after ``step`` (by a run killed after its last checkpoint)."""
    records = read_jsonl(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def fit(
    model: nn.Module,
    batches: Batches,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    total_steps: int,
    stage: str = "vae",
) -> FitResult:
    """Train ``model`` for ``total_steps`` optimizer steps, resuming from ``out_dir`` if possible.

    Args:
        model: module with ``config`` (a dataclass), ``compute_loss(batch) -> (loss, metrics)``
            and a kind registered in :data:`dreamlab.checkpoint.MODEL_KINDS`.
        batches: dicts of numpy arrays (or tensors), converted to tensors on ``cfg.device``.
            Either a callable ``start_step -> iterator`` (recommended: it lets a resumed run
            continue the data stream where it stopped) or a re-iterable.
        cfg: loop settings.
        out_dir: stage directory; if it holds a checkpoint of the same model config, training
            continues from its step (weights, optimizer and RNG state restored).
        total_steps: optimizer steps in total (see :meth:`TrainConfig.resolve_steps`).
        stage: name used in metric keys ``{stage}/train/{name}`` and messages.

    Returns:
        :class:`FitResult`.

    Raises:
        TrainingDivergedError: the loss, gradient norm or weights became NaN/inf; no
            checkpoint is written after the last good one.
        CheckpointError: ``out_dir`` holds an incompatible or torn checkpoint.
    """
    if total_steps < 1:
        raise ValueError(f"fit: total_steps must be >= 1, got {total_steps}")
    compute_loss: Callable[[Batch], tuple[torch.Tensor, dict[str, float]]] | None = getattr(
        model, "compute_loss", None
    )
    if compute_loss is None:
        raise TypeError(f"fit: {type(model).__name__} has no compute_loss(batch) method")
    if not is_dataclass(getattr(model, "config", None)):
        raise TypeError(f"fit: {type(model).__name__} needs a dataclass .config to checkpoint")
    kind = kind_of(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    # Subnormal floats (below ~1e-38) are computed in microcode on x86 CPUs, up to 100x slower;
    # while V learns, its ReLU gradients pass through them and a step took twice as long
    # (BENCHMARKS.md). Flushing them to zero changes no result that matters.
    torch.set_flush_denormal(True)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    start_step, prior_seconds = _try_resume(model, optimizer, out_dir, device)
    metrics_path = out_dir / METRICS_FILE
    last_logged: dict[str, float] = {}
    if start_step:
        _truncate_metrics(metrics_path, start_step)
        previous = [r for r in read_jsonl(metrics_path) if r.get("step") == start_step]
        if previous:
            last_logged = {k: v for k, v in previous[-1].items() if k not in ("step", "time")}
    if start_step >= total_steps:
        return FitResult(
            stage, out_dir, start_step, start_step, total_steps, prior_seconds, last_logged
        )

    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_step or None)

    def save_checkpoint(step: int, seconds: float) -> None:
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDivergedError(stage, step, f"parameter {name!r}", last_logged)
        # trainer.json goes last: it is what marks the checkpoint as complete.
        save_model(out_dir, model, model.config, kind, step=step)
        save_optimizer(out_dir, optimizer, step=step, extra=_rng_state(device))
        atomic_write_json(
            out_dir / TRAINER_FILE,
            {
                "stage": stage,
                "kind": kind,
                "step": step,
                "total_steps": total_steps,
                "seconds": seconds,
                "train_config": asdict(cfg),
                "metrics": last_logged,
            },
        )

    stream = _batch_stream(batches, start_step)
    window: dict[str, float] = {}
    window_count = 0
    t0 = time.perf_counter()
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc=stage,
        disable=not cfg.progress,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    step = start_step
    try:
        model.train()
        for step in range(start_step + 1, total_steps + 1):
            batch = {k: _to_tensor(v, device) for k, v in next(stream).items()}
            loss, metrics = compute_loss(batch)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(stage, step, "the loss", metrics)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not math.isfinite(grad_norm):
                raise TrainingDivergedError(stage, step, "the gradient norm", metrics)
            optimizer.step()

            metrics = {**metrics, "grad_norm": grad_norm}
            for k, v in metrics.items():
                window[k] = window.get(k, 0.0) + float(v)
            window_count += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                last_logged = {f"{stage}/train/{k}": v / window_count for k, v in window.items()}
                elapsed = prior_seconds + time.perf_counter() - t0
                append_jsonl(metrics_path, {"step": step, "time": elapsed, **last_logged})
                if writer is not None:
                    for k, v in last_logged.items():
                        writer.add_scalar(k, v, step)
                bar.set_postfix(loss=f"{last_logged.get(f'{stage}/train/loss', math.nan):.4g}")
                window, window_count = {}, 0
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                save_checkpoint(step, prior_seconds + time.perf_counter() - t0)
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    seconds = prior_seconds + time.perf_counter() - t0
    plot_curves(metrics_path, out_dir / CURVES_FILE)
    result = FitResult(stage, out_dir, step, start_step, total_steps, seconds, last_logged)
    if cfg.progress:
        done = step - start_step
        shown = ", ".join(f"{k.rsplit('/', 1)[-1]}={v:.4g}" for k, v in last_logged.items())
        print(
            f"{stage}: {done} steps in {time.perf_counter() - t0:.1f}s "
            f"({done / max(time.perf_counter() - t0, 1e-9):.1f} steps/s), step {step}/{total_steps}; "
            f"{shown}",
            file=sys.stderr,
        )
    return result
