"""The stages that learn V and M from real episodes: collect, vae, encode, mdnrnn.

Each works on a :class:`~dreamlab.generations.vmc.run.Run`, resumes where it stopped (or returns
at once when it is done), and adds its wall time to ``RUN/timings.json``. C's stages are in
:mod:`~dreamlab.generations.vmc.controller`, the iterative procedure's in
:mod:`~dreamlab.generations.vmc.iterate`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.sampling import FrameSampler
from dreamlab.data.store import EpisodeStore
from dreamlab.dream import frames_to_uint8
from dreamlab.generations.vmc.run import Run
from dreamlab.io import atomic_write_json
from dreamlab.models import foreground_mask, foreground_recall, frames_to_tensor
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.models.vae import VAE, VAEConfig
from dreamlab.rundir import timed
from dreamlab.train.batches import frame_batches, sequence_batches
from dreamlab.train.encode import encode_store
from dreamlab.train.fit import fit
from dreamlab.viz import save_image_grid

__all__ = [
    "FOREGROUND_FILE",
    "foreground_line",
    "mdnrnn_config",
    "stage_collect",
    "stage_encode",
    "stage_mdnrnn",
    "stage_vae",
    "vae_config",
    "vae_foreground",
]


def stage_collect(run: Run, progress: bool = True) -> Any:
    """Collect ``collect_episodes`` real episodes into ``data/`` (appends what is missing)."""
    cfg = run.config
    return timed(
        run.path,
        "collect",
        lambda: collect(
            CollectConfig(
                env=cfg.env,
                env_kwargs=dict(cfg.env_kwargs),
                out=run / "data",
                episodes=cfg.collect_episodes,
                policy=cfg.collect_policy,
                seed=cfg.seed,
                progress=progress,
            )
        ),
    )


def vae_config(run: Run) -> VAEConfig:
    """V's architecture: the run's, sized to the frames of its episodes."""
    frame_shape = run.data().meta.obs_shape
    return dataclasses.replace(run.config.vae, frame_size=int(frame_shape[0]))


def mdnrnn_config(run: Run) -> MDNRNNConfig:
    """M's architecture: the run's, sized to V's z and the env's actions."""
    space = run.action_space()
    action_dim = int(space.n) if hasattr(space, "n") else int(np.prod(space.shape))
    return dataclasses.replace(
        run.config.mdnrnn, z_dim=run.vae_config().z_dim, action_dim=action_dim
    )


def stage_vae(run: Run) -> Any:
    """Train V on shuffled frames of ``data/``; write reconstructions and learning curves."""
    cfg = run.config
    store = run.data()
    torch.manual_seed(cfg.seed)
    vae = VAE(vae_config(run))
    batches = frame_batches(store, cfg.vae_train.batch_size, seed=cfg.seed)
    total = cfg.vae_train.resolve_steps(store.num_frames)

    def train() -> Any:
        result = fit(vae, batches, cfg.vae_train, run / "vae", total_steps=total, stage="vae")
        real = FrameSampler(store, 10, seed=cfg.seed).sample()  # (10, H, W, 3)
        vae.eval()
        with torch.inference_mode():
            recon, _, _ = vae(frames_to_tensor(real))
        recon_u8 = frames_to_uint8(recon)  # (10, H, W, 3)
        save_image_grid(
            run / "vae" / "reconstructions.png", [real, recon_u8], labels=["real", "V(real)"]
        )
        vae_foreground(run, vae)
        return result

    return timed(run.path, "vae", train)


FOREGROUND_FILE = "vae/foreground.json"
"""how much of the frames' objects V draws (:func:`vae_foreground`)"""
FOREGROUND_RECALL_LOW = 0.8
"""below this share of the foreground pixels drawn, the run warns that V misses objects"""


@torch.inference_mode()
def vae_foreground(run: Run, vae: VAE, frames: int = 256) -> dict[str, Any]:
    """Does V draw the objects? The share of foreground pixels (off each frame's background
    colour) of ``frames`` real frames that V's reconstruction draws in their colour, into
    ``RUN/vae/foreground.json``; a warning line when it is under :data:`FOREGROUND_RECALL_LOW`
    (a small object V never learned: the dream cannot show it, so C cannot react to it)."""
    real = frames_to_tensor(FrameSampler(run.data(), frames, seed=run.config.seed + 1).sample())
    vae.eval()
    recon = torch.cat([vae(chunk)[0] for chunk in real.split(64)])
    recall = foreground_recall(real, recon)
    out = {
        "frames": int(real.shape[0]),
        "foreground_share": float(foreground_mask(real).float().mean()),
        "recall": None if np.isnan(recall) else recall,  # None: frames without objects
        "foreground_weight": run.config.vae.foreground_weight,
    }
    atomic_write_json(run / FOREGROUND_FILE, out)
    if out["recall"] is not None and out["recall"] < FOREGROUND_RECALL_LOW:
        print(f"[dreamlab] {foreground_line(out)}", flush=True)
    return out


def foreground_line(fg: dict[str, Any]) -> str:
    """One sentence on ``vae/foreground.json``."""
    if fg["recall"] is None:
        return "the frames have no foreground (no pixel off its frame's background colour)"
    said = (
        f"V draws {fg['recall']:.0%} of the foreground pixels ({fg['foreground_share']:.1%} of "
        f"the frame, foreground weight {fg['foreground_weight']:g})"
    )
    if fg["recall"] < FOREGROUND_RECALL_LOW:
        return (
            f"WARNING: {said}: V misses objects, so the dream cannot show them; raise "
            "vae.foreground_weight or V's steps"
        )
    return said


def stage_encode(run: Run, progress: bool = True) -> EpisodeStore:
    """Encode every episode with V into ``latents/`` (skips episodes already encoded)."""
    return timed(
        run.path,
        "encode",
        lambda: encode_store(
            run.vae(), run.data(), run / "latents", vae_source=str(run / "vae"), progress=progress
        ),
    )


def stage_mdnrnn(run: Run) -> Any:
    """Train M on sub-sequences of ``latents/`` (into ``rounds/0/mdnrnn/`` when the run
    iterates: the later rounds fine-tune it, see
    :func:`~dreamlab.generations.vmc.iterate.stage_iterate`)."""
    cfg = run.config
    latents = run.latents()
    torch.manual_seed(cfg.seed)
    model = MDNRNN(mdnrnn_config(run))  # M needs V's z size, not its weights
    batches = sequence_batches(
        latents, cfg.seq_len, cfg.mdnrnn_train.batch_size, seed=cfg.seed, pad_short=cfg.seq_pad
    )
    # One epoch = as many sequences as it takes to see every step once.
    total = cfg.mdnrnn_train.resolve_steps(max(1, latents.num_steps // cfg.seq_len))

    return timed(
        run.path,
        "mdnrnn",
        lambda: fit(
            model,
            batches,
            cfg.mdnrnn_train,
            run.round_dir(0) / "mdnrnn",
            total_steps=total,
            stage="mdnrnn",
        ),
    )
