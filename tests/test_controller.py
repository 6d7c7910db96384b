"""Controller C: parameter counts, action mappings, flat params, and the batched population form."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamlab.checkpoint import load_model, save_model
from dreamlab.models.controller import Controller, ControllerConfig


def test_carracing_controller_has_the_papers_867_parameters() -> None:
    c = Controller(ControllerConfig(feature_dim=288, action_dim=3, mapping="carracing"))
    assert c.num_params == 288 * 3 + 3 == 867
    assert c.get_flat_params().shape == (867,)


def test_carracing_mapping_bounds() -> None:
    c = Controller(ControllerConfig(feature_dim=288, action_dim=3, mapping="carracing"))
    torch.nn.init.normal_(c.out.weight, std=5.0)  # saturate tanh both ways
    a = c(torch.randn(512, 288))
    steer, gas, brake = a[:, 0], a[:, 1], a[:, 2]
    assert steer.min() >= -1 and steer.max() <= 1 and steer.min() < -0.9
    assert gas.min() >= 0 and gas.max() <= 1
    assert brake.min() == 0 and brake.max() <= 1  # clipped at 0: half the time no brake at all
    raw = c.raw(torch.randn(4, 288))
    torch.testing.assert_close(c.map_action(raw)[:, 1], (torch.tanh(raw[:, 1]) + 1) / 2)


def test_box_mapping_reaches_the_space_bounds() -> None:
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
    cfg = ControllerConfig.from_action_space(5, space)
    assert cfg.mapping == "box" and cfg.action_dim == 2
    c = Controller(cfg)
    huge = torch.tensor([[1e4, -1e4], [-1e4, 1e4]])
    np.testing.assert_allclose(c.map_action(huge).numpy(), [[2.0, 0.0], [-2.0, 10.0]])
    a = c(torch.randn(256, 5))
    assert space.contains(a[0].detach().numpy())
    assert (a[:, 0].abs() <= 2).all() and (a[:, 1] >= 0).all() and (a[:, 1] <= 10).all()


def test_discrete_mapping_is_argmax() -> None:
    cfg = ControllerConfig.from_action_space(4, gym.spaces.Discrete(3))
    c = Controller(cfg)
    x = torch.randn(10, 4)
    a = c(x)
    assert a.dtype == torch.int64 and a.shape == (10,)
    assert torch.equal(a, c.raw(x).argmax(-1))


def test_flat_params_round_trip_and_layout() -> None:
    c = Controller(
        ControllerConfig(
            feature_dim=6,
            action_dim=2,
            mapping="box",
            action_low=[-1, -1],
            action_high=[1, 1],
            hidden_size=4,
        )
    )
    assert c.num_params == 6 * 4 + 4 + 4 * 2 + 2
    vec = torch.arange(c.num_params, dtype=torch.float32)
    c.set_flat_params(vec.numpy())
    torch.testing.assert_close(c.get_flat_params(), vec)
    assert c.hidden is not None
    assert c.hidden.weight[0, 1].item() == 1.0  # weights first, row-major, in parameters() order
    with pytest.raises(ValueError, match="expected 38 values"):
        c.set_flat_params(np.zeros(5))


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "standardized"])
@pytest.mark.parametrize("hidden_size", [0, 5])
@pytest.mark.parametrize("mapping", ["carracing", "box", "discrete"])
def test_population_form_equals_the_per_candidate_loop(
    mapping: str, hidden_size: int, normalize: bool
) -> None:
    torch.manual_seed(0)
    kwargs: dict[str, Any] = (
        {"action_low": [-1, 0, -3], "action_high": [1, 2, 3]} if mapping == "box" else {}
    )
    if normalize:
        kwargs |= {"input_mean": [0.5] * 7, "input_std": [0.1 * (i + 1) for i in range(7)]}
    cfg = ControllerConfig(
        feature_dim=7,
        action_dim=3,
        mapping=mapping,  # type: ignore[arg-type]
        hidden_size=hidden_size,
        **kwargs,
    )
    c = Controller(cfg)
    num_candidates, rollouts = 6, 4
    params = torch.randn(num_candidates, c.num_params)
    features = torch.randn(num_candidates, rollouts, 7)
    batched_raw = c.population_raw(params, features)
    batched = c.population_forward(params, features)
    for p in range(num_candidates):
        c.set_flat_params(params[p])
        torch.testing.assert_close(batched_raw[p], c.raw(features[p]), rtol=1e-5, atol=1e-5)
        if mapping == "discrete":
            assert torch.equal(batched[p], c(features[p]))
        else:
            torch.testing.assert_close(batched[p], c(features[p]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hidden_size", [0, 6])
def test_standardized_hidden_layer_controller_round_trips(tmp_path: Path, hidden_size: int) -> None:
    mean, std = [0.0, 1.0, -2.0, 0.5], [1.0, 0.25, 4.0, 0.1]
    cfg = ControllerConfig(
        feature_dim=4,
        action_dim=2,
        mapping="box",
        action_low=[-1.0, -1.0],
        action_high=[1.0, 1.0],
        hidden_size=hidden_size,
        input_mean=mean,
        input_std=std,
    )
    torch.manual_seed(1)
    c = Controller(cfg)
    assert c.num_params == (4 * 6 + 6 + 6 * 2 + 2 if hidden_size else 4 * 2 + 2)  # stats: no params
    x = torch.randn(5, 4)
    plain = Controller(dataclasses.replace(cfg, input_mean=[], input_std=[]))
    plain.set_flat_params(c.get_flat_params())
    expected = plain((x - torch.tensor(mean)) / torch.tensor(std))
    torch.testing.assert_close(c(x), expected)
    save_model(tmp_path, c, kind="controller")
    loaded = load_model(tmp_path)
    assert isinstance(loaded, Controller) and loaded.config == cfg
    torch.testing.assert_close(loaded(x), c(x))


def test_bad_configs_and_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="input_mean and input_std must be given together"):
        ControllerConfig(feature_dim=2, action_dim=3, input_mean=[0.0, 0.0])
    with pytest.raises(ValueError, match="feature_dim=2 values"):
        ControllerConfig(feature_dim=2, action_dim=3, input_mean=[0.0], input_std=[1.0])
    with pytest.raises(ValueError, match="input_std finite and > 0"):
        ControllerConfig(feature_dim=2, action_dim=3, input_mean=[0.0, 0], input_std=[1.0, 0])
    with pytest.raises(ValueError, match="carracing.*action_dim=3"):
        ControllerConfig(feature_dim=4, action_dim=2, mapping="carracing")
    with pytest.raises(ValueError, match="finite"):
        ControllerConfig.from_action_space(4, gym.spaces.Box(-np.inf, np.inf, (2,)))
    with pytest.raises(ValueError, match="does not fit a discrete"):
        ControllerConfig.from_action_space(4, gym.spaces.Discrete(2), mapping="carracing")
    c = Controller(ControllerConfig(feature_dim=4, action_dim=3, inputs="z"))
    with pytest.raises(ValueError, match="size 4.*inputs='z'"):
        c(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\(P, 15\)"):
        c.population_forward(torch.zeros(2, 3), torch.zeros(2, 1, 4))
