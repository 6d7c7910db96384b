"""Diffusion world model (DIAMOND-style, EDM): math with known answers, shapes and the protocol,
a tiny model that learns, checkpoints and resume, the dream env, the command, bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamlab.checkpoint import load_model, save_model
from dreamlab.cli import main
from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import EpisodeStore
from dreamlab.dream import DreamEnv, DreamVecEnv
from dreamlab.eval.contender import CompareContext
from dreamlab.eval.evaluate import evaluate_policy
from dreamlab.generations.diffusion.agent import DiffusionAgent, DreamQConfig, train_in_dream
from dreamlab.generations.diffusion.contender import build_contender
from dreamlab.generations.diffusion.data import EpisodeArrays, diffusion_batches
from dreamlab.generations.diffusion.fidelity import open_loop_fidelity
from dreamlab.generations.diffusion.worldmodel import DiffusionWorldModel, diffusion_start_states
from dreamlab.models.diffusion import (
    DiffusionConfig,
    DiffusionModel,
    diffusion_preset,
    parameter_counts,
)
from dreamlab.models.edm import (
    ddpm_sample,
    edm_precondition,
    euler_sample,
    heun_sample,
    karras_sigmas,
)
from dreamlab.train.fit import TrainConfig, fit
from dreamlab.worldmodel import ActionSpec, WorldModel

Check = Callable[..., None]  # the check fixture (conftest.py)


def _small(**kw: object) -> DiffusionConfig:
    base: dict[str, object] = dict(
        frame_size=16, context=2, channels=(16, 32), depths=(1, 1), cond_dim=32, reward_channels=8
    )
    base.update(kw)
    return DiffusionConfig(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- EDM math
def test_karras_schedule_endpoints_and_order() -> None:
    s = karras_sigmas(5, 0.002, 80.0, 7.0)
    assert s.shape == (6,)
    assert float(s[0]) == pytest.approx(80.0, rel=1e-5)
    assert float(s[-2]) == pytest.approx(0.002, rel=1e-4)
    assert float(s[-1]) == 0.0
    assert bool((s[:-1] > s[1:]).all())
    # rho = 1 is a linear ramp
    torch.testing.assert_close(karras_sigmas(3, 1.0, 3.0, 1.0), torch.tensor([3.0, 2.0, 1.0, 0.0]))
    assert karras_sigmas(1, 0.1, 5.0).tolist() == pytest.approx([5.0, 0.0])


def test_edm_preconditioning_gives_unit_variance_inputs_and_targets() -> None:
    sd = 0.5
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.05, 0.5, 5.0):
        s = torch.full((200_000,), sigma)
        c_skip, c_out, c_in, c_noise = edm_precondition(s, sd)
        y = sd * torch.randn(s.shape, generator=gen)
        x = y + s * torch.randn(s.shape, generator=gen)
        target = (y - c_skip * x) / c_out  # what F regresses to
        assert float((c_in * x).std()) == pytest.approx(1.0, abs=0.01)
        assert float(target.std()) == pytest.approx(1.0, abs=0.01)
        assert float(c_noise[0]) == pytest.approx(math.log(sigma) / 4)
    # D = c_skip x + c_out F is the identity as sigma -> 0
    c_skip, c_out, _, _ = edm_precondition(torch.tensor([1e-6]), sd)
    assert float(c_skip) == pytest.approx(1.0) and float(c_out) < 1e-5


def _gaussian_denoiser(mu: float, s: float):  # type: ignore[no-untyped-def]
    # The exact D(x, sigma) = E[y | x] for y ~ N(mu, s^2), x = y + sigma n.
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sig = sigma.view(-1, *([1] * (x.dim() - 1)))
        return mu + s**2 / (s**2 + sig**2) * (x - mu)

    return denoise


def test_samplers_solve_the_gaussian_probability_flow() -> None:
    mu, s, smax = 0.3, 0.5, 5.0
    denoise = _gaussian_denoiser(mu, s)
    x_t = mu + torch.linspace(-2.0, 2.0, 9)[:, None] * math.sqrt(s**2 + smax**2)  # (9, 1)
    # ODE: (x - mu) scales with sqrt(s^2 + sigma^2), so x(0) is known in closed form.
    exact = mu + (x_t - mu) * s / math.sqrt(s**2 + smax**2)

    def error(sample, n: int) -> float:  # type: ignore[no-untyped-def]
        return float((sample(denoise, x_t, karras_sigmas(n, 1e-2, smax)) - exact).abs().max())

    # Heun is second order (4x the steps: ~16x less error), Euler first order (~4x).
    heun_20, heun_80 = error(heun_sample, 20), error(heun_sample, 80)
    euler_20, euler_80 = error(euler_sample, 20), error(euler_sample, 80)
    assert heun_80 < 1e-3 and heun_20 / heun_80 > 10
    assert euler_80 < 0.02 and 3 < euler_20 / euler_80 < 6
    assert heun_20 < euler_20
    # The ancestral sampler draws from N(mu, s^2) as its steps grow (with few steps its
    # posterior variance, which ignores the uncertainty of D, is a little too small).
    gen = torch.Generator().manual_seed(0)
    x0 = mu + torch.randn(20_000, 1, generator=gen) * math.sqrt(s**2 + smax**2)
    coarse = ddpm_sample(denoise, x0, karras_sigmas(30, 1e-3, smax), gen)
    fine = ddpm_sample(denoise, x0, karras_sigmas(300, 1e-3, smax), gen)
    assert float(fine.mean()) == pytest.approx(mu, abs=0.02)
    assert float(fine.std()) == pytest.approx(s, abs=0.02)
    assert float(coarse.std()) < float(fine.std())


# ---------------------------------------------------------------------- sizes, shapes, protocol
def test_presets_parameter_counts() -> None:
    tiny = parameter_counts(DiffusionModel(diffusion_preset("tiny")))
    assert tiny["total"] < 1_000_000
    diamond = parameter_counts(DiffusionModel(diffusion_preset("diamond")))
    # The paper's Atari denoiser has ~4.4M parameters; ours has the same sizes (4 levels of 64
    # channels, 2 blocks, 256-wide condition) and a simpler skip layout (docs/diffusion.md).
    assert 3_000_000 < diamond["denoiser"] < 5_000_000
    with pytest.raises(ValueError, match="unknown diffusion preset"):
        diffusion_preset("huge")


def test_world_model_protocol_and_shapes(one_thread: None) -> None:
    torch.manual_seed(0)
    model = DiffusionModel(_small())
    wm = DiffusionWorldModel(model, gym.spaces.Discrete(3), feature_frames=2, feature_pool=2)
    assert isinstance(wm, WorldModel)
    assert wm.feature_dim == 2 * 3 * 8 * 8 and wm.action_dim == 3
    state = wm.initial_state(2)
    first = torch.rand(2, 3, 16, 16)
    state = wm.observe(state, first)
    # the first observation fills every slot, with zero actions
    torch.testing.assert_close(state["frames"], first[:, None].expand(2, 2, 3, 16, 16))
    assert float(state["actions"].abs().sum()) == 0.0
    state, reward, terminated = wm.step(state, torch.tensor([0, 2]))
    assert reward.shape == (2,) and reward.dtype == torch.float32
    assert terminated.shape == (2,) and terminated.dtype == torch.bool
    assert state["frames"].shape == (2, 2, 3, 16, 16)
    assert wm.decode(state).shape == (2, 3, 16, 16)
    assert float(wm.decode(state).min()) >= 0.0 and float(wm.decode(state).max()) <= 1.0
    assert wm.features(state).shape == (2, wm.feature_dim)
    # the action that led to the newest frame sits in the slot before it
    assert state["actions"][:, 0].argmax(-1).tolist() == [0, 2]
    # a later observe overwrites only the newest slot
    second = torch.rand(2, 3, 16, 16)
    older = state["frames"][:, 0].clone()
    state = wm.observe(state, second)
    torch.testing.assert_close(state["frames"][:, -1], second)
    torch.testing.assert_close(state["frames"][:, 0], older)
    # advance records the action without imagining
    nxt = wm.advance(state, torch.tensor([1, 1]))
    torch.testing.assert_close(nxt["frames"][:, -1], second)
    for sampler in ("heun", "ddpm"):
        other = DiffusionWorldModel(model, gym.spaces.Discrete(3), sampler=sampler, num_steps=2)
        s2, _, _ = other.step(state, torch.tensor([1, 1]))
        assert s2["frames"].shape == (2, 2, 3, 16, 16)


def test_bad_input_raises_clear_errors() -> None:
    model = DiffusionModel(_small())
    wm = DiffusionWorldModel(model, gym.spaces.Discrete(3))
    state = wm.initial_state(2)
    with pytest.raises(ValueError, match=r"frames must be \(\.\.\., 3, 16, 16\)"):
        wm.observe(state, torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="out of range"):
        wm.step(wm.observe(state, torch.rand(2, 3, 16, 16)), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="integer indices"):
        wm.step(state, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="does not fit"):
        DiffusionWorldModel(model, gym.spaces.Discrete(4))
    with pytest.raises(ValueError, match="start states need keys"):
        wm.start_state({"mu": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="depths"):
        DiffusionConfig(channels=(16, 32), depths=(1,))
    with pytest.raises(ValueError, match="frame_size"):
        DiffusionConfig(frame_size=30)
    with pytest.raises(ValueError, match="sampler"):
        DiffusionConfig(sampler="dpm")  # type: ignore[arg-type]
    batch = {
        "context": torch.zeros(2, 2, 16, 16, 3, dtype=torch.uint8),
        "actions": torch.zeros(2, 3, 3),
        "target": torch.zeros(2, 16, 16, 3, dtype=torch.uint8),
        "reward": torch.zeros(2),
        "terminated": torch.zeros(2),
    }
    with pytest.raises(ValueError, match="actions must be"):
        model.compute_loss(batch)


# ---------------------------------------------------------------------- learning
def _moving_ball_batch(gen: torch.Generator, batch: int) -> dict[str, torch.Tensor]:
    """A 3x3 ball on a 16x16 frame moved by the action (-2, 0, +2 px): deterministic."""
    x = torch.randint(3, 11, (batch,), generator=gen)
    a = torch.randint(0, 3, (batch,), generator=gen)
    frames = torch.full((batch, 3, 16, 16, 3), 20, dtype=torch.uint8)  # (B, prev/now/next, ...)
    rows = torch.arange(batch)
    for k, pos in enumerate([x, x, x + (a - 1) * 2]):
        for dy in range(3):
            for dx in range(3):
                frames[rows, k, 6 + dy, pos + dx] = torch.tensor([250, 210, 60], dtype=torch.uint8)
    return {
        "context": frames[:, :2],
        "actions": torch.stack([torch.zeros(batch, 3), torch.eye(3)[a]], 1),
        "target": frames[:, 2],
        "reward": (a == 2).float(),
        "terminated": torch.zeros(batch),
    }


@pytest.mark.learning
def test_tiny_model_learns_action_conditioned_next_frame(seed: int, check: Check) -> None:
    torch.manual_seed(seed)
    # patch=1: on 16x16 frames a 2x2 pixel-unshuffle leaves the U-Net a 4x4 grid to work on
    model = DiffusionModel(_small(patch=1))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    first = None
    for _ in range(220):
        loss, metrics = model.compute_loss(_moving_ball_batch(gen, 32))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else metrics["denoise"]
    check("denoise loss / first", metrics["denoise"] / first, "<", 0.5)
    model.eval()
    test = _moving_ball_batch(torch.Generator().manual_seed(seed + 1), 64)
    ctx = test["context"].movedim(-1, -3).float() / 255.0
    target = test["target"].movedim(-1, -3).float() / 255.0
    pred = model.sample(ctx, test["actions"], generator=torch.Generator().manual_seed(seed))
    model_mse = float(((pred - target) ** 2).mean())
    copy_mse = float(((ctx[:, -1] - target) ** 2).mean())
    check("model mse / copy mse", model_mse / copy_mse, "<", 0.5)
    # the reward head separates the rewarded action (a == 2) from the others
    reward, _ = model.predict_reward_end(ctx[:, -1], test["actions"][:, -1], target)
    check("reward accuracy", (reward == test["reward"]).float().mean(), ">", 0.9)


# ---------------------------------------------------------------------- store, checkpoints
@pytest.fixture(scope="module")
def catch_store(tmp_path_factory: pytest.TempPathFactory) -> EpisodeStore:
    out = tmp_path_factory.mktemp("diffusion") / "data"
    collect(
        CollectConfig(
            env="catch-32",
            out=out,
            episodes=6,
            policy="random",
            workers=1,
            env_kwargs={"discrete": True, "num_balls": 2},
            progress=False,
        )
    )
    return EpisodeStore.open(out)


def _catch_model() -> DiffusionModel:
    torch.manual_seed(0)
    return DiffusionModel(
        diffusion_preset("tiny", channels=(16, 16, 16), groups=8, cond_dim=32, reward_channels=8)
    )


def test_episode_arrays_pad_the_episode_start(catch_store: EpisodeStore) -> None:
    data = EpisodeArrays(catch_store, "discrete", 3)
    ep = catch_store.episode(catch_store.indices[0])
    batch = data.gather(np.array([0, 3]), context=4)
    assert batch["context"].shape == (2, 4, 32, 32, 3)
    # step 0: the first frame in every slot, zero actions before it, then the action taken
    assert (batch["context"][0] == ep["obs"][0]).all()
    assert batch["actions"][0, :-1].sum() == 0.0
    assert batch["actions"][0, -1].argmax() == ep["action"][0]
    # step 3: frames 0..3, actions 0..3, target frame 4
    assert (batch["context"][1] == ep["obs"][:4]).all()
    assert (batch["actions"][1].argmax(-1) == ep["action"][:4]).all()
    assert (batch["target"][1] == ep["obs"][4]).all()


def test_checkpoint_round_trip_and_fit_resume(
    catch_store: EpisodeStore, tmp_path: Path, one_thread: None
) -> None:
    data = EpisodeArrays(catch_store, "discrete", 3)
    model = _catch_model()
    cfg = TrainConfig(steps=4, batch_size=4, log_every=1, checkpoint_every=2, progress=False)
    cfg.tensorboard = False
    stream = diffusion_batches(data, 4, 4, seed=0)
    fit(model, stream, cfg, tmp_path / "wm", total_steps=4, stage="diffusion")
    loaded = load_model(tmp_path / "wm", DiffusionModel)
    assert isinstance(loaded, DiffusionModel)
    model.eval()
    x, s = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 2.0])
    ctx, act = torch.rand(2, 4, 3, 32, 32), torch.zeros(2, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(model.denoise(x, s, ctx, act), loaded.denoise(x, s, ctx, act))
    # more steps on the same directory continue from step 4
    res = fit(_catch_model(), stream, cfg, tmp_path / "wm", total_steps=6, stage="diffusion")
    assert (res.start_step, res.step) == (4, 6)
    save_model(tmp_path / "copy", loaded)
    assert (tmp_path / "copy" / "model.safetensors").exists()


def test_dream_env_and_agent_training_resume(
    catch_store: EpisodeStore, tmp_path: Path, one_thread: None
) -> None:
    wm = DiffusionWorldModel(_catch_model(), ActionSpec("discrete", 3))
    start = diffusion_start_states(wm, catch_store, frames="first")
    assert start["frames"].shape == (6, 4, 32, 32, 3) and start["frames"].dtype == torch.uint8
    every = diffusion_start_states(wm, catch_store, frames="all", max_episodes=2)
    assert every["frames"].shape[0] > 2
    env = DreamVecEnv(wm, start, gym.spaces.Discrete(3), 3, max_episode_steps=4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, wm.feature_dim)
    for _ in range(5):
        obs, reward, term, trunc, _ = env.step(np.array([0, 1, 2]))
        assert obs.shape == (3, wm.feature_dim) and reward.shape == (3,)
    single = DreamEnv(wm, start, gym.spaces.Discrete(3), max_episode_steps=3)
    o, _ = single.reset(seed=1)
    assert o.shape == (wm.feature_dim,)
    single.step(1)

    cfg = DreamQConfig(
        rounds=1, num_dreams=4, dream_steps=3, updates_per_round=3, batch_size=8, progress=False
    )
    out = tmp_path / "agent"
    _, r1 = train_in_dream(wm, start, gym.spaces.Discrete(3), cfg, out)
    assert (r1.rounds, r1.transitions) == (1, 12)
    cfg.rounds = 2  # a longer budget continues the same training
    qnet, r2 = train_in_dream(wm, start, gym.spaces.Discrete(3), cfg, out)
    assert (r2.rounds, r2.updates, r2.transitions) == (2, 6, 24)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]
    with pytest.raises(ValueError, match="differing"):
        train_in_dream(wm, start, gym.spaces.Discrete(3), DreamQConfig(rounds=2, gamma=0.5), out)

    agent = DiffusionAgent.load(wm, out)
    frames = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    actions, state = agent.predict(frames, None, np.ones(2, bool))
    assert actions.shape == (2,) and actions.dtype == np.int64
    actions, state = agent.predict(frames, state, np.array([False, True]))
    with pytest.raises(ValueError, match="obs must be"):
        agent.predict(np.zeros((2, 32, 32), np.uint8))
    from dreamlab.envs import make_env

    result = evaluate_policy(
        lambda: make_env("catch-32", discrete=True, num_balls=1), agent, 2, progress=False
    )
    assert result.episodes == 2
    fid = open_loop_fidelity(wm, [catch_store.episode(0)], context=4, horizons=(1, 5))
    assert len(fid["model_mse"]) == 2 and fid["copy_last_mse"][0] > 0


def test_build_contender_small_scale(
    catch_store: EpisodeStore, tmp_path: Path, one_thread: None
) -> None:
    ctx = CompareContext(
        data=catch_store,
        env="catch-32",
        env_kwargs={"discrete": True},
        out=tmp_path / "contender",
        scale=0.002,
        progress=False,
    )
    c = build_contender(ctx)
    assert c.generation == 3 and c.params_world_model > 0 and c.params_agent > 0
    feats = c.world_model.features(c.world_model.start_state(c.dream_start))
    assert c.dream_policy(feats).shape == (len(catch_store),)
    # a second build resumes from the checkpoints without training again
    again = build_contender(ctx)
    assert again.notes["world_model_steps"] == c.notes["world_model_steps"]


def test_cli_train_diffusion_end_to_end_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        "train-diffusion",
        "--run",
        str(out),
        "--env",
        "catch-32",
        "--collect-episodes",
        "4",
        "--holdout-episodes",
        "1",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--agent.rounds",
        "1",
        "--agent.num-dreams",
        "4",
        "--agent.dream-steps",
        "2",
        "--agent.updates-per-round",
        "2",
        "--agent.batch-size",
        "4",
        "--eval-episodes",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["episodes"] == 2 and "catch_rate" in summary
    assert summary["fidelity"]["horizons"] == [1, 5, 10, 20]
    assert (out / "dream_vs_real.mp4").exists() and (out / "world_model" / "trainer.json").exists()
    # everything on disk: resumes, trains nothing (--out, the old name of --run, still works)
    assert main(["--out" if a == "--run" else a for a in argv]) == 0
    changed = [*argv[:-1], "--lr", "0.1", "--no-progress"]
    assert main(changed) == 2  # other settings in the same directory: one clear error


def test_cli_train_diffusion_from_data_records_the_stores_env(
    tmp_path: Path, catch_store: EpisodeStore
) -> None:
    out = tmp_path / "run"
    argv = ["train-diffusion", "--run", str(out), "--data", str(catch_store.path)]
    argv += ["--holdout-episodes", "1", "--steps", "2", "--batch-size", "4", "--eval-episodes", "2"]
    argv += ["--agent.rounds", "1", "--agent.num-dreams", "4", "--agent.dream-steps", "2"]
    argv += ["--agent.updates-per-round", "2", "--agent.batch-size", "4", "--no-progress"]
    assert main(argv) == 0
    # play, load_agent and compare read the env from config.json: the store's, not the default
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["env"] == "catch-32"
    assert config["env_kwargs"]["num_balls"] == 2 and config["env_kwargs"]["discrete"] is True
    assert main(argv) == 0  # resumes: trains nothing
