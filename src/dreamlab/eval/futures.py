"""Many futures from one real starting point: how sure is the model of what comes next?

The model observes a few real frames, then imagines K futures of the same action sequence at
once (one batch of K dreams), each with its own MDN samples at temperature tau. Where the K
futures agree the model is sure; where they fan out it is not. Works on any
:class:`~dreamlab.worldmodel.WorldModel` (the open-loop runner :func:`dreamlab.eval.openloop.imagine`
uses only ``initial_state``/``observe``/``step``/``decode``); if the state carries
``disagreement`` (an ensemble of V+M world models) that is recorded too.

Pictures: :func:`plot_futures_frames` (rows: the real frames, a few of the K samples, the mean
frame and the per-pixel spread across samples; columns: steps) and :func:`plot_reward_fan`
(median and percentile bands over K of the predicted reward, the cumulative reward and, for an
ensemble, the disagreement).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dreamlab.eval.openloop import imagine
from dreamlab.io import atomic_path
from dreamlab.models import frames_to_tensor
from dreamlab.viz import save_image_grid
from dreamlab.worldmodel import WorldModel

__all__ = ["FuturesResult", "plot_futures_frames", "plot_reward_fan", "sample_futures"]


@dataclass
class FuturesResult:
    """K imagined futures of one action sequence from one real starting point.

    Attributes:
        frames: decoded frames ``(K, H+1, h, w, 3)`` uint8; index 0 is the model's view of the
            last context frame, index t the frame after t imagined steps.
        reward: predicted reward ``(K, H)`` float32 (what ``step`` returned, so penalised if
            the world model has pessimism).
        terminated: ``(K, H)`` bool, as predicted.
        alive: ``(K, H)`` bool: the step happened before (or at) the first predicted
            termination; rewards after it are not counted in :attr:`cumulative_reward`.
        latents: ``z`` per step ``(K, H+1, Z)`` if the state has one, else ``None``.
        disagreement: ``(K, H)`` ensemble disagreement per step if the state has one.
        temperature: the sampling temperature.
    """

    frames: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    alive: np.ndarray
    latents: np.ndarray | None
    disagreement: np.ndarray | None
    temperature: float

    @property
    def num_samples(self) -> int:
        """K."""
        return int(self.frames.shape[0])

    @property
    def horizon(self) -> int:
        """H."""
        return int(self.reward.shape[1])

    @property
    def cumulative_reward(self) -> np.ndarray:
        """``(K, H)`` reward summed up to each step, stopping at the predicted termination."""
        return np.cumsum(self.reward * self.alive, axis=1)

    def pixel_spread(self) -> np.ndarray:
        """Per-pixel standard deviation across the K samples: ``(H+1, h, w)`` in [0, 1] units."""
        x = self.frames.astype(np.float32) / 255.0  # (K, H+1, h, w, 3)
        return x.std(axis=0).mean(axis=-1)  # (H+1, h, w)


def _frames_tensor(frames: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Context frames as float ``(C, 3, H, W)`` in [0, 1]: uint8 ``(C, H, W, 3)`` or float."""
    if isinstance(frames, torch.Tensor) and frames.is_floating_point():
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(
                f"sample_futures: float context frames must be (C, 3, H, W), got "
                f"{tuple(frames.shape)}"
            )
        return frames.to(device)
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"sample_futures: context frames must be uint8 (C, H, W, 3) or float (C, 3, H, W), "
            f"got {arr.dtype} {arr.shape}"
        )
    return frames_to_tensor(arr, device)


def sample_futures(
    world_model: WorldModel,
    frames_context: np.ndarray | torch.Tensor,
    actions: np.ndarray | torch.Tensor,
    num_samples: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    *,
    context_actions: np.ndarray | torch.Tensor | None = None,
) -> FuturesResult:
    """Observe real context frames, then imagine ``num_samples`` futures of ``actions``.

    The K futures run as one batch of K dreams; they differ only in the sampling noise (and,
    for an ensemble, in which member draws each step).

    Args:
        world_model: any :class:`~dreamlab.worldmodel.WorldModel`.
        frames_context: C >= 1 real frames, uint8 ``(C, H, W, 3)`` or float ``(C, 3, H, W)``;
            the future starts after the last one.
        actions: the H actions to imagine, ``(H, A)`` float (Box) or ``(H,)`` int (Discrete).
        num_samples: K futures.
        temperature: MDN sampling temperature tau (0: every future is the same).
        seed: seed of the sampling noise.
        context_actions: the C - 1 actions taken between the context frames (needed when
            C > 1; the memory is warmed on them).

    Returns:
        :class:`FuturesResult`.
    """
    if num_samples < 1:
        raise ValueError(f"sample_futures: num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise ValueError(f"sample_futures: temperature must be >= 0, got {temperature}")
    device = torch.device(world_model.device)
    context = _frames_tensor(frames_context, device)  # (C, 3, H, W)
    num_context = context.shape[0]
    if num_context < 1:
        raise ValueError("sample_futures: need at least one context frame")
    acts = np.asarray(actions)
    if acts.ndim < 1 or len(acts) < 1:
        raise ValueError(f"sample_futures: actions must be (H, ...) with H >= 1, got {acts.shape}")
    ctx_acts = np.asarray(context_actions) if context_actions is not None else acts[:0]
    if len(ctx_acts) != num_context - 1:
        raise ValueError(
            f"sample_futures: {num_context} context frames need {num_context - 1} context "
            f"actions, got {len(ctx_acts)}"
        )
    k = num_samples
    steps = torch.as_tensor(np.concatenate([ctx_acts, acts]))  # (C-1+H, ...)
    run = imagine(
        world_model,
        context[None].expand(k, *context.shape),  # (K, C, 3, H, W)
        steps[None].expand(k, *steps.shape),  # (K, C-1+H, ...)
        temperature=temperature,
        seed=seed,
        record=("z", "disagreement"),
    )
    # A step counts while no earlier step terminated (the terminating step itself counts).
    ended_before = np.cumsum(run.terminated, axis=1) - run.terminated  # (K, H)
    disagreement = run.states.get("disagreement")
    return FuturesResult(
        frames=run.frames,
        reward=run.reward,
        terminated=run.terminated,
        alive=ended_before == 0,
        latents=run.states.get("z"),
        disagreement=None if disagreement is None else disagreement[:, 1:],
        temperature=float(temperature),
    )


def _spread_rgb(spread: np.ndarray, vmax: float) -> np.ndarray:
    """``(N, h, w)`` spread -> uint8 ``(N, h, w, 3)`` through the 'magma' colour map."""
    scaled = np.clip(spread / max(vmax, 1e-8), 0.0, 1.0)
    rgb = colormaps["magma"](scaled)[..., :3]  # (N, h, w, 3) float
    return (rgb * 255.0).round().astype(np.uint8)


def plot_futures_frames(
    result: FuturesResult,
    path: str | Path,
    *,
    real: np.ndarray | None = None,
    rows: int = 6,
    max_columns: int = 16,
) -> list[int]:
    """Grid of imagined futures: real frames (if given), ``rows`` samples, mean, spread.

    Columns are steps ``0 .. H`` (every s-th step so that at most ``max_columns`` are shown).
    The spread row is the per-pixel standard deviation across all K samples (colour map
    'magma', scaled to the largest spread in the figure): bright where the futures disagree.

    Args:
        result: from :func:`sample_futures`.
        path: output PNG.
        real: the real frames of the same steps, uint8 ``(H+1, h, w, 3)``.
        rows: sample rows shown (the spread uses all K).
        max_columns: most columns.

    Returns:
        The steps shown.
    """
    steps_total = result.frames.shape[1]
    stride = max(1, -(-steps_total // max_columns))
    cols = list(range(0, steps_total, stride))
    grid: list[np.ndarray] = []
    labels: list[str] = []
    if real is not None:
        real = np.asarray(real)
        if real.shape != result.frames.shape[1:]:
            raise ValueError(
                f"plot_futures_frames: real frames {real.shape} do not match the futures' "
                f"{result.frames.shape[1:]}"
            )
        grid.append(real[cols])
        labels.append("real")
    for i in range(min(rows, result.num_samples)):
        grid.append(result.frames[i, cols])
        labels.append(f"sample {i}")
    mean = result.frames.astype(np.float32).mean(axis=0)  # (H+1, h, w, 3)
    grid.append(mean[cols].round().astype(np.uint8))
    labels.append(f"mean of {result.num_samples}")
    spread = result.pixel_spread()  # (H+1, h, w)
    grid.append(_spread_rgb(spread[cols], float(spread.max())))
    labels.append("spread")
    save_image_grid(path, grid, labels=labels)
    return [int(c) for c in cols]


def _fan(ax: object, values: np.ndarray, x: np.ndarray, color: str, label: str) -> None:
    """Median line with 25-75% and 5-95% bands over axis 0 of ``values (K, T)``."""
    q5, q25, q50, q75, q95 = np.percentile(values, [5, 25, 50, 75, 95], axis=0)
    ax.fill_between(x, q5, q95, color=color, alpha=0.15, label="5-95%")  # type: ignore[attr-defined]
    ax.fill_between(x, q25, q75, color=color, alpha=0.35, label="25-75%")  # type: ignore[attr-defined]
    ax.plot(x, q50, color=color, linewidth=1.5, label=label)  # type: ignore[attr-defined]


def plot_reward_fan(
    result: FuturesResult,
    path: str | Path,
    *,
    real_reward: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Fan plots over the K futures: predicted reward, cumulative reward (and disagreement).

    Args:
        result: from :func:`sample_futures`.
        path: output PNG.
        real_reward: what really happened, ``(H,)``, drawn as a black line.
        title: prefix of the panel titles.
    """
    x = np.arange(1, result.horizon + 1)
    panels: list[tuple[str, np.ndarray, np.ndarray | None]] = [
        ("predicted reward", result.reward * result.alive, real_reward),
        (
            "cumulative reward",
            result.cumulative_reward,
            None if real_reward is None else np.cumsum(real_reward),
        ),
    ]
    if result.disagreement is not None:
        panels.append(("ensemble disagreement", result.disagreement, None))
    fig = Figure(figsize=(4.2 * len(panels), 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, values, truth) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _fan(ax, values, x, "tab:blue" if i < 2 else "tab:red", f"median of {result.num_samples}")
        if truth is not None:
            ax.plot(
                x, np.asarray(truth, dtype=np.float64), color="black", linewidth=1, label="real"
            )
        ax.set_xlabel("imagined step")
        ax.set_title(f"{title} {name} (tau={result.temperature:g})".strip(), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
