"""How well the diffusion world model predicts held-out episodes open loop, against copying the
last real frame (``RUN/fidelity.json``, written by ``train-diffusion``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["open_loop_fidelity"]


def open_loop_fidelity(
    world_model: Any,
    episodes: list[dict[str, np.ndarray]],
    *,
    context: int = 4,
    horizons: tuple[int, ...] = (1, 5, 10, 20),
    seed: int = 0,
) -> dict[str, Any]:
    """Open-loop pixel MSE of the model against copying the last real frame.

    The model observes ``context`` real frames (stepping with the real actions in between),
    then imagines ``max(horizons)`` steps with the real actions; at each horizon h the imagined
    frame and the last context frame (copy-last baseline) are compared with the real frame.

    Returns:
        ``{"horizons", "model_mse", "copy_last_mse", "ratio", "episodes", "context",
        "ball_x_error"}``: means over episodes at each horizon (``ball_x_error``: mean |dx| in
        pixels of the ball's centroid where both frames show a ball, Catch only, else None).
    """
    from dreamlab.eval.catch_probe import position_probe
    from dreamlab.eval.fidelity import open_loop

    horizon = max(horizons)
    need = context + horizon - 1
    episodes = [ep for ep in episodes if len(ep["action"]) >= need]
    if not episodes:
        raise ValueError(f"open_loop_fidelity: no episode has {need} steps")
    res = open_loop(world_model, episodes, context, horizon, seed=seed)
    ball_err: list[float] | None
    try:
        probe = position_probe(res.imagined, res.real)
        ball_err = [float(probe["ball_x_err"][h - 1]) for h in horizons]
    except ValueError:  # not square RGB frames: no Catch probe
        ball_err = None
    model_mse = [float(res.mse[:, h - 1].mean()) for h in horizons]
    copy_mse = [float(res.baseline_mse[:, h - 1].mean()) for h in horizons]
    return {
        "context": context,
        "episodes": len(episodes),
        "horizons": list(horizons),
        "model_mse": model_mse,
        "copy_last_mse": copy_mse,
        "ratio": [
            m / c if c > 0 else float("nan") for m, c in zip(model_mse, copy_mse, strict=True)
        ],
        "ball_x_error": ball_err,
    }
