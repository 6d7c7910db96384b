"""Catch throughput: env steps per second on one core, random actions, median of several runs.

    .venv/bin/python benchmarks/bench_catch.py            # table on stdout
    .venv/bin/python benchmarks/bench_catch.py --steps 50000 --runs 7

Rows: the bare ``CatchEnv``, and ``make_env("catch")`` (Gymnasium's checker/order wrappers, the
time limit and dreamlab's frame stack), continuous and discrete. Actions are drawn before the
clock starts so the number is the env's, not the sampler's. Episodes are reset when they end
(the reset is timed too).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import tyro

from dreamlab.envs import CatchEnv, make_env


@dataclass
class BenchConfig:
    """Catch throughput benchmark."""

    steps: int = 20_000
    """env steps per run"""
    runs: int = 5
    """timed runs per row; the median is reported"""
    seed: int = 0
    """seed of the env and of the pre-drawn actions"""


def steps_per_second(env: gym.Env[Any, Any], steps: int, seed: int) -> float:
    """Time ``steps`` env steps with pre-drawn random actions; returns steps per second."""
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(steps)]
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main(config: BenchConfig) -> list[tuple[str, float]]:
    """Run every row and print the table; returns ``(row, median steps/s)`` pairs."""
    rows = {
        "CatchEnv continuous": lambda: CatchEnv(),
        "CatchEnv discrete": lambda: CatchEnv(discrete=True),
        "make_env('catch')": lambda: make_env("catch"),
        "make_env('catch-discrete')": lambda: make_env("catch-discrete"),
    }
    results = []
    print(f"Catch steps/s, random actions, median of {config.runs} runs x {config.steps} steps")
    print(f"{'env':<28} {'steps/s':>10} {'min':>10} {'max':>10}")
    for name, factory in rows.items():
        env = factory()
        timings = [steps_per_second(env, config.steps, config.seed + r) for r in range(config.runs)]
        median = statistics.median(timings)
        results.append((name, median))
        print(f"{name:<28} {median:>10,.0f} {min(timings):>10,.0f} {max(timings):>10,.0f}")
        env.close()
    return results


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
