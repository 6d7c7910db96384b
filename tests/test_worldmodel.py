"""The WorldModel protocol: a hand-written toy world (reused by the dream / evolve tests) and V+M."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamlab.generations.vmc.worldmodel import (
    VMWorldModel,
    memory_start_latents,
    start_latents_from_store,
)
from dreamlab.models.mdnrnn import MDNRNN, MDNRNNConfig
from dreamlab.models.vae import VAE, VAEConfig
from dreamlab.worldmodel import ActionSpec, State, WorldModel, select_state

TINY_VAE = VAEConfig(
    frame_size=16, z_dim=4, enc_channels=(8, 8), dec_channels=(8,), dec_kernels=(6, 6), dec_dense=16
)


class ToyWorld:
    """A 1-D world with a known optimum: move ``x`` to the episode's ``goal``.

    ``x' = x + 0.25 * a + 0.05 * tau * noise``; reward ``1 - |x' - goal|`` per step (so an agent
    that reaches the goal fast earns most); terminated when ``|x'| > 3`` (fell off the track).
    Features ``[x, goal]`` (F = 2): the optimal linear controller is ``a = tanh(k * (goal - x))``.
    Discrete actions {0, 1, 2} mean {-1, 0, +1}.
    """

    feature_dim = 2

    def __init__(self, discrete: bool = False) -> None:
        self.discrete = discrete
        self.action_dim = 3 if discrete else 1
        self.device = torch.device("cpu")

    def initial_state(self, batch_size: int) -> State:
        return {"x": torch.zeros(batch_size), "goal": torch.zeros(batch_size)}

    def observe(self, state: State, frames: torch.Tensor) -> State:
        x = (frames.mean(dim=(1, 2, 3)) - 0.5) * 6.0  # (B,)
        return {**state, "x": x}

    def step(
        self,
        state: State,
        action: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        if self.discrete:
            a = action.long().float() - 1.0  # (B,)
        else:
            a = action.reshape(-1).float().clamp(-1.0, 1.0)  # (B,)
        noise = torch.randn(a.shape, generator=generator)  # (B,)
        x = state["x"] + 0.25 * a + 0.05 * temperature * noise  # (B,)
        reward = 1.0 - (x - state["goal"]).abs()  # (B,)
        terminated = x.abs() > 3.0  # (B,)
        return {"x": x, "goal": state["goal"]}, reward, terminated

    def decode(self, state: State) -> torch.Tensor:
        level = torch.sigmoid(state["x"]).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return level.expand(-1, 3, 8, 8)  # (B, 3, 8, 8)

    def features(self, state: State) -> torch.Tensor:
        return torch.stack([state["x"], state["goal"]], dim=-1)  # (B, 2)

    def start_state(self, start: dict[str, torch.Tensor], generator: Any = None) -> State:
        return {"x": start["x0"].clone().float(), "goal": start["goal"].clone().float()}


def toy_start_bank(n: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Start positions in [-1, 1] and goals in [-1.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    return {
        "x0": torch.rand(n, generator=g) * 2 - 1,
        "goal": torch.rand(n, generator=g) * 3 - 1.5,
    }


def tiny_vm(discrete: bool = False, hidden: int = 8) -> VMWorldModel:
    torch.manual_seed(0)
    action_dim = 3 if discrete else 2
    vae = VAE(TINY_VAE)
    mdn = MDNRNN(MDNRNNConfig(z_dim=4, action_dim=action_dim, hidden_size=hidden, num_mixtures=2))
    space: gym.Space[Any] = (
        gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    )
    return VMWorldModel(vae, mdn, space)


def test_toy_and_vm_world_models_satisfy_the_protocol() -> None:
    assert isinstance(ToyWorld(), WorldModel)
    assert isinstance(tiny_vm(), WorldModel)


def test_vm_world_model_shapes_and_feature_modes() -> None:
    wm = tiny_vm()
    assert wm.feature_dim == 4 + 8 and wm.action_dim == 2
    state = wm.initial_state(5)
    frames = torch.rand(5, 3, 16, 16)
    state = wm.observe(state, frames)
    mu, _ = wm.vae.encode(frames)
    torch.testing.assert_close(state["z"], mu)  # observe uses the VAE mean
    assert wm.features(state).shape == (5, 12)
    new, reward, terminated = wm.step(state, torch.zeros(5, 2), temperature=1.0)
    assert new["z"].shape == (5, 4) and new["h"].shape == (5, 8) and new["c"].shape == (5, 8)
    assert reward.shape == (5,) and reward.dtype == torch.float32
    assert terminated.shape == (5,) and terminated.dtype == torch.bool
    assert wm.decode(new).shape == (5, 3, 16, 16)
    z_only = VMWorldModel(
        wm.vae, wm.mdnrnn, ActionSpec("continuous", 2, [-1, -1], [1, 1]), features="z"
    )
    assert z_only.feature_dim == 4 and z_only.features(new).shape == (5, 4)


def test_vm_step_matches_the_mdnrnn_sequence_forward() -> None:
    wm = tiny_vm()
    state = wm.start_state({"mu": torch.randn(3, 4), "logvar": torch.zeros(3, 4)})
    action = torch.rand(3, 2) * 2 - 1
    new, reward, _ = wm.step(state, action, temperature=0.0)
    ref = wm.mdnrnn(state["z"][:, None], action[:, None])  # (B, 1, ...) from zero memory
    torch.testing.assert_close(new["h"], ref.hidden[0][0])
    torch.testing.assert_close(reward, ref.reward[:, 0])
    # tau = 0: the mean of the most likely component, so two calls agree exactly.
    again, _, _ = wm.step(state, action, temperature=0.0)
    torch.testing.assert_close(new["z"], again["z"])


def test_vm_bfloat16_precision_keeps_float32_state_and_close_values() -> None:
    exact = tiny_vm()
    fast = VMWorldModel(exact.vae, exact.mdnrnn, exact.action_spec, precision="bfloat16")
    state = exact.start_state({"mu": torch.randn(16, 4), "logvar": torch.zeros(16, 4)})
    a = torch.rand(16, 2) * 2 - 1
    ref, ref_r, _ = exact.step(state, a, temperature=0.0)
    got, got_r, _ = fast.step(state, a, temperature=0.0)
    assert all(v.dtype == torch.float32 for v in got.values()) and got_r.dtype == torch.float32
    torch.testing.assert_close(got["h"], ref["h"], atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(got_r, ref_r, atol=3e-2, rtol=3e-2)
    with pytest.raises(ValueError, match="precision"):
        VMWorldModel(exact.vae, exact.mdnrnn, exact.action_spec, precision="int8")  # type: ignore[arg-type]


def test_vm_discrete_actions_are_fed_one_hot() -> None:
    wm = tiny_vm(discrete=True)
    state = wm.initial_state(3)
    idx = torch.tensor([0, 2, 1])
    by_index, _, _ = wm.step(state, idx, temperature=0.0)
    by_onehot, _, _ = wm.step(state, torch.eye(3)[idx], temperature=0.0)
    torch.testing.assert_close(by_index["h"], by_onehot["h"])
    with pytest.raises(ValueError, match="out of range"):
        wm.step(state, torch.tensor([0, 3, 1]))


def test_vm_step_is_reproducible_with_a_generator_and_sampled_termination() -> None:
    wm = VMWorldModel(
        tiny_vm().vae,
        tiny_vm().mdnrnn,
        ActionSpec("continuous", 2, [-1, -1], [1, 1]),
        termination="sample",
    )
    state = wm.start_state({"mu": torch.zeros(64, 4), "logvar": torch.zeros(64, 4)})
    a = torch.zeros(64, 2)
    s1, _, t1 = wm.step(state, a, 1.0, generator=torch.Generator().manual_seed(3))
    s2, _, t2 = wm.step(state, a, 1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(s1["z"], s2["z"])
    assert torch.equal(t1, t2)
    s3, _, _ = wm.step(state, a, 1.0, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(s1["z"], s3["z"])


def test_vm_rejects_mismatched_parts() -> None:
    vae = VAE(TINY_VAE)
    with pytest.raises(ValueError, match="z_dim"):
        VMWorldModel(
            vae,
            MDNRNN(MDNRNNConfig(z_dim=5, action_dim=2, hidden_size=4)),
            ActionSpec("continuous", 2),
        )
    with pytest.raises(ValueError, match="action_dim"):
        VMWorldModel(
            vae, MDNRNN(MDNRNNConfig(z_dim=4, action_dim=2, hidden_size=4)), gym.spaces.Discrete(3)
        )
    with pytest.raises(ValueError, match="'mu' and 'logvar'"):
        tiny_vm().start_state({"z": torch.zeros(2, 4)})


def test_start_state_samples_around_the_stored_first_frame() -> None:
    wm = tiny_vm()
    mu = torch.full((4000, 4), 2.0)
    logvar = torch.full((4000, 4), np.log(0.25))  # sigma 0.5
    state = wm.start_state({"mu": mu, "logvar": logvar}, torch.Generator().manual_seed(0))
    assert abs(float(state["z"].mean()) - 2.0) < 0.05
    assert abs(float(state["z"].std()) - 0.5) < 0.05
    assert float(state["h"].abs().sum()) == 0.0


class FakeLatentStore:
    """Duck-typed latent store: ``indices`` and ``episode(i)``."""

    def __init__(self, lengths: list[int], with_mu: bool = True) -> None:
        self.path = "fake-store"
        self.indices = list(range(len(lengths)))
        self.lengths = lengths
        self.with_mu = with_mu

    def episode(self, i: int) -> dict[str, np.ndarray]:
        t = self.lengths[i]
        out = {"logvar": np.zeros((t + 1, 4), np.float32), "action": np.zeros((t, 2), np.float32)}
        if self.with_mu:
            out["mu"] = np.arange(t + 1, dtype=np.float32)[:, None].repeat(4, 1) + 100 * i
        return out


def test_start_latents_from_store() -> None:
    store = FakeLatentStore([3, 5, 2])
    first = start_latents_from_store(store)
    assert first["mu"].shape == (3, 4) and first["logvar"].shape == (3, 4)
    assert first["mu"][:, 0].tolist() == [0.0, 100.0, 200.0]
    every = start_latents_from_store(store, frames="all")
    assert every["mu"].shape == (4 + 6 + 3, 4)
    assert start_latents_from_store(store, frames="all", max_rows=5)["mu"].shape == (5, 4)
    with pytest.raises(ValueError, match="'mu' and 'logvar'"):
        start_latents_from_store(FakeLatentStore([2], with_mu=False))


class RandomLatentStore:
    """Latent episodes of random ``mu`` and actions (Box(2)), of the given lengths."""

    def __init__(self, lengths: list[int]) -> None:
        rng = np.random.default_rng(0)
        self.path = "random-store"
        self.indices = list(range(len(lengths)))
        self.episodes = [
            {
                "mu": rng.normal(size=(t + 1, 4)).astype(np.float32),
                "logvar": np.full((t + 1, 4), -2.0, np.float32),
                "action": rng.uniform(-1, 1, size=(t, 2)).astype(np.float32),
            }
            for t in lengths
        ]

    def episode(self, i: int) -> dict[str, np.ndarray]:
        return self.episodes[i]


def test_memory_start_bank_holds_the_memory_the_agent_has_in_reality() -> None:
    wm = tiny_vm()
    lengths = [5, 0, 9, 3]
    store = RandomLatentStore(lengths)
    # batch_size 3: two chunks, and episodes of different lengths padded within a chunk
    bank = memory_start_latents(wm, store, batch_size=3)
    assert {k: tuple(v.shape) for k, v in bank.items()} == {
        "mu": (21, 4),
        "logvar": (21, 4),
        "h": (21, 8),
        "c": (21, 8),
    }
    row = 0
    for ep in store.episodes:
        # the real agent's loop: observe (z = V's mean), act, step (memory advances)
        state = wm.initial_state(1)
        for t in range(len(ep["mu"])):
            state = {**state, "z": torch.from_numpy(ep["mu"][t : t + 1])}
            assert torch.allclose(bank["h"][row], state["h"][0], atol=1e-5)
            assert torch.allclose(bank["c"][row], state["c"][0], atol=1e-5)
            assert torch.equal(bank["mu"][row], torch.from_numpy(ep["mu"][t]))
            row += 1
            if t < len(ep["action"]):
                state, _, _ = wm.step(state, torch.from_numpy(ep["action"][t : t + 1]))
    assert float(bank["h"][1:5].abs().sum()) > 0  # the memory is not the zero start
    # dreams begun from the bank start with that memory
    start = wm.start_state({k: v[:6] for k, v in bank.items()}, torch.Generator().manual_seed(0))
    assert torch.equal(start["h"], bank["h"][:6]) and torch.equal(start["c"], bank["c"][:6])
    assert memory_start_latents(wm, store, max_rows=7)["h"].shape == (7, 8)
    with pytest.raises(ValueError, match="'h' and 'c' of shape"):
        wm.start_state({"mu": bank["mu"][:2], "logvar": bank["logvar"][:2], "h": bank["h"][:2]})
    with pytest.raises(ValueError, match="needs arrays"):
        memory_start_latents(wm, FakeLatentStore([2], with_mu=False))


def test_select_state_mixes_rows() -> None:
    a = {"h": torch.zeros(3, 2), "x": torch.zeros(3)}
    b = {"h": torch.ones(3, 2), "x": torch.ones(3)}
    out = select_state(torch.tensor([True, False, True]), b, a)
    assert out["h"][:, 0].tolist() == [1.0, 0.0, 1.0] and out["x"].tolist() == [1.0, 0.0, 1.0]


def test_action_spec_from_spaces() -> None:
    assert ActionSpec.from_space(gym.spaces.Discrete(4)) == ActionSpec("discrete", 4)
    box = ActionSpec.from_space(gym.spaces.Box(-2.0, 2.0, (3,), np.float32))
    assert box.kind == "continuous" and box.n == 3 and box.low == [-2.0] * 3
    assert isinstance(box.to_space(), gym.spaces.Box)
    with pytest.raises(ValueError, match="1-D Box"):
        ActionSpec.from_space(gym.spaces.Box(0, 1, (2, 2)))


# ---------------------------------------------------------------------------------- agent
def catch_vm(discrete: bool = False) -> VMWorldModel:
    torch.manual_seed(0)
    vae = VAE(
        VAEConfig(
            frame_size=64, z_dim=4, enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8), dec_dense=32
        )
    )
    n = 3 if discrete else 1
    mdn = MDNRNN(MDNRNNConfig(z_dim=4, action_dim=n, hidden_size=8, num_mixtures=2))
    space: gym.Space[Any] = (
        gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    )
    return VMWorldModel(vae, mdn, space)


def catch_agent(discrete: bool = False) -> Any:
    from dreamlab.generations.vmc.agent import VMCAgent
    from dreamlab.models.controller import Controller, ControllerConfig

    space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    controller = Controller(ControllerConfig.from_action_space(12, space))
    return VMCAgent(catch_vm(discrete), controller)


def test_agent_predict_single_and_batched_with_memory_resets() -> None:
    agent = catch_agent()
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    action, state = agent.predict(frames)
    assert action.shape == (3, 1) and action.dtype == np.float32 and (np.abs(action) <= 1).all()
    assert state["h"].shape == (3, 8) and float(state["h"].abs().sum()) > 0  # memory moved
    single, _ = agent.predict(frames[0])
    assert single.shape == (1,)
    np.testing.assert_allclose(single, action[0], rtol=1e-5, atol=1e-6)
    # episode_start resets that env's memory: its action equals a fresh agent's first action.
    again, state2 = agent.predict(frames, state, np.array([True, False, False]))
    np.testing.assert_allclose(again[0], action[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(state2["h"][1].numpy(), state["h"][1].numpy())
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        agent.predict(np.zeros((64, 64), np.uint8))
    discrete_action, _ = catch_agent(discrete=True).predict(frames)
    assert discrete_action.dtype == np.int64 and discrete_action.shape == (3,)


def test_agent_save_load_round_trip_and_plays_real_catch(tmp_path: Any) -> None:
    from dreamlab.envs import make_env
    from dreamlab.generations.vmc.agent import VMCAgent, VMCAgentFactory
    from dreamlab.train.evaluators import EnvRollout, run_episode

    agent = catch_agent()
    agent.save(tmp_path)
    loaded = VMCAgent.load(tmp_path)
    frames = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict(frames)[0], agent.predict(frames)[0], rtol=1e-6)

    env = make_env("dreamlab/Catch-v0", num_balls=2)
    ret = run_episode(env, loaded, seed=0, max_episode_steps=None)
    assert ret in (-2.0, 0.0, 2.0)
    # The factory rebuilds the same agent from a parameter vector (what CMA-ES workers do).
    factory = VMCAgentFactory(tmp_path / "vae", tmp_path / "mdnrnn", loaded.controller.config)
    params = loaded.controller.get_flat_params().numpy()
    assert EnvRollout("dreamlab/Catch-v0", factory, env_kwargs={"num_balls": 2})(params, 0) == ret
