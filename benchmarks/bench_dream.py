"""How much faster is the batched dream than reality? Env-steps per second, same script run.

Real: gymnasium ``CarRacing-v3`` (state pixels, random actions, one env, the usual way CMA-ES
workers step it). Dream: :class:`dreamlab.dream.DreamVecEnv` over a V+M with the paper's
CarRacing sizes (z 32, LSTM 256, K 5, action 3), N parallel dreams, the batched controller acting
for a population (P candidates x R rollouts, one ``bmm``), i.e. exactly what
:class:`dreamlab.train.dream_evaluator.DreamEvaluator` runs per CMA-ES generation. Weights are
untrained: speed does not depend on them. Terminations are disabled (a dream ends only at the
step limit) so every step does full work.

Run: ``python benchmarks/bench_dream.py [--device cuda] [--num-dreams 4096]``; prints a table
and writes ``benchmarks/results/bench_dream.json``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro

from dreamlab.dream import DreamVecEnv
from dreamlab.generations.vmc.worldmodel import VMWorldModel
from dreamlab.io import atomic_write_json
from dreamlab.models.controller import Controller, ControllerConfig
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.models.vae import VAE, VAEConfig


@dataclass
class BenchConfig:
    """Settings of the dream-vs-reality speed benchmark."""

    num_dreams: list[int] = field(default_factory=lambda: [1024, 4096])
    """parallel dream sizes to measure (population x rollouts, e.g. 64 x 16 = 1024)"""
    precisions: list[str] = field(default_factory=lambda: ["float32", "bfloat16"])
    """VMWorldModel precisions to measure ('bfloat16' = M's matmuls under autocast)"""
    dream_steps: int = 50
    """dream steps per timed repeat"""
    real_steps: int = 300
    """real CarRacing steps per timed repeat"""
    repeats: int = 3
    """timed repeats; the median is reported"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """device of the dream ('cuda' or 'cpu')"""
    threads: int = 0
    """torch CPU threads (0 = torch's default)"""
    out: Path = Path("benchmarks/results/bench_dream.json")
    """where to write the JSON results"""


def real_steps_per_second(steps: int, seed: int) -> float:
    """Random-action CarRacing-v3 steps per second (reset time excluded)."""
    env = gym.make("CarRacing-v3")
    env.action_space.seed(seed)
    env.reset(seed=seed)
    env.step(env.action_space.sample())  # first frame builds the track render caches
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - t0
    env.close()
    return steps / elapsed


def make_dream(num_dreams: int, device: str, precision: str) -> tuple[DreamVecEnv, Controller]:
    torch.manual_seed(0)
    vae = VAE(VAEConfig(z_dim=32))
    mdn = MDNRNN(MDNRNNConfig(z_dim=32, action_dim=3, hidden_size=256, num_mixtures=5))
    with torch.no_grad():
        mdn.termination_head.bias.fill_(-1e4)  # never terminate: every step does full work
    space = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))
    wm = VMWorldModel(vae, mdn, space, precision=precision).to(device)  # type: ignore[arg-type]
    bank = {"mu": torch.randn(256, 32), "logvar": torch.full((256, 32), -2.0)}
    env = DreamVecEnv(
        wm, bank, space, num_dreams, temperature=1.0, max_episode_steps=10**9, autoreset=True
    )
    controller = Controller(ControllerConfig(feature_dim=288, action_dim=3, mapping="carracing"))
    return env, controller.to(device)


def dream_steps_per_second(num_dreams: int, steps: int, device: str, precision: str) -> float:
    """Env-steps per second of ``num_dreams`` parallel dreams driven by a population of C."""
    env, controller = make_dream(num_dreams, device, precision)
    rollouts = 16
    candidates = max(1, num_dreams // rollouts)
    params = torch.randn(candidates, controller.num_params, device=device) * 0.1  # (P, D)
    with torch.inference_mode():
        obs = env.reset_tensor(seed=0)

        def run(n: int) -> torch.Tensor:
            o = obs
            for _ in range(n):
                act = controller.population_forward(params, o.view(candidates, -1, 288))
                o = env.step_tensor(act.reshape(num_dreams, 3))[0]
            return o

        run(3)  # warm-up (allocations, cuBLAS handles)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(steps)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    return num_dreams * steps / elapsed


def main(cfg: BenchConfig) -> dict[str, object]:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # Real and dream are measured alternately within each repeat and the ratio is taken per
    # repeat, so load from other processes on a shared machine hits both sides alike.
    real: list[float] = []
    dream: dict[tuple[str, int], list[float]] = {
        (p, n): [] for p in cfg.precisions for n in cfg.num_dreams
    }
    ratios: dict[tuple[str, int], list[float]] = {key: [] for key in dream}
    for i in range(cfg.repeats):
        before = real_steps_per_second(cfg.real_steps, seed=i)
        for precision, n in dream:
            sps = dream_steps_per_second(n, cfg.dream_steps, cfg.device, precision)
            dream[(precision, n)].append(sps)
        after = real_steps_per_second(cfg.real_steps, seed=i)
        real_i = (before + after) / 2
        real.append(real_i)
        for key in dream:
            ratios[key].append(dream[key][-1] / real_i)
    rows = [
        {
            "precision": precision,
            "num_dreams": n,
            "dream_steps_per_s": dream[(precision, n)],
            "dream_median": statistics.median(dream[(precision, n)]),
            "ratios": ratios[(precision, n)],
            "ratio_median": statistics.median(ratios[(precision, n)]),
        }
        for precision, n in dream
    ]
    real_median = statistics.median(real)
    result: dict[str, object] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu",
            "load_average_1min": os.getloadavg()[0],
        },
        "real_carracing_steps_per_s": real,
        "real_median": real_median,
        "dream": rows,
        "target_ratio": 2000,
    }
    print(f"real CarRacing-v3: {real_median:,.0f} steps/s (median of {cfg.repeats})")
    print(f"{'precision':>10} {'dreams':>8} {'dream steps/s':>15} {'x real':>9}")
    for row in rows:
        print(
            f"{row['precision']:>10} {row['num_dreams']:>8} {row['dream_median']:>15,.0f} "
            f"{row['ratio_median']:>9,.0f}"
        )
    print(f"machine: {result['machine']}")
    atomic_write_json(cfg.out, result)
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
