"""How C is trained in the catch-test pipeline, compared over seeds (BENCHMARKS.md, issue 28).

Each seed's V and M (round 0) are trained once into ``OUT/base_S``; each recipe copies them,
changes the run settings it names, trains C, one round of the iterative procedure and C again,
and plays 50 real episodes (250 balls) with random play, round 0's C and the final C. One JSON
line per (recipe, seed) goes to ``OUT/results.jsonl``; a recipe and seed already there is
skipped, so a killed sweep resumes. At the end: C - random per recipe (min / median / max).

    .venv/bin/python benchmarks/catch_recipes.py --recipes before keep keep_bf16 --seeds 10 \
        --out /tmp/catch-recipes
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEMO = {"controller_normalize": True, "dream_starts": "memory", "evolve.max_episode_steps": 40}
"""the demo's C recipe: 40-step dreams from any real frame with M's memory, standardized inputs"""
BEFORE = {
    "controller_normalize": False,
    "dream_starts": "first",
    "evolve.max_episode_steps": 80,
    "evolve.eval_rollouts": 64,
    "iterate_keep_best": False,
}
"""catch-test before issue 28: 80-step dreams from first frames, raw [z, h]"""
RECIPES: dict[str, dict[str, Any]] = {
    "before": BEFORE,
    "demo": {**BEFORE, **DEMO},
    "demo_bf16": {**BEFORE, **DEMO, "dream_precision": "bfloat16"},
    "big": {
        **BEFORE,
        **DEMO,
        "evolve.generations": 150,
        "evolve.eval_every": 25,
        "evolve.eval_rollouts": 512,
    },  # fmt: skip
    "demo_it2": {**BEFORE, **DEMO, "iterations": 2},
    "keep": {},  # the catch-test preset as it is: DEMO, 256-dream evaluations, iterate_keep_best
    "keep_bf16": {"dream_precision": "bfloat16"},
}


def _apply(cfg: Any, settings: dict[str, Any]) -> None:
    for key, value in settings.items():
        *parents, last = key.split(".")
        obj = cfg
        for name in parents:
            obj = getattr(obj, name)
        setattr(obj, last, value)


def run_recipe(name: str, seed: int, out: Path) -> dict[str, Any]:
    """Train and score recipe ``name`` on ``seed``'s V and M; returns its result line."""
    from dreamlab.generations.args import PipelineConfig
    from dreamlab.generations.vmc.evaluate import stage_evaluate
    from dreamlab.generations.vmc.pipeline import run_pipeline
    from dreamlab.generations.vmc.run import Run

    torch.set_num_threads(1)
    base = out / f"base_{seed}"
    if not (base / "rounds" / "0" / "mdnrnn" / "trainer.json").exists():
        run_pipeline(  # resumes a killed one
            PipelineConfig(
                run=base, preset="catch-test", seed=seed, iterations=1, until="mdnrnn",
                progress=False,
            )
        )  # fmt: skip
    path = out / f"{name}_{seed}"
    shutil.rmtree(path, ignore_errors=True)
    skip = shutil.ignore_patterns("controller*", "rounds", "eval.json", ".lock")
    shutil.copytree(base, path, ignore=skip)
    shutil.copytree(base / "rounds", path / "rounds", ignore=skip)  # round 0's M, not its C
    run = Run.open(path)
    _apply(run.config, RECIPES[name])
    run.save_config()
    run = run_pipeline(PipelineConfig(run=path, progress=False, until="iterate"))
    rounds = [f"controller_round{r}" for r in range(run.config.iterations)]
    played = ["random", *rounds, "controller"]
    agents = stage_evaluate(run, agents=played, episodes=50, progress=False)["agents"]
    return {
        "recipe": name,
        "settings": RECIPES[name],
        "seed": seed,
        "random": agents["random"]["catch_rate"],
        "rounds": [agents[r]["catch_rate"] for r in rounds],
        "C": agents["controller"]["catch_rate"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["keep"])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    parser.add_argument("--out", type=Path, default=Path("/tmp/catch-recipes"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    )
    for name in args.recipes:
        for seed in range(args.seeds):
            if any(r["recipe"] == name and r["seed"] == seed for r in done):
                continue
            record = run_recipe(name, seed, args.out)
            print(json.dumps(record), flush=True)
            with results.open("a") as f:
                f.write(json.dumps(record) + "\n")
            done.append(record)
    print("| recipe | seeds | C - random min | median | max | seeds <= 0.08 |")
    print("|---|---|---|---|---|---|")
    for name in args.recipes:
        diff = np.array([r["C"] - r["random"] for r in done if r["recipe"] == name])
        print(
            f"| {name} | {len(diff)} | {diff.min():.3f} | {np.median(diff):.3f} | "
            f"{diff.max():.3f} | {int((diff <= 0.08).sum())} |"
        )


if __name__ == "__main__":
    main()
