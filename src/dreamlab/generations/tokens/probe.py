"""Measurements of a token world model: open-loop fidelity, imagination speed, prompt probe."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from dreamlab.envs.scenarios import ball_scenarios
from dreamlab.generations.tokens.worldmodel import TokenWorldModel

__all__ = ["imagination_speed", "open_loop_fidelity", "prompt_agreement"]


@torch.inference_mode()
def open_loop_fidelity(
    world_model: TokenWorldModel,
    episodes: list[dict[str, np.ndarray]],
    context: int = 4,
    horizons: tuple[int, ...] = (1, 5, 10, 20),
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Pixel MSE of open-loop imagination vs copy-last-frame, at each horizon.

    The model observes ``context`` real frames (with the real actions between them), then
    imagines ``max(horizons)`` steps with the real actions; copy-last repeats the last real frame.
    """
    from dreamlab.eval.fidelity import fitting_horizons, open_loop

    horizons = fitting_horizons(episodes, context, horizons)
    if not horizons:  # every held-out episode ends too early
        return {"episodes": 0, "context": context, "model_mse": {}, "copy_last_mse": {}}
    h = max(horizons)
    eps = [e for e in episodes if len(e["action"]) >= context + h - 1]
    res = open_loop(world_model, eps, context, h, temperature=temperature, seed=seed)
    return {
        "episodes": len(eps),
        "context": context,
        "model_mse": {k: float(res.mse[:, k - 1].mean()) for k in horizons},
        "copy_last_mse": {k: float(res.baseline_mse[:, k - 1].mean()) for k in horizons},
    }


@torch.inference_mode()
def imagination_speed(
    world_model: TokenWorldModel, bank: dict[str, torch.Tensor], batch: int = 128, steps: int = 10
) -> float:
    """Imagined env steps per second (``batch`` dreams, ``steps`` steps each)."""
    idx = torch.arange(batch) % len(bank["tokens"])
    state = world_model.start_state({"tokens": bank["tokens"][idx]})
    n = world_model.action_spec.n
    gen = torch.Generator(device=world_model.device).manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        if world_model.action_spec.kind == "discrete":
            a = torch.randint(n, (batch,), generator=gen)
        else:
            a = torch.rand(batch, n, generator=gen) * 2 - 1
        state, _, _ = world_model.step(state, a, 1.0, gen)
    return batch * steps / (time.perf_counter() - t0)


@torch.inference_mode()
def prompt_agreement(
    world_model: TokenWorldModel,
    bank: dict[str, torch.Tensor],
    *,
    dreams: int = 32,
    steps: int = 30,
    guidance: float = 3.0,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """How often balls imagined under each one-word prompt show that word (pixel probe).

    For each word (and no prompt), ``dreams`` dreams of ``steps`` random-action steps are decoded;
    :func:`dreamlab.envs.scenarios.ball_scenarios` reads every ball that *enters during the
    dream* (the first one came from the real start frame). Agreement = fraction of those balls
    whose words include the prompt word; the unprompted rate of the same word is the baseline
    (chance is 1/2 for each word).
    """
    words = world_model.prompt_words
    if not words:
        raise ValueError("prompt_agreement: this model was trained without prompts")
    saved = (world_model.prompt, world_model.guidance)
    out: dict[str, Any] = {
        "dreams": dreams,
        "steps": steps,
        "guidance": guidance,
        "temperature": temperature,
        "top_k": world_model.top_k,
        "words": {},
    }
    gen = torch.Generator(device=world_model.device)
    idx = torch.arange(dreams) % len(bank["tokens"])
    balls_by_prompt: dict[str, list[tuple[str, ...]]] = {}
    try:
        for prompt in ("", *words):
            world_model.set_prompt(prompt or None, guidance if prompt else 1.0)
            gen.manual_seed(seed)
            state = world_model.start_state({"tokens": bank["tokens"][idx]})
            frames = [world_model.decode(state).movedim(1, -1).cpu().numpy()]
            for _ in range(steps):
                a = torch.randint(world_model.action_spec.n, (dreams,), generator=gen)
                state, _, _ = world_model.step(state, a, temperature, gen)
                frames.append(world_model.decode(state).movedim(1, -1).cpu().numpy())
            video = np.stack(frames, 1)  # (dreams, steps+1, S, S, 3)
            found = []
            for d in range(dreams):
                found += [b.words for b in ball_scenarios(video[d]) if b.start > 0]
            balls_by_prompt[prompt] = found
    finally:
        world_model.prompt, world_model.guidance = saved
    base = balls_by_prompt[""]
    for w in words:
        got = balls_by_prompt[w]
        out["words"][w] = {
            "balls": len(got),
            "agreement": float(np.mean([w in b for b in got])) if got else float("nan"),
            "unprompted_rate": float(np.mean([w in b for b in base])) if base else float("nan"),
            "chance": 0.5,
        }
    return out
