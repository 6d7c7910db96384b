"""``dreamlab dream`` for a token run: a decoded dream, optionally following a prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dreamlab.envs.scenarios import ball_scenarios, parse_prompt
from dreamlab.generations.args import DreamArgs
from dreamlab.generations.tokens.run import load_token_run, run_store
from dreamlab.generations.tokens.worldmodel import token_start_bank
from dreamlab.rundir import RunError

__all__ = ["dream_tokens"]


def dream_tokens(run: Path, args: DreamArgs) -> Path:
    """Dream ``args.steps`` steps from a real first frame of the run's data, acting with the
    trained agent (``args.agent == "controller"``, once there is one) or at random, under the
    prompt ``args.prompt`` with guidance ``args.guidance``; write the decoded video (default
    ``RUN/dream.mp4``) and print the scenario words of every ball that enters.

    Raises:
        RunError: no token run at ``run``, or its data is gone.
        ValueError: a prompt word outside the model's vocabulary.
    """
    from dreamlab.data.store import EpisodeStore
    from dreamlab.viz import write_video

    run = Path(run)
    _, wm, token_agent = load_token_run(run)
    words = parse_prompt(args.prompt, wm.prompt_words)
    wm.set_prompt(words or None, args.guidance if words else 1.0)
    data = run_store(run)
    if data is None:
        raise RunError(f"{run}: no data.json; run train-tokens first")
    bank = token_start_bank(wm, EpisodeStore.open(data), frames="first")
    gen = torch.Generator().manual_seed(args.seed)
    state = wm.start_state(
        {"tokens": bank["tokens"][torch.randint(len(bank["tokens"]), (1,), generator=gen)]}
    )
    frames = [wm.decode(state)]
    use_agent = args.agent == "controller" and token_agent is not None
    for _ in range(args.steps):
        if use_agent:
            assert token_agent is not None
            a = token_agent.dream_policy(wm.features(state))
        else:
            a = torch.randint(wm.action_spec.n, (1,), generator=gen)
        state, _, term = wm.step(state, a, args.temperature, gen)
        frames.append(wm.decode(state))
        if bool(term[0]):
            break
    out = args.video or (run / "dream.mp4")
    uint8 = np.stack(
        [(f[0].movedim(0, -1).clamp(0, 1) * 255).round().byte().numpy() for f in frames]
    )
    write_video(out, uint8, fps=15)
    balls = [b.words for b in ball_scenarios(uint8) if b.start > 0]
    print(f"dream: {len(frames)} frames -> {out}; balls entering: {balls}")
    return Path(out)
