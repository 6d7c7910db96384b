"""Does V draw a small moving object? V alone at several foreground weights (BENCHMARKS.md, "An
own env that ends on failure", issue 29).

V trains on an episode store's frames at batch 32 for ``--steps`` steps per weight; every quarter
of the way it redraws 400 frames and reports the share of all foreground pixels drawn in their
colour (``foreground_recall``, what ``vae/foreground.json`` holds) and, for red objects (the
tests' ``Dodge`` rock), the share of red pixels drawn red. One JSON line per weight.

    .venv/bin/python benchmarks/v_foreground.py --data RUN/data --weights 8 20 --steps 2000 \
        --out /tmp/v-foreground
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dreamlab.data.sampling import FrameSampler
from dreamlab.data.store import EpisodeStore
from dreamlab.models import foreground_recall, frames_to_tensor
from dreamlab.models.vae import VAE, VAEConfig
from dreamlab.train.batches import frame_batches
from dreamlab.train.fit import TrainConfig, fit


@torch.inference_mode()
def measure(vae: VAE, frames: np.ndarray) -> dict[str, float]:
    """Foreground recall and the share of red-object pixels drawn red on ``frames``."""
    real = frames_to_tensor(frames)
    vae.eval()
    recon = torch.cat([vae(chunk)[0] for chunk in real.split(64)])
    vae.train()
    red = (real[:, 0] > 0.5) & (real[:, 2] < 0.5)  # (B, H, W)
    red_drawn = float((recon[:, 0][red] > 0.5).float().mean()) if red.any() else float("nan")
    return {"foreground_recall": foreground_recall(real, recon), "red_drawn": red_drawn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an episode store of frames")
    parser.add_argument("--weights", type=float, nargs="+", default=[8.0, 20.0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    store = EpisodeStore.open(args.data)
    frames = FrameSampler(store, 400, seed=args.seed + 1).sample()
    size = int(store.meta.obs_shape[0])
    for weight in args.weights:
        torch.manual_seed(args.seed)
        vae = VAE(VAEConfig(frame_size=size, z_dim=32, foreground_weight=weight))
        batches = frame_batches(store, 32, seed=args.seed)
        t0, curve = time.perf_counter(), []
        for quarter in range(1, 5):
            steps = args.steps * quarter // 4
            train = TrainConfig(
                steps=steps, batch_size=32, lr=1e-3, progress=False, tensorboard=False
            )
            fit(vae, batches, train, args.out / f"w{weight:g}", total_steps=steps, stage="vae")
            curve.append({"step": steps, **measure(vae, frames)})
        row = {"weight": weight, "curve": curve, "seconds": round(time.perf_counter() - t0)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
