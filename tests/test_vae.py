"""V: shapes at several frame sizes, the KL floor, the frame/action helpers, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamlab.models import actions_to_tensor, frames_to_tensor
from dreamlab.models.vae import VAE, VAEConfig, kl_divergence

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**overrides: object) -> VAEConfig:
    """A 16x16 VAE small enough to train in about a second on one core."""
    base = dict(
        frame_size=16,
        z_dim=4,
        enc_channels=(16, 32),
        dec_channels=(32,),
        dec_kernels=(6, 6),
        dec_dense=64,
    )
    base.update(overrides)
    return VAEConfig(**base)  # type: ignore[arg-type]


def moving_squares(n: int, size: int = 16, side: int = 6, seed: int = 0) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 frames of one coloured square at random positions."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, size, size, 3), np.uint8)
    xs = rng.integers(0, size - side + 1, n)
    ys = rng.integers(0, size - side + 1, n)
    for i in range(n):
        frames[i, ys[i] : ys[i] + side, xs[i] : xs[i] + side] = (255, 200, 50)
    return frames


def test_paper_architecture_shapes_at_64() -> None:
    torch.manual_seed(0)
    vae = VAE()
    assert vae.flat_dim == 1024  # 256 x 2 x 2, as in the paper
    assert vae.dec_start == 1 and vae.dec_out_size == 64
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        recon, mu, logvar = vae(x)
    assert recon.shape == (2, 3, 64, 64)
    assert mu.shape == logvar.shape == (2, 32)
    assert 0.0 <= float(recon.min()) and float(recon.max()) <= 1.0
    assert vae.decode(mu).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("size", [32, 96])
def test_other_frame_sizes_round_trip_to_their_own_size(size: int) -> None:
    cfg = VAEConfig(
        frame_size=size, enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8), dec_dense=32
    )
    vae = VAE(cfg)
    recon, mu, _ = vae(torch.rand(2, 3, size, size))
    assert recon.shape == (2, 3, size, size)
    assert mu.shape == (2, 32)
    if size == 32:
        assert vae.enc_padding == 1  # unpadded convs would shrink 32 px to nothing
    if size == 96:
        assert vae.dec_start == 3 and vae.dec_out_size == 96  # exact, no crop


def test_encode_rejects_wrong_frame_size() -> None:
    vae = VAE(tiny_config())
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        vae.encode(torch.rand(2, 3, 32, 32))


def test_frames_to_tensor_layout_and_range() -> None:
    frames = np.zeros((2, 5, 4, 3), np.uint8)
    frames[1, 2, 3] = (255, 0, 51)
    x = frames_to_tensor(frames)
    assert x.shape == (2, 3, 5, 4) and x.dtype == torch.float32
    assert x[1, :, 2, 3].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert frames_to_tensor(np.zeros((7, 2, 5, 4, 3), np.uint8)).shape == (7, 2, 3, 5, 4)
    with pytest.raises(ValueError, match="uint8"):
        frames_to_tensor(np.zeros((2, 5, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, 3\)"):
        frames_to_tensor(np.zeros((2, 3, 5, 4), np.uint8))


def test_actions_to_tensor() -> None:
    one_hot = actions_to_tensor(np.array([[0, 2], [1, 1]]), "discrete", 3)
    assert one_hot.shape == (2, 2, 3)
    assert one_hot[0, 1].tolist() == [0.0, 0.0, 1.0]
    cont = actions_to_tensor(np.full((4, 2), 0.5), "continuous", 2)
    assert cont.dtype == torch.float32 and cont.shape == (4, 2)
    with pytest.raises(ValueError, match="out of range"):
        actions_to_tensor(np.array([3]), "discrete", 3)
    with pytest.raises(ValueError, match="integer"):
        actions_to_tensor(np.array([0.5]), "discrete", 3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        actions_to_tensor(np.zeros((4, 3)), "continuous", 2)
    with pytest.raises(ValueError, match="space_kind"):
        actions_to_tensor(np.zeros(2), "multibinary", 2)  # type: ignore[arg-type]


def test_kl_floor_holds_below_tolerance_and_has_no_gradient() -> None:
    vae = VAE(tiny_config(kl_tolerance=0.5))  # floor = 0.5 * 4 = 2 nats per sample
    mu = torch.full((3, 4), 0.1, requires_grad=True)
    logvar = torch.zeros(3, 4, requires_grad=True)
    floored, raw = vae.kl_term(mu, logvar)
    assert float(raw.detach()) == pytest.approx(0.5 * 4 * 0.01)
    assert float(floored.detach()) == pytest.approx(2.0)
    floored.backward()
    assert mu.grad is not None and float(mu.grad.abs().max()) == 0.0

    big_mu = torch.full((3, 4), 2.0)
    floored, raw = vae.kl_term(big_mu, torch.zeros(3, 4))
    assert float(floored) == pytest.approx(float(raw)) == pytest.approx(8.0)

    no_floor = VAE(tiny_config(kl_tolerance=0.0))
    floored, raw = no_floor.kl_term(mu.detach(), logvar.detach())
    assert float(floored) == pytest.approx(float(raw))


def test_kl_divergence_matches_closed_form() -> None:
    mu = torch.tensor([[1.0, -2.0]])
    logvar = torch.tensor([[0.5, -1.0]])
    expected = 0.5 * sum(np.exp(lv) + m**2 - 1 - lv for m, lv in [(1.0, 0.5), (-2.0, -1.0)])
    assert float(kl_divergence(mu, logvar)[0]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("recon_loss", ["mse_sum", "bce"])
def test_compute_loss_metrics(recon_loss: str) -> None:
    vae = VAE(tiny_config(recon_loss=recon_loss))
    loss, metrics = vae.compute_loss({"obs": torch.as_tensor(moving_squares(4))})
    assert set(metrics) >= {"loss", "recon", "kl", "kl_loss"}
    assert metrics["loss"] == pytest.approx(metrics["recon"] + metrics["kl_loss"], rel=1e-5)
    assert loss.requires_grad
    with pytest.raises(KeyError, match="obs"):
        vae.compute_loss({"frames": torch.zeros(1)})


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="dec_kernels"):
        VAEConfig(dec_kernels=(5, 5, 6))
    with pytest.raises(ValueError, match="recon_loss"):
        VAEConfig(recon_loss="l1")  # type: ignore[arg-type]


def test_vae_learns_moving_squares() -> None:
    torch.manual_seed(0)
    frames = moving_squares(256)
    vae = VAE(tiny_config())
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    rng = np.random.default_rng(1)
    first = None
    for _ in range(400):
        batch = {"obs": torch.as_tensor(frames[rng.integers(0, len(frames), 32)])}
        loss, metrics = vae.compute_loss(batch)
        first = metrics["recon"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    x = frames_to_tensor(frames)
    with torch.no_grad():
        recon, _, _ = vae(x)
    mse = float(((recon - x) ** 2).mean())
    # Predicting the mean image is what a VAE that ignores its input can do at best.
    mean_image_mse = float(((x - x.mean(0, keepdim=True)) ** 2).mean())
    assert metrics["recon"] < 0.25 * first
    assert mse < 0.3 * mean_image_mse, (mse, mean_image_mse)


def test_pixel_weights_mark_objects_not_background() -> None:
    vae = VAE(tiny_config(foreground_weight=9.0))
    frames = moving_squares(4, side=3)
    frames[frames.sum(-1) == 0] = (12, 12, 28)  # a coloured background, as Catch has
    w = vae.pixel_weights(frames_to_tensor(frames))  # (4, 1, 16, 16)
    square = torch.as_tensor(frames.sum(-1) > 200)[:, None]
    assert torch.all(w[square] == 10.0)
    assert torch.all(w[~square] == 1.0)


def dots(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """Frames with a fixed bar (easy to learn) and a 1-pixel dot anywhere (hard to learn)."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, size, size, 3), np.uint8)
    frames[:, -2:, 4:12] = (70, 170, 250)
    ys, xs = rng.integers(0, size - 2, n), rng.integers(0, size, n)
    frames[np.arange(n), ys, xs] = (250, 210, 60)
    return frames


def _dot_error(foreground_weight: float) -> float:
    torch.manual_seed(0)
    frames = dots(512)
    vae = VAE(tiny_config(z_dim=8, foreground_weight=foreground_weight))
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    rng = np.random.default_rng(1)
    for _ in range(800):
        loss, _ = vae.compute_loss({"obs": torch.as_tensor(frames[rng.integers(0, 512, 32)])})
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    x = frames_to_tensor(frames)
    with torch.no_grad():
        recon, _, _ = vae(x)
    dot = torch.as_tensor(frames[..., 0] > 200)  # (N, 16, 16)
    return float(((recon - x) ** 2).sum(1)[dot].mean())


def test_foreground_weight_learns_small_objects_the_plain_loss_drops() -> None:
    plain, weighted = _dot_error(0.0), _dot_error(20.0)
    # A missed dot costs about 1.5 (squared error summed over channels).
    assert plain > 1.0, plain
    assert weighted < 0.25 * plain, (plain, weighted)
