"""Is the dream kinder than reality, and does V draw the objects: the verdict from an agent's dream
and real returns, the returns of whole dreams played to their end (:mod:`dreamlab.eval.kindness`),
and the share of foreground pixels V redraws."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamlab.eval.kindness import dream_episodes, kindness, kindness_line
from dreamlab.generations.vmc.worldmodel import VMWorldModel
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.models.vae import VAE, VAEConfig


def _real(mean: float, std: float = 1.0, episodes: int = 100) -> dict[str, float]:
    return {"mean_return": mean, "std_return": std, "episodes": episodes}


def _returns(mean: float, n: int = 256) -> np.ndarray:
    return np.random.default_rng(0).normal(mean, 1.0, n)


def test_a_dream_that_pays_more_than_reality_is_kinder() -> None:
    k = kindness(_returns(5.0), _real(3.0))
    assert k["kinder"] and not k["harsher"] and k["gap"] == pytest.approx(2.0, abs=0.2)
    assert k["dream"]["episodes"] == 256 and k["real"]["stderr"] == pytest.approx(0.1)


def test_a_gap_inside_the_noise_or_a_tenth_of_the_score_is_honest() -> None:
    assert not kindness(_returns(3.0), _real(3.0))["kinder"]
    # significant (many episodes) but under a tenth of the real score's scale
    few = kindness(_returns(100.5, 100_000), _real(100.0, 1.0, 100_000))
    assert not few["kinder"] and not few["harsher"]
    # large but noisy: 4 real episodes with a spread of 10
    assert not kindness(_returns(5.0), _real(3.0, 10.0, 4))["kinder"]
    assert kindness(_returns(1.0), _real(3.0))["harsher"]


def test_the_verdict_says_who_the_dream_is_kind_to() -> None:
    kind, honest = kindness(_returns(5.0), _real(3.0)), kindness(_returns(3.0), _real(3.0))
    assert "C exploits an error of M" in kindness_line({"controller": kind, "random": honest})
    everyone = kindness_line({"controller": kind, "random": kind})
    assert everyone.startswith("WARNING: the dream is kinder") and "M misses deaths" in everyone
    assert kindness_line({"controller": honest}).startswith("the dream is honest about C")
    assert "random play was not scored" in kindness_line({"controller": kind})
    assert "run evaluate" in kindness_line({})


def test_whole_dreams_end_where_m_ends_them_and_sum_the_rewards() -> None:
    torch.manual_seed(0)
    m = MDNRNN(MDNRNNConfig(z_dim=4, action_dim=2, hidden_size=8))
    with torch.no_grad():  # M pays 1 per step and never ends a dream: the time limit does
        m.reward_head.weight.zero_()
        m.reward_head.bias.fill_(1.0)
        m.termination_head.weight.zero_()
        m.termination_head.bias.fill_(-20.0)
    wm = VMWorldModel(VAE(VAEConfig(z_dim=4)), m, gym.spaces.Discrete(2))
    starts = {"mu": torch.zeros(3, 4), "logvar": torch.full((3, 4), -20.0)}
    policy = lambda obs: torch.zeros(obs.shape[0], dtype=torch.long)  # noqa: E731
    lengths, returns = dream_episodes(wm, starts, policy, gym.spaces.Discrete(2), 5, 1.0, 7)
    assert lengths.tolist() == [7] * 5 and returns == pytest.approx([7.0] * 5)
    with torch.no_grad():  # now every step is a death: one step each
        m.termination_head.bias.fill_(20.0)
    lengths, returns = dream_episodes(wm, starts, policy, gym.spaces.Discrete(2), 5, 1.0, 7)
    assert lengths.tolist() == [1] * 5 and returns == pytest.approx([1.0] * 5)


def test_foreground_recall_counts_the_objects_v_draws() -> None:
    from dreamlab.models import foreground_mask, foreground_recall

    real = torch.zeros(2, 3, 16, 16)
    real[:, 0, 2:4, 2:4] = 1.0  # a red object (4 px)
    real[:, 2, 12:14, 8:12] = 1.0  # a blue one (8 px)
    assert int(foreground_mask(real).sum()) == 2 * 12
    assert foreground_recall(real, real) == 1.0
    blind = real.clone()
    blind[:, 0] = 0.0  # draws the blue object, not the red one
    assert foreground_recall(real, blind) == pytest.approx(8 / 12)
    assert foreground_recall(real, torch.zeros_like(real)) == 0.0
    assert np.isnan(foreground_recall(torch.zeros_like(real), real))
