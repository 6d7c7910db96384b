"""Encode a frame store into a latent store: the data the MDN-RNN trains on.

The latent store sits beside the frames (``runs/NAME/latents``) and holds, per episode, the
posterior ``mu`` and ``logvar`` of every observation (``(T+1, Z)`` float32) plus copies of
``action``, ``reward``, ``terminated`` and ``truncated``. Storing the posterior rather than one
sample lets the MDN-RNN re-sample ``z`` every batch, as the original code does.

Encoding is resumable: episodes already in the latent store are skipped, and each episode is
written atomically, so an encode killed at any moment (even by SIGKILL) leaves a readable store
that a rerun completes without duplicating or losing an episode. A fingerprint of the VAE's
weights is kept in the store's metadata so that a resumed encode can never mix latents of two
different VAEs in one store. Every call says in one line what it did (resumed, encoded, or found
nothing to do).
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dreamlab.checkpoint import IncompatibleModelError, check_vae_frames_compatible
from dreamlab.data.schema import StoreError, StoreMeta, latent_schema
from dreamlab.data.store import EpisodeStore
from dreamlab.models import frames_to_tensor
from dreamlab.models.vae import VAE
from dreamlab.progress import tqdm

__all__ = ["LATENT_KIND", "encode_frames", "encode_store", "vae_fingerprint"]

LATENT_KIND = "latents"
"""``StoreMeta.kind`` of a latent store."""


def vae_fingerprint(vae: VAE) -> str:
    """SHA-256 (hex, first 16 chars) of the VAE's config and weights; equal iff same model."""
    h = hashlib.sha256(repr(vae.config).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_frames(
    vae: VAE, frames: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior parameters of uint8 frames, in chunks of ``batch_size``.

    Args:
        vae: the encoder (used in eval mode; its mode is restored afterwards).
        frames: uint8 ``(N, H, W, 3)``.
        batch_size: frames per forward pass (bounds memory).

    Returns:
        ``(mu, logvar)``, each float32 ``(N, Z)``.
    """
    device = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    mus, logvars = [], []
    try:
        for start in range(0, len(frames), batch_size):
            # Store arrays are read-only memory maps; torch needs a writable copy.
            chunk = np.array(frames[start : start + batch_size], copy=True)  # (b, H, W, 3)
            x = frames_to_tensor(torch.from_numpy(chunk), device=device)  # (b, 3, H, W)
            mu, logvar = vae.encode(x)  # (b, Z) each
            mus.append(mu.float().cpu().numpy())
            logvars.append(logvar.float().cpu().numpy())
    finally:
        vae.train(was_training)
    return np.concatenate(mus), np.concatenate(logvars)


def encode_store(
    vae: VAE,
    obs_store: EpisodeStore,
    out_path: str | Path,
    batch_size: int = 256,
    *,
    vae_source: str = "the VAE",
    progress: bool = True,
) -> EpisodeStore:
    """Encode every episode of ``obs_store`` into a latent store at ``out_path``.

    Args:
        vae: trained VAE whose ``frame_size`` matches the store's frames.
        obs_store: store with an ``obs`` array ``(T+1, H, W, 3) uint8``.
        out_path: latent store directory (created, or opened and completed if it exists).
        batch_size: frames per forward pass.
        vae_source: how to name the VAE in errors (e.g. its checkpoint directory).
        progress: show a progress bar over episodes.

    Returns:
        The latent store (``kind="latents"``; arrays ``mu``, ``logvar``, ``action``, ``reward``,
        ``terminated``, ``truncated``).

    Raises:
        IncompatibleModelError: frames do not fit the VAE, or ``out_path`` holds latents of a
            different VAE.
        StoreError: ``out_path`` holds an incompatible store.
    """
    if batch_size < 1:
        raise ValueError(f"encode_store: batch_size must be >= 1, got {batch_size}")
    obs_shape = obs_store.meta.obs_shape
    if obs_shape is None:
        raise StoreError(f"{obs_store.path}: store has no 'obs' array to encode")
    check_vae_frames_compatible(
        vae.config, obs_shape, vae_source=vae_source, data_source=str(obs_store.path)
    )
    fingerprint = vae_fingerprint(vae)
    src = obs_store.meta
    meta = StoreMeta(
        env_id=src.env_id,
        schema=latent_schema(vae.config.z_dim, src.action_space),
        action_space=dict(src.action_space),
        kind=LATENT_KIND,
        preset=src.preset,
        extra={
            "source_store": str(Path(obs_store.path).resolve()),
            "vae_fingerprint": fingerprint,
            "z_dim": vae.config.z_dim,
        },
    )
    out = EpisodeStore.open_or_create(out_path, meta)
    existing = out.meta.extra.get("vae_fingerprint")
    if existing != fingerprint:
        raise IncompatibleModelError(
            f"{out.path}: latents were encoded by a VAE with fingerprint {existing}, but "
            f"{vae_source} has fingerprint {fingerprint}; delete {out.path} to re-encode"
        )
    done = set(out.indices)
    todo = [i for i in obs_store.indices if i not in done]
    total = len(obs_store.indices)
    if not todo:
        print(
            f"latents are complete ({total} of {total} episodes) at {out.path}; remove it to "
            "encode again",
            file=sys.stderr,
            flush=True,
        )
        return out
    if len(todo) < total:
        print(
            f"resuming encode at episode {total - len(todo)} of {total} ({out.path})",
            file=sys.stderr,
            flush=True,
        )
    t0 = time.perf_counter()
    per_step = ("action", "reward", "terminated", "truncated")
    with tqdm(
        todo, desc="encode", unit="ep", disable=not progress, initial=total - len(todo), total=total
    ) as bar:
        for index in bar:
            episode = obs_store.episode(index)
            mu, logvar = encode_frames(vae, episode["obs"], batch_size)  # (T+1, Z) each
            per_step_arrays = {k: np.asarray(episode[k]) for k in per_step}
            arrays = {"mu": mu, "logvar": logvar, **per_step_arrays}
            out.append(arrays, index=index, info={"source_episode": str(index)})
    print(
        f"encode: {len(todo)} episodes in {time.perf_counter() - t0:.1f} s, {total} of {total} "
        f"at {out.path}",
        file=sys.stderr,
        flush=True,
    )
    return out
