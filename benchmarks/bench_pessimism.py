"""Does pessimism (reward - lambda * ensemble disagreement) narrow the dream-vs-real gap?

For each setting, train C by CMA-ES in a dream of the run (the single V+M, or the run's ensemble
with penalty lambda), then score the selected controller three ways:

- ``dream_single``: mean return over many dreams of the single V+M (the same yardstick for all);
- ``dream_ensemble``: the same in the ensemble's dream without a penalty;
- ``real``: mean return over real episodes.

The gap ``dream - real`` is how much the controller believes in rewards the world does not pay
(the paper's "the agent exploits the model's imperfections"). Needs a run with a trained
ensemble (``dreamlab train-ensemble``). Controllers go to ``RUN/controller_pess_<tag>/``.

    python benchmarks/bench_pessimism.py --run runs/demo --pessimism none 0 1 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from dreamlab.generations.vmc.controller import stage_controller
from dreamlab.generations.vmc.evaluate import evaluate_agent
from dreamlab.generations.vmc.run import Run
from dreamlab.generations.vmc.uncertainty import ensemble_world_model
from dreamlab.generations.vmc.worldmodel import start_latents_from_store
from dreamlab.io import atomic_write_json
from dreamlab.train.dream_evaluator import DreamEvaluator


def dream_score(
    world_model: object, run: Run, name: str, rollouts: int, temperature: float, steps: int
) -> float:
    controller = run.controller(name)
    evaluator = DreamEvaluator(
        world_model,  # type: ignore[arg-type]
        start_latents_from_store(run.latents()),
        controller,
        temperature=temperature,
        max_episode_steps=steps,
    )
    params = controller.get_flat_params().double().numpy()[None]  # (1, D)
    return float(evaluator.evaluate(params, rollouts, seed=12345).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument(
        "--pessimism", nargs="+", default=["none", "0", "1"], help="'none' = single model"
    )
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--score-rollouts", type=int, default=256)
    parser.add_argument("--real-episodes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_pessimism.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run = Run.open(args.run)
    ecfg = dataclasses.replace(
        run.config.evolve,
        generations=args.generations,
        population_size=args.population,
        rollouts_per_candidate=args.rollouts,
        eval_every=10,
        eval_rollouts=64,
        real_eval_every=0,
        backend="dream",
        progress=False,
        tensorboard=False,
    )
    tau, steps = ecfg.temperature, ecfg.max_episode_steps
    single = run.world_model()
    plain_ensemble = ensemble_world_model(run)
    rows = []
    for value in args.pessimism:
        lam = None if value == "none" else float(value)
        tag = "single" if lam is None else f"{lam:g}"
        name = f"controller_pess_{tag}"
        t0 = time.perf_counter()
        stage_controller(run, "zh", ecfg, pessimism=lam, name=name)
        train_s = time.perf_counter() - t0
        real_score = evaluate_agent(run, name, args.real_episodes, video=False, progress=False)
        row = {
            "pessimism": lam,
            "controller": name,
            "train_seconds": round(train_s, 1),
            "dream_single": dream_score(single, run, name, args.score_rollouts, tau, steps),
            "dream_ensemble": dream_score(
                plain_ensemble, run, name, args.score_rollouts, tau, steps
            ),
            "real": real_score["mean_return"],
            "real_std": real_score["std_return"],
            "real_catch_rate": real_score.get("catch_rate"),
        }
        row["gap_single"] = row["dream_single"] - row["real"]
        row["gap_ensemble"] = row["dream_ensemble"] - row["real"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    atomic_write_json(
        args.out,
        {
            "run": str(args.run),
            "members": plain_ensemble.num_members,
            "evolve": dataclasses.asdict(ecfg),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
