"""Encoding a frame store into latents (exact, resumable, guarded), and the store-backed batch
sources that feed :func:`dreamlab.train.fit`."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamlab.checkpoint import IncompatibleModelError
from dreamlab.data import EpisodeStore, StoreError, StoreMeta
from dreamlab.models import frames_to_tensor
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.models.vae import VAE, VAEConfig
from dreamlab.train.batches import frame_batches, sequence_batches
from dreamlab.train.encode import encode_store
from dreamlab.train.fit import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")


ACTION = {"type": "Discrete", "n": 3, "start": 0}
TINY_VAE = VAEConfig(
    frame_size=16, z_dim=4, enc_channels=(8, 8), dec_channels=(8,), dec_kernels=(6, 6), dec_dense=16
)


def make_obs_store(path: Path, lengths: list[int], size: int = 16) -> EpisodeStore:
    store = EpisodeStore.create(path, StoreMeta.for_env("test/Env-v0", (size, size, 3), ACTION))
    rng = np.random.default_rng(0)
    for n in lengths:
        store.append(
            {
                "obs": rng.integers(0, 256, (n + 1, size, size, 3), dtype=np.uint8),
                "action": rng.integers(0, 3, n),
                "reward": rng.normal(size=n).astype(np.float32),
                "terminated": np.arange(n) == n - 1,
                "truncated": np.zeros(n, bool),
            }
        )
    return store


@pytest.fixture
def obs_store(tmp_path: Path) -> EpisodeStore:
    return make_obs_store(tmp_path / "data", [5, 9, 3])


def test_encode_writes_posteriors_and_copies_transitions(
    obs_store: EpisodeStore, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    vae = VAE(TINY_VAE).train()
    latents = encode_store(vae, obs_store, tmp_path / "latents", batch_size=4, progress=False)
    assert vae.training  # mode restored
    assert latents.meta.kind == "latents" and latents.indices == obs_store.indices
    assert set(latents.meta.schema) == {
        "mu",
        "logvar",
        "action",
        "reward",
        "terminated",
        "truncated",
    }
    for i in obs_store.indices:
        src, dst = obs_store.episode(i), latents.episode(i)
        assert dst["mu"].shape == dst["logvar"].shape == (len(src["obs"]), 4)
        assert dst["mu"].dtype == np.float32
        with torch.no_grad():
            mu, logvar = vae.eval().encode(frames_to_tensor(np.array(src["obs"])))
        vae.train()
        np.testing.assert_allclose(dst["mu"], mu.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dst["logvar"], logvar.numpy(), rtol=1e-5, atol=1e-6)
        for key in ("action", "reward", "terminated", "truncated"):
            np.testing.assert_array_equal(dst[key], src[key])


def test_encode_resumes_and_refuses_another_vae(obs_store: EpisodeStore, tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = VAE(TINY_VAE)
    out = tmp_path / "latents"
    latents = encode_store(vae, obs_store, out, progress=False)
    kept = latents.episode_path(0).stat().st_mtime_ns
    latents.episode_path(1).unlink()  # as if killed before episode 1 was written
    latents = encode_store(vae, obs_store, out, progress=False)
    assert latents.indices == [0, 1, 2]
    assert latents.episode_path(0).stat().st_mtime_ns == kept  # not re-encoded

    with pytest.raises(IncompatibleModelError, match="fingerprint"):
        encode_store(VAE(TINY_VAE), obs_store, out, vae_source="runs/x/vae", progress=False)
    other_z = VAEConfig(**{**TINY_VAE.__dict__, "z_dim": 6})
    with pytest.raises(StoreError, match="incompatible store"):
        encode_store(VAE(other_z), obs_store, out, progress=False)


def test_encode_rejects_frames_of_another_size(tmp_path: Path) -> None:
    store = make_obs_store(tmp_path / "big", [2], size=32)
    with pytest.raises(IncompatibleModelError, match=r"runs/a/vae.*\(16, 16, 3\).*\(32, 32, 3\)"):
        encode_store(
            VAE(TINY_VAE), store, tmp_path / "latents", vae_source="runs/a/vae", progress=False
        )


def test_frame_batches_resume_mid_epoch(obs_store: EpisodeStore) -> None:
    stream = frame_batches(obs_store, batch_size=4, seed=3)
    assert stream.steps_per_epoch == obs_store.num_frames // 4  # type: ignore[attr-defined]
    straight = [b["obs"] for b in itertools.islice(stream(0), 9)]
    resumed = [b["obs"] for b in itertools.islice(stream(5), 4)]
    for a, b in zip(straight[5:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    first_epoch = np.concatenate(straight[: stream.steps_per_epoch])  # type: ignore[attr-defined]
    assert len({f.tobytes() for f in first_epoch}) == len(first_epoch)  # no repeats in an epoch


def test_latents_train_the_mdnrnn_end_to_end(obs_store: EpisodeStore, tmp_path: Path) -> None:
    torch.manual_seed(0)
    latents = encode_store(VAE(TINY_VAE), obs_store, tmp_path / "latents", progress=False)
    stream = sequence_batches(latents, seq_len=3, batch_size=4, seed=0)
    batch = next(stream(0))
    assert batch["mu"].shape == (4, 4, 4) and batch["action"].shape == (4, 3)
    model = MDNRNN(MDNRNNConfig(z_dim=4, action_dim=3, hidden_size=8, num_mixtures=2))
    cfg = TrainConfig(lr=1e-3, log_every=2, checkpoint_every=4, progress=False, tensorboard=False)
    result = fit(model, stream, cfg, tmp_path / "mdnrnn", total_steps=4, stage="mdnrnn")
    assert result.step == 4 and "mdnrnn/train/nll" in result.metrics
    assert (tmp_path / "mdnrnn" / "model.safetensors").is_file()


def test_sequence_batches_sample_several_stores_by_their_steps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = VAE(TINY_VAE)
    small = encode_store(
        vae, make_obs_store(tmp_path / "a", [6, 6]), tmp_path / "la", progress=False
    )
    # a first episode of another length sends the frames' generator elsewhere: no shared frames
    big = encode_store(
        vae, make_obs_store(tmp_path / "b", [3] + [6] * 6), tmp_path / "lb", progress=False
    )
    single = sequence_batches(small, seq_len=3, batch_size=4, seed=1)
    both = sequence_batches([small, big], seq_len=3, batch_size=64, seed=1)
    assert both.steps_per_epoch == (  # type: ignore[attr-defined]
        sequence_batches(small, 3, 64).steps_per_epoch  # type: ignore[attr-defined]
        + sequence_batches(big, 3, 64).steps_per_epoch  # type: ignore[attr-defined]
    )
    # a list of one store is the same stream as the store itself
    alone = sequence_batches([small], seq_len=3, batch_size=4, seed=1)
    np.testing.assert_array_equal(next(single(7))["mu"], next(alone(7))["mu"])
    small_mu = {row.tobytes() for i in small.indices for row in small.episode(i)["mu"]}
    from_small = []
    for batch in itertools.islice(both(0), 10):
        assert batch["mu"].shape == (64, 4, 4) and batch["action"].shape == (64, 3)
        from_small += [w[0].tobytes() in small_mu for w in batch["mu"]]
    # 2 of 8 equal episodes are in the small store: a quarter of the windows
    assert 0.15 < np.mean(from_small) < 0.35
    # resumable: batch s depends only on (seed, s)
    np.testing.assert_array_equal(next(both(4))["mu"], list(itertools.islice(both(0), 5))[4]["mu"])
