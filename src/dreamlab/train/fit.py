"""One gradient loop for every trainable model (V, M, and later ones).

Any ``nn.Module`` with ``compute_loss(batch) -> (loss, metrics)`` and a registered kind (see
:mod:`dreamlab.checkpoint`) trains here: AdamW, gradient clipping, a progress bar, metrics as
JSON lines + TensorBoard, periodic checkpoints that a killed run resumes from, and a hard stop
on a non-finite loss that never overwrites the last good checkpoint. A checkpoint (weights,
config, optimizer and RNG state, ``trainer.json``) is one unit of
:func:`dreamlab.io.commit_files`: a kill or a full disk at any byte of a save leaves the last
complete one, and the rerun resumes from it. Settings that shape the numbers (learning rate,
batch size, seed...) cannot change on a resumed stage: :func:`check_resume` refuses them by
name. The batch sources that resume with it are in :mod:`dreamlab.train.batches`.

Every call says in one line what it did: that it resumed (and from which step), that the stage
was already trained (nothing to do), or how many steps it trained, to where.

The stage directory (``runs/NAME/vae``) ends up holding::

    config.json  model.safetensors  optimizer.safetensors  trainer.json
    metrics.jsonl  curves.png  tb/
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
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
from dreamlab.io import (
    DreamlabError,
    append_jsonl,
    commit_files,
    read_json,
    read_jsonl,
    sweep_temp_files,
    truncate_jsonl,
)
from dreamlab.progress import tqdm
from dreamlab.train.batches import Batch
from dreamlab.viz import plot_curves

__all__ = [
    "RESUME_FREE",
    "FitResult",
    "TrainConfig",
    "TrainingDivergedError",
    "check_resume",
    "fit",
]

TRAINER_FILE = "trainer.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"

Batches = Iterable[Batch] | Callable[[int], Iterator[Batch]]

RESUME_FREE = (
    "epochs",
    "steps",
    "log_every",
    "checkpoint_every",
    "device",
    "num_threads",
    "progress",
    "tensorboard",
)
"""TrainConfig fields a resumed stage may change: how long it trains, how often it logs and
saves, where and how it shows progress. The others shape the numbers of the steps already taken."""


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
    """show a progress bar (the one-line summary of what was done is printed either way)"""
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


class TrainingDivergedError(DreamlabError, RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint was left untouched."""

    def __init__(
        self,
        stage: str,
        step: int,
        what: str,
        metrics: dict[str, float],
        where: str | Path | None = None,
    ) -> None:
        self.stage = stage
        self.step = step
        self.metrics = metrics
        place = f" in {where}" if where is not None else ""
        super().__init__(
            f"{stage}: training diverged at step {step}: {what} is not finite (metrics "
            f"{metrics}); nothing was saved over the last good checkpoint{place}: lower the "
            "learning rate or check the data"
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


def _trainer_state(out_dir: Path) -> dict[str, Any] | None:
    """``trainer.json`` of the checkpoint in ``out_dir`` (``None``: nothing to resume).

    Raises:
        CheckpointError: a model without a trainer state (not made by :func:`fit`), or a corrupt
            trainer state.
    """
    sweep_temp_files(out_dir)  # what a killed save left; finishes a half-moved checkpoint
    trainer_path = out_dir / TRAINER_FILE
    if not trainer_path.exists():
        if (out_dir / MODEL_FILE).exists() or (out_dir / CONFIG_FILE).exists():
            raise CheckpointError(
                f"{out_dir}: holds a model but no {TRAINER_FILE}, so it cannot be resumed; "
                "refusing to overwrite it (use another directory or delete it)"
            )
        return None
    try:
        state = read_json(trainer_path, what="trainer state")
        int(state["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{trainer_path}: corrupt trainer state ({e})") from None
    return dict(state)


def check_resume(out_dir: str | Path, cfg: TrainConfig, model_config: Any | None = None) -> None:
    """Raise unless the checkpoint in ``out_dir`` (if any) can be resumed with ``cfg`` and a model
    of ``model_config``: a setting outside :data:`RESUME_FREE`, or the model's architecture,
    may not change halfway through a training. Commands call it before they record new settings,
    so a refused command changes nothing.

    Raises:
        CheckpointError: naming each differing setting with both values.
    """
    out = Path(out_dir)
    state = _trainer_state(out)
    if state is not None:
        _check_settings(out, state, cfg, model_config)


def _check_settings(
    out: Path, state: dict[str, Any], cfg: TrainConfig, model_config: Any | None
) -> None:
    """:func:`check_resume` against the checkpoint's trainer ``state``."""
    saved = state.get("train_config")
    given = asdict(cfg)
    if isinstance(saved, dict):
        diff = [
            f"{k}={saved.get(k)!r} (asked: {given.get(k)!r})"
            for k in sorted(set(saved) | set(given))
            if k not in RESUME_FREE and saved.get(k) != given.get(k)
        ]
        if diff:
            raise CheckpointError(
                f"{out}: this stage was trained up to step {state['step']} with "
                f"{', '.join(diff)}; such settings cannot change halfway through a training, so "
                "nothing was changed: give the same settings to resume, or delete "
                f"{out} to train again with the new ones"
            )
    if model_config is not None:
        _, saved_config = read_config(out)
        old, new = asdict(saved_config), asdict(model_config)
        if old != new:
            changed = ", ".join(
                f"{k} {old.get(k)!r} (asked: {new[k]!r})"
                for k in sorted(new)
                if old.get(k) != new[k]
            )
            raise CheckpointError(
                f"{out / CONFIG_FILE}: the checkpoint was trained with config {changed}; use "
                "another directory to train a different model, or delete this one"
            )


def _try_resume(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    out_dir: Path,
    device: torch.device,
    cfg: TrainConfig,
) -> tuple[int, float]:
    """Load the checkpoint in ``out_dir`` if there is one; return ``(step, elapsed seconds)``."""
    state = _trainer_state(out_dir)
    if state is None:
        return 0, 0.0
    _check_settings(out_dir, state, cfg, model.config)
    step = int(state["step"])
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

    start_step, prior_seconds = _try_resume(model, optimizer, out_dir, device, cfg)
    metrics_path = out_dir / METRICS_FILE
    last_logged: dict[str, float] = {}
    # records past the checkpoint (all of them on a fresh start) are logged again
    truncate_jsonl(metrics_path, "step", start_step)
    if start_step:
        previous = [r for r in read_jsonl(metrics_path) if r.get("step") == start_step]
        if previous:
            last_logged = {k: v for k, v in previous[-1].items() if k not in ("step", "time")}
    if start_step >= total_steps:
        at = (
            f"step {start_step} of {total_steps}"
            if start_step == total_steps
            else (f"step {start_step}, {total_steps} asked for")
        )
        _say(
            f"{stage} is trained ({at}) at {out_dir}; remove it, or train into another "
            "directory, to train again"
        )
        return FitResult(
            stage, out_dir, start_step, start_step, total_steps, prior_seconds, last_logged
        )
    if start_step:
        _say(f"resuming {stage} at step {start_step} of {total_steps} ({out_dir})")

    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_step or None)

    def save_checkpoint(step: int, seconds: float) -> None:
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDivergedError(
                    stage, step, f"parameter {name!r}", last_logged, out_dir
                )
        # one unit: weights, config, optimizer + RNG state and trainer.json change together
        with commit_files(out_dir) as commit:
            save_model(out_dir, model, model.config, kind, step=step, commit=commit)
            save_optimizer(out_dir, optimizer, step=step, extra=_rng_state(device), commit=commit)
            commit.write_json(
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
                raise TrainingDivergedError(stage, step, "the loss", metrics, out_dir)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if not math.isfinite(grad_norm):
                raise TrainingDivergedError(stage, step, "the gradient norm", metrics, out_dir)
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
    took = time.perf_counter() - t0
    shown = "".join(f", {k.rsplit('/', 1)[-1]}={v:.4g}" for k, v in last_logged.items())
    _say(
        f"{stage}: trained {step - start_step} steps in {took:.1f} s "
        f"({(step - start_step) / max(took, 1e-9):.1f} steps/s), step {step} of {total_steps} "
        f"at {out_dir}{shown}"
    )
    return result


def _say(message: str) -> None:
    """Print one line saying what :func:`fit` did (stderr: stdout may be a command's result)."""
    print(message, file=sys.stderr, flush=True)
