"""Does the planner decide in real time? Latency of one decision for ONE Catch env.

Real time for Catch here means at least 20 decisions per second (a 20 fps game), for a single
env: the planner observes the frame, searches ``population x iterations`` action sequences of
``horizon`` steps as one batched imagination, and acts. The world model has the demo's sizes
(V: the paper's VAE on 64x64 frames, z 32; M: LSTM 256, 5 mixtures, 1-D action); its weights are
loaded from a run if ``--run`` is given, else random (speed does not depend on the weights).

Every (threads, precision, setting) cell plays the same real Catch episode prefix and reports the
median milliseconds per decision over ``decisions`` decisions (the first few are warm-up).

Run: ``python benchmarks/bench_plan.py [--run runs/demo]``; prints a table and writes
``benchmarks/results/bench_plan.json``.
"""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro

from dreamlab.envs import make_env
from dreamlab.generations.vmc.worldmodel import VMWorldModel
from dreamlab.io import atomic_write_json
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.models.vae import VAE, VAEConfig
from dreamlab.plan.mpc import PlannerAgent, PlannerConfig


@dataclass
class BenchConfig:
    """Settings of the planning-latency benchmark."""

    run: Path | None = None
    """run directory whose V and M to load (default: random weights of the demo's sizes)"""
    settings: list[str] = field(default_factory=lambda: ["20x128x2", "12x256x4", "20x64x2"])
    """planner settings as HORIZONxPOPULATIONxITERATIONS (the first is the default)"""
    threads: list[int] = field(default_factory=lambda: [1, 2])
    """torch thread counts to measure"""
    precisions: list[str] = field(default_factory=lambda: ["float32", "bfloat16"])
    """VMWorldModel precisions ('bfloat16' runs M's matmuls under autocast)"""
    decisions: int = 30
    """decisions timed per cell (after 3 warm-up decisions)"""
    out: Path = Path("benchmarks/results/bench_plan.json")
    """where to write the results"""


def world_model(cfg: BenchConfig, precision: str) -> VMWorldModel:
    env = make_env("catch")
    if cfg.run is not None:
        from dreamlab.generations.vmc.run import Run

        run = Run.open(cfg.run)
        vae, mdnrnn = run.vae(), run.mdnrnn()
    else:
        vae = VAE(VAEConfig(foreground_weight=10.0))
        mdnrnn = MDNRNN(MDNRNNConfig(action_dim=1))
    return VMWorldModel(vae, mdnrnn, env.action_space, precision=precision)  # type: ignore[arg-type]


def time_cell(cfg: BenchConfig, precision: str, setting: str) -> float:
    """Median seconds per decision for one env."""
    horizon, population, iterations = (int(v) for v in setting.split("x"))
    env = make_env("catch")
    agent = PlannerAgent(
        world_model(cfg, precision),
        env.action_space,
        PlannerConfig(horizon=horizon, population=population, iterations=iterations),
    )
    obs, _ = env.reset(seed=0)
    state = None
    for t in range(3 + cfg.decisions):
        action, state = agent.predict(obs, state, np.array([t == 0]))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    return statistics.median(agent.call_seconds[3:])


def main(cfg: BenchConfig) -> None:
    rows = []
    print(
        "| threads | precision | horizon x population x iterations | ms / decision | decisions/s |"
    )
    print("|---|---|---|---|---|")
    for threads in cfg.threads:
        torch.set_num_threads(threads)
        for precision in cfg.precisions:
            for setting in cfg.settings:
                seconds = time_cell(cfg, precision, setting)
                rows.append(
                    {
                        "threads": threads,
                        "precision": precision,
                        "setting": setting,
                        "ms_per_decision": 1000 * seconds,
                        "decisions_per_s": 1 / seconds,
                    }
                )
                print(
                    f"| {threads} | {precision} | {setting} | {1000 * seconds:.1f} | "
                    f"{1 / seconds:.1f} |",
                    flush=True,
                )
    atomic_write_json(
        cfg.out,
        {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
            "torch": torch.__version__,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
