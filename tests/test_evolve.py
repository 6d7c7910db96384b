"""CMA-ES: learns a toy problem in a batched dream, checkpoints, resumes exactly; evaluators."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cma
import gymnasium as gym
import numpy as np
import pytest
import torch
from test_worldmodel import ToyWorld, tiny_vm, toy_start_bank

from dreamlab.checkpoint import load_model
from dreamlab.io import append_jsonl, read_jsonl
from dreamlab.models.controller import Controller, ControllerConfig
from dreamlab.train.cma_state import load_cma_state, new_strategy, save_cma_state
from dreamlab.train.dream_evaluator import DreamEvaluator
from dreamlab.train.evaluators import (
    EnvRollout,
    LocalEvaluator,
    ProcessEvaluator,
    child_threads,
    episode_seeds,
    run_episode,
)
from dreamlab.train.evolve import EvolveConfig, evolve, make_evaluator

TOY_CFG = ControllerConfig(
    feature_dim=2, action_dim=1, mapping="box", action_low=[-1.0], action_high=[1.0]
)

Check = Callable[..., None]  # the check fixture (conftest.py)


def toy_evaluator(steps: int = 20) -> DreamEvaluator:
    return DreamEvaluator(
        ToyWorld(),
        toy_start_bank(64),
        Controller(TOY_CFG),
        temperature=1.0,
        max_episode_steps=steps,
    )


def small_cfg(**overrides: Any) -> EvolveConfig:
    base: dict[str, Any] = dict(
        generations=6,
        population_size=8,
        rollouts_per_candidate=4,
        sigma0=0.5,
        eval_every=3,
        eval_rollouts=32,
        seed=3,
        x0="zeros",
        tensorboard=False,
        progress=False,
    )
    base.update(overrides)
    return EvolveConfig(**base)


# ---------------------------------------------------------------------------------- evaluators
def test_dream_evaluator_scores_known_controllers_and_uses_common_starts() -> None:
    ev = toy_evaluator()
    c = Controller(TOY_CFG)
    optimal = np.array([-8.0, 8.0, 0.0])  # a = tanh(8 (goal - x)): go to the goal and stay
    idle = np.zeros(3)  # a = 0: stay at the start
    away = np.array([8.0, -8.0, 0.0])  # run away from the goal
    assert c.num_params == 3
    returns = ev.evaluate(np.stack([optimal, idle, away]), rollouts=16, seed=0)
    assert returns.shape == (3, 16)
    means = returns.mean(axis=1)
    assert means[0] > means[1] > means[2]
    assert means[0] > 0.8 * 20  # near 1 reward per step once at the goal
    # Same seed -> same dreams.
    np.testing.assert_array_equal(ev.evaluate(np.stack([optimal, idle, away]), 16, seed=0), returns)
    # Common starts: rollout r of every candidate begins at the same start point, so without
    # dream noise (tau = 0) identical candidates score identically.
    calm = DreamEvaluator(ToyWorld(), toy_start_bank(64), c, temperature=0.0, max_episode_steps=20)
    twins = calm.evaluate(np.stack([idle, idle, optimal]), rollouts=16, seed=0)
    np.testing.assert_array_equal(twins[0], twins[1])
    assert len(set(twins[0].tolist())) > 1  # but the rollouts differ from each other


def test_dream_evaluator_compaction_drops_finished_dreams_and_keeps_returns() -> None:
    """Dropping finished dreams from the batch changes no return (without dream noise every
    draw is the same) and steps fewer dreams."""
    params = np.random.default_rng(0).normal(scale=3.0, size=(12, 3))
    params[:6, 2] = np.linspace(-2.0, 2.0, 6)  # biases: some run off the track at once
    evaluators = [
        DreamEvaluator(
            ToyWorld(),
            toy_start_bank(64),
            Controller(TOY_CFG),
            temperature=0.0,
            max_episode_steps=60,
            compact=compact,
        )
        for compact in (False, True)
    ]
    plain, compact = (ev.evaluate(params, 8, seed=2) for ev in evaluators)
    np.testing.assert_allclose(compact, plain, rtol=1e-6, atol=1e-6)
    assert evaluators[1].total_env_steps < 0.8 * evaluators[0].total_env_steps
    # and the env is whole again for the next call
    np.testing.assert_allclose(evaluators[1].evaluate(params, 8, seed=2), plain, atol=1e-6)


def test_dream_evaluator_chunks_large_populations_consistently() -> None:
    params = np.random.default_rng(0).normal(size=(6, 3))
    whole = toy_evaluator().evaluate(params, 4, seed=1)
    chunked = DreamEvaluator(
        ToyWorld(), toy_start_bank(64), Controller(TOY_CFG), max_episode_steps=20, max_batch=8
    ).evaluate(params, 4, seed=1)
    assert chunked.shape == whole.shape and np.isfinite(chunked).all()
    # Without dream noise, chunking changes nothing: every chunk uses the same starts.
    calm = [
        DreamEvaluator(
            ToyWorld(),
            toy_start_bank(64),
            Controller(TOY_CFG),
            temperature=0.0,
            max_episode_steps=20,
            max_batch=b,
        )
        for b in (1024, 8)
    ]
    np.testing.assert_allclose(calm[0].evaluate(params, 4, 1), calm[1].evaluate(params, 4, 1))
    with pytest.raises(ValueError, match="3 values per candidate|controller has 3"):
        toy_evaluator().evaluate(np.zeros((2, 4)), 2, seed=0)
    with pytest.raises(ValueError, match="features have size"):
        DreamEvaluator(ToyWorld(), toy_start_bank(), Controller(ControllerConfig(feature_dim=5)))


@pytest.mark.parametrize("discrete", [False, True])
def test_evolve_runs_in_a_tiny_vm_dream(tmp_path: Path, discrete: bool) -> None:
    wm = tiny_vm(discrete)
    space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    controller = Controller(ControllerConfig.from_action_space(wm.feature_dim, space))
    bank = {"mu": torch.randn(8, 4), "logvar": torch.full((8, 4), -2.0)}
    cfg = small_cfg(
        generations=2,
        population_size=4,
        rollouts_per_candidate=3,
        eval_every=2,
        eval_rollouts=8,
        max_episode_steps=15,
        x0="current",
    )
    ev = make_evaluator(cfg, controller, world_model=wm, start_latents=bank)
    result = evolve(controller, ev, cfg, tmp_path)
    assert len(result.history) == 2 and np.isfinite(result.best_return)
    assert isinstance(load_model(tmp_path), Controller)


# ---------------------------------------------------------------------------------- CMA-ES
@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "separable"])
def test_cma_state_round_trip_asks_identical_candidates(tmp_path: Path, diagonal: bool) -> None:
    dim = 30
    es = new_strategy(np.zeros(dim), 0.3, 10, seed=5, diagonal=diagonal)

    def f(x: np.ndarray) -> float:
        return float(np.sum((x - 1.0) ** 2) + np.sum(x[:3] ** 4))

    for _ in range(12):
        xs = es.ask()
        es.tell(xs, [f(x) for x in xs])
    save_cma_state(
        tmp_path / "s.safetensors",
        es,
        extra_arrays={"a": np.arange(3.0)},
        extra_meta={"generation": 12},
    )
    resumed, extra, meta = load_cma_state(tmp_path / "s.safetensors")
    assert meta == {"generation": 12} and extra["a"].tolist() == [0.0, 1.0, 2.0]
    for _ in range(25):  # long enough to include several covariance eigen-updates
        a, b = es.ask(), resumed.ask()
        np.testing.assert_array_equal(np.array(a), np.array(b))
        es.tell(a, [f(x) for x in a])
        resumed.tell(b, [f(x) for x in b])
    assert resumed.sigma == es.sigma and resumed.countiter == es.countiter
    assert type(resumed.sm) is type(es.sm)
    if diagonal:
        np.testing.assert_array_equal(resumed.sigma_vec.scaling, es.sigma_vec.scaling)
    else:
        np.testing.assert_array_equal(resumed.sm.C, es.sm.C)


def test_cma_state_file_errors_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_cma_state(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt CMA-ES state"):
        load_cma_state(bad)


@pytest.mark.learning
def test_evolve_learns_the_toy_world(tmp_path: Path, seed: int, check: Check) -> None:
    controller = Controller(TOY_CFG)
    ev = toy_evaluator()
    cfg = small_cfg(
        generations=15,
        population_size=12,
        rollouts_per_candidate=8,
        eval_every=5,
        eval_rollouts=64,
        seed=3 + seed,
    )
    before = ev.evaluate(np.zeros((1, 3)), 64, seed=99).mean()
    result = evolve(controller, ev, cfg, tmp_path)
    after = ev.evaluate(result.params[None], 64, seed=99).mean()
    optimum = ev.evaluate(np.array([[-8.0, 8.0, 0.0]]), 64, seed=99).mean()
    # Idle scores ~13/20 here; the optimum ~19/20. Require most of that gap to be closed.
    check("share of the idle-optimum gap closed", (after - before) / (optimum - before), ">", 0.7)
    assert result.best_eval_return is not None and result.generations == 15
    torch.testing.assert_close(
        controller.get_flat_params(), torch.tensor(result.params, dtype=torch.float32)
    )
    history = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["generation"] for r in history] == list(range(1, 16))
    assert history[-1]["controller/train/best"] > history[0]["controller/train/best"]
    assert {"controller/train/mean", "controller/train/worst", "controller/train/sigma"} <= set(
        history[0]
    )
    assert "controller/eval/return" in history[4] and "controller/eval/return" not in history[3]
    loaded = load_model(tmp_path)  # the selected controller, via the checkpoint module
    assert isinstance(loaded, Controller)
    torch.testing.assert_close(
        loaded.get_flat_params(), torch.tensor(result.params, dtype=torch.float32)
    )
    for name in (
        "best.safetensors",
        "mean.safetensors",
        "cma_state.safetensors",
        "evolve.json",
        "summary.json",
    ):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text())["generations"] == 15


def test_resumed_run_continues_the_same_trajectory(tmp_path: Path) -> None:
    cfg = small_cfg(generations=6)
    straight = evolve(Controller(TOY_CFG), toy_evaluator(), cfg, tmp_path / "a")

    first = evolve(
        Controller(TOY_CFG),
        toy_evaluator(),
        dataclasses.replace(cfg, generations=3),
        tmp_path / "b",
    )
    assert first.generations == 3
    # A crash after metrics were appended but before the checkpoint: resume must drop the line.
    append_jsonl(tmp_path / "b" / "metrics.jsonl", {"generation": 4, "controller/train/best": -1.0})
    resumed = evolve(Controller(TOY_CFG), toy_evaluator(), cfg, tmp_path / "b")
    assert resumed.resumed_from == 3

    np.testing.assert_array_equal(resumed.mean_params, straight.mean_params)
    np.testing.assert_array_equal(resumed.params, straight.params)
    np.testing.assert_array_equal(resumed.best_params, straight.best_params)

    def strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]

    assert strip(resumed.history) == strip(straight.history)
    # Running again when finished does nothing and keeps the result.
    again = evolve(Controller(TOY_CFG), toy_evaluator(), cfg, tmp_path / "b")
    np.testing.assert_array_equal(again.params, straight.params)
    assert len(again.history) == 6


def test_resume_with_a_different_population_is_refused(tmp_path: Path) -> None:
    evolve(Controller(TOY_CFG), toy_evaluator(), small_cfg(generations=1), tmp_path)
    with pytest.raises(ValueError, match="population 8.*population 10"):
        evolve(Controller(TOY_CFG), toy_evaluator(), small_cfg(population_size=10), tmp_path)


@pytest.mark.learning
def test_separable_cma_is_used_learns_and_is_kept_on_resume(
    tmp_path: Path, seed: int, check: Check
) -> None:
    cfg = small_cfg(
        generations=15, population_size=12, cma_diagonal=True, eval_every=5, seed=3 + seed
    )
    ev = toy_evaluator()
    before = ev.evaluate(np.zeros((1, 3)), 64, seed=99).mean()
    result = evolve(Controller(TOY_CFG), ev, cfg, tmp_path)
    after = ev.evaluate(result.params[None], 64, seed=99).mean()
    check("return gained", after - before, ">", 2.0)
    es, _, _ = load_cma_state(tmp_path / "cma_state.safetensors")
    # sep-CMA: a constant standard-normal sampler, the covariance is the diagonal sigma_vec
    assert es.opts["CMA_diagonal"] is True
    assert isinstance(es.sm, cma.sampler.GaussStandardConstant)
    assert float(np.ptp(es.sigma_vec.scaling)) > 0.0  # the diagonal did adapt
    with pytest.raises(ValueError, match="cma_diagonal=True.*cma_diagonal=False"):
        evolve(Controller(TOY_CFG), ev, dataclasses.replace(cfg, cma_diagonal=False), tmp_path)


def test_real_eval_and_bad_backends_are_reported(tmp_path: Path) -> None:
    cfg = small_cfg(generations=2, real_eval_every=1, real_eval_episodes=3, eval_every=0)
    result = evolve(
        Controller(TOY_CFG),
        toy_evaluator(),
        cfg,
        tmp_path / "ok",
        real_backend=toy_evaluator(steps=5),
    )
    assert all("controller/real/return" in r for r in result.history)

    class NaNBackend:
        def evaluate(self, params: np.ndarray, rollouts: int, seed: int) -> np.ndarray:
            return np.full((params.shape[0], rollouts), np.nan)

        def close(self) -> None: ...

    with pytest.raises(ValueError, match="NaN or inf"):
        evolve(Controller(TOY_CFG), NaNBackend(), small_cfg(), tmp_path / "nan")
    with pytest.raises(ValueError, match="needs a world_model"):
        make_evaluator(small_cfg(), Controller(TOY_CFG))
    with pytest.raises(ValueError, match="needs a rollout"):
        make_evaluator(small_cfg(backend="processes"), Controller(TOY_CFG))
    with pytest.raises(ValueError, match="population_size"):
        EvolveConfig(population_size=1)


def test_es_uses_its_own_rng_not_numpys_global_one() -> None:
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    es = new_strategy(np.zeros(4), 0.1, 6, seed=1)
    es.ask()
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert cma.__version__  # state files record the version they were written with


# ---------------------------------------------------------------------------------- processes
class ConstantAgent:
    """Moves the paddle at a constant speed params[0] (clipped): a trivial real-env agent."""

    def __init__(self, params: np.ndarray) -> None:
        self.a = float(np.clip(params[0], -1.0, 1.0))

    def predict(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        return np.full((obs.shape[0], 1), self.a, np.float32), state


class CrashOnce:
    """Agent factory whose first call in any process kills that process (marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, params: np.ndarray) -> ConstantAgent:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return ConstantAgent(params)
        os.close(fd)
        os._exit(13)


def test_process_evaluator_runs_real_catch_and_survives_a_dead_worker(tmp_path: Path) -> None:
    params = np.array([[0.0], [1.0], [-1.0]])
    rollout = EnvRollout("dreamlab/Catch-v0", ConstantAgent, env_kwargs={"num_balls": 2})
    expected = np.array([[rollout(p, s) for s in episode_seeds(7, 2)] for p in params])
    assert set(np.unique(expected)) <= {-2.0, 0.0, 2.0}

    crashing = EnvRollout(
        "dreamlab/Catch-v0", CrashOnce(str(tmp_path / "crashed")), env_kwargs={"num_balls": 2}
    )
    ev = ProcessEvaluator(crashing, workers=1)
    try:
        got = ev.evaluate(params, rollouts=2, seed=7)
    finally:
        ev.close()
    assert (tmp_path / "crashed").exists() and ev.restarts >= 1
    np.testing.assert_array_equal(got, expected)


def test_local_evaluator_matches_the_process_pool_episode_for_episode() -> None:
    params = np.array([[0.0], [1.0], [-1.0], [0.4]])
    rollout = EnvRollout("dreamlab/Catch-v0", ConstantAgent, env_kwargs={"num_balls": 2})
    expected = np.array([[rollout(p, s) for s in episode_seeds(11, 5)] for p in params])
    ev = LocalEvaluator(rollout, num_envs=2)  # fewer slots than episodes: slots are reused
    try:
        got = ev.evaluate(params, rollouts=5, seed=11)
        again = ev.evaluate(params, rollouts=5, seed=11)
    finally:
        ev.close()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(again, expected)
    assert len(np.unique(expected)) > 1  # the candidates differ, so the test can fail
    with pytest.raises(ValueError, match="num_envs"):
        LocalEvaluator(rollout, num_envs=0)


def test_child_threads_sets_the_variables_for_spawned_processes_only() -> None:
    import multiprocessing as mp
    import os

    before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with child_threads(1):
        with mp.get_context("spawn").Pool(1) as pool:
            seen = pool.apply(os.getenv, ("OPENBLAS_NUM_THREADS",))
    assert seen == "1"
    assert {k: os.environ.get(k) for k in before} == before


def test_run_episode_respects_max_steps() -> None:
    from dreamlab.envs import make_env

    env = make_env("dreamlab/Catch-v0", num_balls=3)
    assert run_episode(env, ConstantAgent(np.zeros(1)), seed=0, max_episode_steps=5) == 0.0
