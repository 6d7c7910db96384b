"""V and M training throughput against the compute bound of this machine.

* matmul GFLOP/s: the best run of a large float32 ``torch.matmul`` (peak dense math);
* VAE: FLOPs per frame of one training step (forward + backward, counted with
  ``torch.utils.flop_counter.FlopCounterMode``), measured frames/s, and the bound
  ``matmul FLOP/s / FLOPs per frame``; the ratio is how much of the machine the VAE uses;
* MDN-RNN: the same for training timesteps/s (teacher-forced sequences; the fused LSTM
  kernel is invisible to the FLOP counter, so its FLOPs are added analytically);
* MDN-RNN ``step``: dream steps/s for many parallel dreams (the CMA-ES inner loop).

Each number is the median over ``--repeats`` timed runs after a warm-up.

    .venv/bin/python benchmarks/bench_models.py --threads 2
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import tyro
from torch.utils.flop_counter import FlopCounterMode

from dreamlab.io import atomic_write_json
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.models.vae import VAE, VAEConfig


@dataclass
class BenchConfig:
    """Model throughput benchmark settings."""

    device: str = "cpu"
    """torch device"""
    threads: int = 0
    """torch CPU threads (0 keeps torch's default)"""
    matmul_size: int = 2048
    """side of the square matrices timed for the compute bound"""
    vae_batch: int = 32
    """frames per VAE training step"""
    frame_size: int = 64
    """side of the square frames"""
    mdn_batch: int = 16
    """sequences per MDN-RNN training step"""
    seq_len: int = 100
    """steps per MDN-RNN training sequence"""
    dreams: int = 1024
    """parallel dreams for the step() benchmark"""
    action_dim: int = 3
    """action size (CarRacing has 3)"""
    iters: int = 5
    """training steps per timed run"""
    repeats: int = 3
    """timed runs per measurement (the median is reported)"""
    out: Path | None = None
    """also write the results as JSON here"""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timings(run: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    run()  # warm-up: allocator, kernels, caches
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _median_seconds(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    return statistics.median(_timings(run, repeats, device))


def matmul_gflops(n: int, repeats: int, device: torch.device) -> float:
    """Peak measured float32 GFLOP/s of an ``n x n @ n x n`` matmul (best of ``3 * repeats``).

    The best run, not the median, because the bound is what the machine can do when nothing
    else competes for it.
    """
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = min(_timings(lambda: torch.matmul(a, b), 3 * repeats, device))
    return 2 * n**3 / seconds / 1e9


def train_step_flops(model: VAE | MDNRNN, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one ``compute_loss`` + ``backward`` (conv, matmul, LSTM kernels)."""
    with FlopCounterMode(display=False) as counter:
        loss, _ = model.compute_loss(batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def lstm_flops_if_uncounted(model: MDNRNN, batch: int, seq_len: int) -> int:
    """Analytic forward + backward FLOPs of the LSTM when FlopCounterMode cannot see them.

    The fused LSTM kernel has no FLOP formula in ``FlopCounterMode`` (it reports 0); one step
    costs ``2 * 4H * (I + H)`` forward and about twice that backward.
    """
    lstm = model.lstm
    x = torch.zeros(batch, seq_len, lstm.input_size, device=next(lstm.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        lstm(x)
    if counter.get_total_flops() > 0:
        return 0
    per_step = 2 * 4 * lstm.hidden_size * (lstm.input_size + lstm.hidden_size)
    return 3 * per_step * batch * seq_len


def time_training(
    model: VAE | MDNRNN, batch: dict[str, torch.Tensor], cfg: BenchConfig, device: torch.device
) -> float:
    """Median seconds of one optimizer step (loss, backward, Adam)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def run() -> None:
        for _ in range(cfg.iters):
            loss, _ = model.compute_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return _median_seconds(run, cfg.repeats, device) / cfg.iters


def main(cfg: BenchConfig) -> dict[str, float]:
    """Run every measurement, print a table and return the numbers."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    gflops = matmul_gflops(cfg.matmul_size, cfg.repeats, device)

    vae = VAE(VAEConfig(frame_size=cfg.frame_size)).to(device).train()
    frames = torch.randint(
        0, 256, (cfg.vae_batch, cfg.frame_size, cfg.frame_size, 3), dtype=torch.uint8
    )
    vae_batch = {"obs": frames.to(device)}
    vae_flops = train_step_flops(vae, vae_batch) / cfg.vae_batch
    vae_rate = cfg.vae_batch / time_training(vae, vae_batch, cfg, device)

    mdn = MDNRNN(MDNRNNConfig(action_dim=cfg.action_dim)).to(device).train()
    b, t, z = cfg.mdn_batch, cfg.seq_len, mdn.config.z_dim
    mdn_batch = {
        "mu": torch.randn(b, t + 1, z, device=device),
        "logvar": torch.full((b, t + 1, z), -4.0, device=device),
        "action": torch.rand(b, t, cfg.action_dim, device=device),
        "reward": torch.randn(b, t, device=device),
        "terminated": torch.zeros(b, t, dtype=torch.bool, device=device),
    }
    mdn_flops = (train_step_flops(mdn, mdn_batch) + lstm_flops_if_uncounted(mdn, b, t)) / (b * t)
    mdn_rate = b * t / time_training(mdn, mdn_batch, cfg, device)

    mdn.eval()
    z0 = torch.randn(cfg.dreams, z, device=device)
    a0 = torch.rand(cfg.dreams, cfg.action_dim, device=device)

    def dream_steps() -> None:
        hidden = None
        zt = z0
        with torch.inference_mode():
            for _ in range(cfg.iters * 4):
                out = mdn.step(zt, a0, hidden)
                zt = MDNRNN.sample(out.logit_pi, out.mu, out.log_sigma, 1.15)
                hidden = out.hidden

    dream_rate = cfg.dreams * cfg.iters * 4 / _median_seconds(dream_steps, cfg.repeats, device)

    results = {
        "matmul_gflops": gflops,
        "vae_train_mflop_per_frame": vae_flops / 1e6,
        "vae_train_frames_per_s": vae_rate,
        "vae_bound_frames_per_s": gflops * 1e9 / vae_flops,
        "mdnrnn_train_mflop_per_step": mdn_flops / 1e6,
        "mdnrnn_train_steps_per_s": mdn_rate,
        "mdnrnn_bound_steps_per_s": gflops * 1e9 / mdn_flops,
        "mdnrnn_dream_steps_per_s": dream_rate,
    }
    threads = torch.get_num_threads()
    print(f"device {device}, {threads} threads, matmul {gflops:.1f} GFLOP/s ({cfg.matmul_size}^2)")
    print(f"{'model':<28}{'MFLOP/item':>12}{'measured/s':>14}{'bound/s':>14}{'of bound':>10}")
    rows = [
        ("VAE train (frames)", vae_flops, vae_rate, results["vae_bound_frames_per_s"]),
        ("MDN-RNN train (timesteps)", mdn_flops, mdn_rate, results["mdnrnn_bound_steps_per_s"]),
    ]
    for name, flops, rate, bound in rows:
        print(f"{name:<28}{flops / 1e6:>12.2f}{rate:>14.0f}{bound:>14.0f}{rate / bound:>10.0%}")
    print(
        f"{'MDN-RNN dream step()':<28}{'':>12}{dream_rate:>14.0f}  (batch {cfg.dreams}, tau 1.15)"
    )
    if cfg.out is not None:
        atomic_write_json(
            cfg.out, {"config": {k: str(v) for k, v in asdict(cfg).items()}, **results}
        )
    return results


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
