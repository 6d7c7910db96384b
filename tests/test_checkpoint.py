"""Checkpoints: exact round trips, and one clear error for each way a checkpoint can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreamlab.checkpoint import (
    MODEL_KINDS,
    CheckpointError,
    IncompatibleModelError,
    check_latents_compatible,
    check_vae_frames_compatible,
    load_model,
    load_optimizer,
    read_config,
    save_model,
    save_optimizer,
    weights_step,
)
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.models.vae import VAE, VAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL_VAE = VAEConfig(
    frame_size=16, z_dim=4, enc_channels=(8, 8), dec_channels=(8,), dec_kernels=(6, 6), dec_dense=16
)
SMALL_MDN = MDNRNNConfig(z_dim=4, action_dim=2, hidden_size=8, num_mixtures=2)


def test_vae_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = VAE(SMALL_VAE).eval()
    save_model(tmp_path, vae, step=7)
    loaded = load_model(tmp_path)
    assert isinstance(loaded, VAE) and loaded.config == SMALL_VAE
    assert isinstance(loaded.config.enc_channels, tuple)  # JSON lists become tuples again
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], vae(x)[0], rtol=0, atol=0)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["kind"] == "vae" and "dreamlab_version" in meta
    assert weights_step(tmp_path) == 7


def test_mdnrnn_round_trip_with_class_argument(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MDNRNN(SMALL_MDN)
    save_model(tmp_path, model, model.config, "mdnrnn")
    loaded = load_model(tmp_path, MDNRNN)
    z, a = torch.randn(2, 3, 4), torch.randn(2, 3, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, a).mu, model(z, a).mu, rtol=0, atol=0)
    assert read_config(tmp_path) == ("mdnrnn", SMALL_MDN)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path)
    save_model(tmp_path, VAE(SMALL_VAE))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model weights not found"):
        load_model(tmp_path)


def test_kind_mismatch(tmp_path: Path) -> None:
    save_model(tmp_path, VAE(SMALL_VAE))
    with pytest.raises(CheckpointError, match="holds a 'vae' model, expected 'mdnrnn'"):
        load_model(tmp_path, MDNRNN)


def test_unknown_kind_and_unknown_field(tmp_path: Path) -> None:
    save_model(tmp_path, VAE(SMALL_VAE))
    meta = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**meta, "kind": "no-such-model"}))
    with pytest.raises(CheckpointError, match="unknown model kind 'no-such-model'"):
        load_model(tmp_path)
    meta["config"]["latent_size"] = 3
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"unknown VAEConfig fields \['latent_size'\]"):
        load_model(tmp_path)


def test_weights_not_matching_config_name_the_tensor(tmp_path: Path) -> None:
    save_model(tmp_path, VAE(SMALL_VAE))
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["z_dim"] = 5
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"tensor 'fc_mu.weight' has shape \(4, 32\)"):
        load_model(tmp_path)
    meta["config"]["z_dim"] = 4
    meta["config"]["enc_channels"] = [8, 8, 8]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path)


def test_corrupt_files(tmp_path: Path) -> None:
    save_model(tmp_path, VAE(SMALL_VAE))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt model weights"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)


def test_optimizer_round_trip_continues_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    rng_state = torch.get_rng_state()
    save_optimizer(tmp_path, opt, step=3, extra={"rng": rng_state})
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1.0)
    step, extra = load_optimizer(tmp_path, twin_opt)
    assert step == 3 and torch.equal(extra["rng"], rng_state)
    assert twin_opt.param_groups[0]["lr"] == 0.1
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    torch.testing.assert_close(twin.weight, model.weight, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="parameter groups"):
        load_optimizer(tmp_path, torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]))
    with pytest.raises(CheckpointError, match="SGD"):
        load_optimizer(tmp_path, torch.optim.SGD(twin.parameters(), lr=0.1))


def test_no_pickle_in_checkpoint_files(tmp_path: Path) -> None:
    save_model(tmp_path, MDNRNN(SMALL_MDN))
    save_optimizer(tmp_path, torch.optim.AdamW(MDNRNN(SMALL_MDN).parameters()), step=0)
    for f in tmp_path.iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f  # pickle protocol marker
        assert not f.read_bytes().startswith(b"PK"), f  # torch.save zip archive


def test_registry_holds_v_m_and_c() -> None:
    assert MODEL_KINDS["vae"] == (VAEConfig, VAE)
    assert MODEL_KINDS["mdnrnn"] == (MDNRNNConfig, MDNRNN)
    assert "controller" in MODEL_KINDS  # loadable without importing the CMA-ES trainer


def test_compatibility_errors_name_both_sides() -> None:
    check_vae_frames_compatible(
        SMALL_VAE, (16, 16, 3), vae_source="runs/a/vae", data_source="runs/a/data"
    )
    with pytest.raises(
        IncompatibleModelError, match=r"runs/a/vae.*\(16, 16, 3\).*runs/b/data.*\(64, 64, 3\)"
    ):
        check_vae_frames_compatible(
            SMALL_VAE, (64, 64, 3), vae_source="runs/a/vae", data_source="runs/b/data"
        )
    check_latents_compatible(SMALL_MDN, 4, 2, model_source="m", data_source="latents")
    with pytest.raises(IncompatibleModelError, match="z_dim 4.*latents of size 32"):
        check_latents_compatible(SMALL_MDN, 32, model_source="m", data_source="latents")
    with pytest.raises(IncompatibleModelError, match="action_dim 2.*size 3"):
        check_latents_compatible(SMALL_MDN, 4, 3, model_source="m", data_source="latents")
