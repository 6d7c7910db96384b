"""M: shapes of both mixture variants, step == forward, sampling temperature, stable NLL, learning."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig, mixture_nll

pytestmark = pytest.mark.usefixtures("one_thread")

Check = Callable[..., None]  # the check fixture (conftest.py)


def linear_dynamics(n: int, steps: int = 10, z_dim: int = 3, seed: int = 0, noise: float = 0.05):
    """Latent sequences ``z_{t+1} = z_t + a_t + noise`` with rule-based reward and termination.

    Returns a batch dict as the encode stage gives it (``logvar`` tiny so re-sampling is exact).
    """
    rng = np.random.default_rng(seed)
    action = rng.uniform(-0.5, 0.5, (n, steps, 1)).astype(np.float32)
    z = np.zeros((n, steps + 1, z_dim), np.float32)
    z[:, 0] = rng.normal(0.0, 1.0, (n, z_dim))
    for t in range(steps):
        z[:, t + 1] = z[:, t] + action[:, t] + rng.normal(0.0, noise, (n, z_dim))
    return {
        "mu": z,
        "logvar": np.full_like(z, math.log(1e-6)),
        "action": action,
        "reward": (2.0 * action[:, :, 0]).astype(np.float32),
        "terminated": action[:, :, 0] > 0.25,
    }


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items()}


@pytest.mark.parametrize("shared", [False, True])
def test_forward_and_step_shapes(shared: bool) -> None:
    cfg = MDNRNNConfig(
        z_dim=4, action_dim=2, hidden_size=16, num_mixtures=5, shared_mixture_weights=shared
    )
    model = MDNRNN(cfg)
    out = model(torch.randn(3, 7, 4), torch.randn(3, 7, 2))
    groups = 1 if shared else 4
    assert out.logit_pi.shape == (3, 7, groups, 5)
    assert out.mu.shape == out.log_sigma.shape == (3, 7, 4, 5)
    assert out.reward.shape == out.termination_logit.shape == (3, 7)
    assert out.hidden[0].shape == out.hidden[1].shape == (1, 3, 16)
    one = model.step(torch.randn(3, 4), torch.randn(3, 2))
    assert one.logit_pi.shape == (3, groups, 5)
    assert one.mu.shape == (3, 4, 5) and one.reward.shape == (3,)
    assert one.hidden[0].shape == (1, 3, 16)
    z = MDNRNN.sample(one.logit_pi, one.mu, one.log_sigma, 1.0)
    assert z.shape == (3, 4)


def test_step_by_step_equals_forward_over_a_sequence() -> None:
    torch.manual_seed(0)
    model = MDNRNN(MDNRNNConfig(z_dim=3, action_dim=2, hidden_size=8, num_mixtures=2))
    z, a = torch.randn(2, 5, 3), torch.randn(2, 5, 2)
    with torch.no_grad():
        seq = model(z, a)
        hidden = None
        for t in range(5):
            one = model.step(z[:, t], a[:, t], hidden)
            hidden = one.hidden
            torch.testing.assert_close(one.mu, seq.mu[:, t])
            torch.testing.assert_close(one.logit_pi, seq.logit_pi[:, t])
            torch.testing.assert_close(one.termination_logit, seq.termination_logit[:, t])
    torch.testing.assert_close(hidden[0], seq.hidden[0])
    torch.testing.assert_close(hidden[1], seq.hidden[1])


def test_input_shape_errors() -> None:
    model = MDNRNN(MDNRNNConfig(z_dim=3, action_dim=2, hidden_size=8))
    with pytest.raises(ValueError, match="z_dim 3"):
        model(torch.randn(2, 5, 4), torch.randn(2, 5, 2))
    with pytest.raises(ValueError, match="action"):
        model.step(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(KeyError, match="terminated"):
        model.compute_loss({"mu": 0, "logvar": 0, "action": 0, "reward": 0})


def test_sample_temperature() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 20000
    # Two components per dim: weights (0.8, 0.2), means (1, -3), sigma 0.5.
    logit_pi = torch.log(torch.tensor([0.8, 0.2])).expand(n, 2, 2)
    mu = torch.tensor([1.0, -3.0]).expand(n, 2, 2)
    log_sigma = torch.full((n, 2, 2), math.log(0.5))
    z = MDNRNN.sample(logit_pi, mu, log_sigma, 1.0, generator=gen)
    assert float(z.mean()) == pytest.approx(0.8 * 1 + 0.2 * -3, abs=0.05)
    assert float((z < -1).float().mean()) == pytest.approx(0.2, abs=0.02)
    # tau -> 0: the most likely component is always picked and the noise vanishes.
    cold = MDNRNN.sample(logit_pi, mu, log_sigma, 0.01, generator=gen)
    assert float((cold - 1.0).abs().max()) < 0.3
    assert float(cold.std()) == pytest.approx(0.5 * math.sqrt(0.01), rel=0.1)
    assert torch.equal(MDNRNN.sample(logit_pi, mu, log_sigma, 0.0), torch.ones(n, 2))
    # tau > 1 flattens the mixture: the rare component becomes more frequent.
    hot = MDNRNN.sample(logit_pi, mu, log_sigma, 3.0, generator=gen)
    assert float((hot < -1).float().mean()) > 0.3
    with pytest.raises(ValueError, match="temperature"):
        MDNRNN.sample(logit_pi, mu, log_sigma, -1.0)


def test_shared_sample_picks_one_component_for_all_dims() -> None:
    gen = torch.Generator().manual_seed(0)
    n, z_dim = 2000, 4
    logit_pi = torch.zeros(n, 1, 2)  # equal weights
    mu = torch.tensor([5.0, -5.0]).expand(n, z_dim, 2)
    log_sigma = torch.full((n, z_dim, 2), -5.0)
    z = MDNRNN.sample(logit_pi, mu, log_sigma, 1.0, generator=gen)
    same_sign = (z.sign() == z[:, :1].sign()).all(dim=1)
    assert bool(same_sign.all())
    assert 0.4 < float((z[:, 0] > 0).float().mean()) < 0.6


def test_mixture_nll_matches_gaussian_and_stays_finite() -> None:
    target = torch.tensor([[0.3, -1.0]])
    mu = torch.tensor([[[0.0], [1.0]]])  # (1, 2, 1): one component
    log_sigma = torch.log(torch.tensor([[[0.5], [2.0]]]))
    expected = (
        -torch.distributions.Normal(mu[..., 0], log_sigma.exp()[..., 0]).log_prob(target).mean()
    )
    nll = mixture_nll(target, torch.zeros(1, 2, 1), mu, log_sigma)
    assert float(nll[0]) == pytest.approx(float(expected), rel=1e-6)
    # Far-away targets and extreme logits would underflow a naive sum of probabilities.
    far = mixture_nll(
        torch.full((1, 2), 1e3),
        torch.tensor([[[50.0, -50.0]] * 2]),
        torch.zeros(1, 2, 2),
        torch.full((1, 2, 2), -3.0),
    )
    assert torch.isfinite(far).all() and float(far[0]) > 1e6


def test_discrete_actions_and_mask_in_compute_loss() -> None:
    torch.manual_seed(0)
    model = MDNRNN(MDNRNNConfig(z_dim=2, action_dim=3, hidden_size=8))
    batch = {
        "mu": torch.randn(2, 5, 2),
        "logvar": torch.zeros(2, 5, 2),
        "action": torch.tensor([[0, 1, 2, 1], [2, 2, 0, 0]]),
        "reward": torch.zeros(2, 4),
        "terminated": torch.zeros(2, 4, dtype=torch.bool),
    }
    loss, metrics = model.compute_loss(batch)
    assert set(metrics) == {"loss", "nll", "reward", "termination"}
    assert math.isfinite(metrics["loss"])
    # A padded step with a huge reward must not count when masked out.
    batch["reward"] = torch.tensor([[0.0, 0.0, 0.0, 1e4], [0.0] * 4])
    batch["mask"] = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    _, masked = model.compute_loss(batch)
    assert masked["reward"] < 10.0
    with pytest.raises(ValueError, match="reward"):
        model.compute_loss({**batch, "reward": torch.zeros(2, 3)})


def test_resample_z_draws_from_the_posterior_or_uses_its_mean() -> None:
    torch.manual_seed(0)
    batch = to_tensors(linear_dynamics(4, steps=5))
    batch["logvar"] = torch.zeros_like(batch["logvar"])  # unit posterior noise
    sampled = MDNRNN(MDNRNNConfig(z_dim=3, action_dim=1, hidden_size=8))
    means = MDNRNN(dataclasses.replace(sampled.config, resample_z=False))
    means.load_state_dict(sampled.state_dict())
    # On posterior means the loss is a deterministic function of the batch...
    assert means.compute_loss(batch)[1]["nll"] == means.compute_loss(batch)[1]["nll"]
    # ...while re-sampling z (the paper) draws new inputs and targets every call.
    assert sampled.compute_loss(batch)[1]["nll"] != sampled.compute_loss(batch)[1]["nll"]


@pytest.mark.learning
@pytest.mark.parametrize("shared", [False, True])
def test_mdnrnn_learns_linear_dynamics_reward_and_termination(
    shared: bool, seed: int, check: Check
) -> None:
    torch.manual_seed(seed)
    train = linear_dynamics(512, seed=seed)
    cfg = MDNRNNConfig(
        z_dim=3,
        action_dim=1,
        hidden_size=32,
        num_mixtures=3,
        shared_mixture_weights=shared,
        termination_pos_weight=1.0,
    )
    model = MDNRNN(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(seed + 1)
    for _ in range(400):
        idx = rng.integers(0, 512, 64)
        loss, _ = model.compute_loss(to_tensors({k: v[idx] for k, v in train.items()}))
        opt.zero_grad()
        loss.backward()
        opt.step()

    test = to_tensors(linear_dynamics(128, seed=seed + 5))
    model.eval()
    with torch.no_grad():
        _, metrics = model.compute_loss(test)
        z = test["mu"]
        out = model(z[:, :-1], test["action"])
        mode = MDNRNN.sample(out.logit_pi, out.mu, out.log_sigma, 0.0)
    target = z[:, 1:]
    persistence_mse = float(((z[:, :-1] - target) ** 2).mean())
    # NLL per dim of the best Gaussian centred on z_t (the "nothing moves" model).
    persistence_nll = 0.5 * math.log(2 * math.pi * persistence_mse) + 0.5
    check("nll - persistence nll", metrics["nll"] - persistence_nll, "<", -1.0)
    check("mode mse / persistence mse", ((mode - target) ** 2).mean() / persistence_mse, "<", 0.2)
    check("reward mse / variance", metrics["reward"] / float(test["reward"].var()), "<", 0.05)
    pred = out.termination_logit > 0
    truth = test["terminated"]
    check("termination recall", pred[truth].float().mean(), ">", 0.9)
    check("non-termination recall", (~pred[~truth]).float().mean(), ">", 0.9)
