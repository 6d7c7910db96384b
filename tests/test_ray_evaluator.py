"""RayEvaluator on a small local Ray (2 CPUs): a worker killed mid-generation loses nothing."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from ray import cloudpickle  # noqa: E402  (Ray's vendored copy is the one it serializes with)

from dreamlab.models.controller import Controller, ControllerConfig  # noqa: E402
from dreamlab.train.evaluators import RayEvaluator, episode_seeds  # noqa: E402
from dreamlab.train.evolve import EvolveConfig, evolve, make_evaluator  # noqa: E402

# Ray workers cannot import this test module; ship its classes by value instead.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Quadratic:
    """A rollout with a known answer: ``-|params - 1|^2`` plus a seed-dependent offset."""

    def __call__(self, params: np.ndarray, seed: int) -> float:
        return float(-np.sum((np.asarray(params) - 1.0) ** 2) + (seed % 7) * 0.01)


class DieOnce(Quadratic):
    """Kills its worker process on the first call anywhere (a marker file makes it once)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, params: np.ndarray, seed: int) -> float:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().__call__(params, seed)
        os.close(fd)
        os._exit(1)


class Raises(Quadratic):
    def __call__(self, params: np.ndarray, seed: int) -> float:
        raise ValueError("broken env")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def expected(params: np.ndarray, rollouts: int, seed: int) -> np.ndarray:
    q = Quadratic()
    return np.array([[q(p, s) for s in episode_seeds(seed, rollouts)] for p in params])


def test_killed_worker_is_resubmitted_and_the_generation_is_complete(
    local_ray: None, tmp_path: Path
) -> None:
    params = np.random.default_rng(0).normal(size=(6, 5))
    # max_retries=0: Ray itself gives up on the dead worker's task; the evaluator resubmits.
    ev = RayEvaluator(DieOnce(str(tmp_path / "died")), max_retries=0)
    got = ev.evaluate(params, rollouts=3, seed=11)
    assert (tmp_path / "died").exists()
    assert ev.resubmits == 1
    np.testing.assert_allclose(got, expected(params, 3, 11))
    ev.close()  # Ray was started by the fixture, so it keeps running
    assert ray.is_initialized()


def test_ray_task_retries_also_recover_a_dead_worker(local_ray: None, tmp_path: Path) -> None:
    params = np.random.default_rng(1).normal(size=(4, 5))
    ev = RayEvaluator(DieOnce(str(tmp_path / "died")), max_retries=2)
    got = ev.evaluate(params, rollouts=2, seed=3)
    assert (tmp_path / "died").exists() and ev.resubmits == 0  # Ray's own retry did it
    np.testing.assert_allclose(got, expected(params, 2, 3))


def test_errors_in_the_rollout_are_raised_not_retried(local_ray: None) -> None:
    ev = RayEvaluator(Raises())
    with pytest.raises(RuntimeError, match="broken env"):
        ev.evaluate(np.zeros((2, 5)), rollouts=1, seed=0)


def test_evolve_with_the_ray_backend(local_ray: None, tmp_path: Path) -> None:
    controller = Controller(
        ControllerConfig(
            feature_dim=3, action_dim=1, mapping="box", action_low=[-1.0], action_high=[1.0]
        )
    )
    cfg = EvolveConfig(
        generations=3,
        population_size=4,
        rollouts_per_candidate=1,
        eval_every=0,
        backend="ray",
        tensorboard=False,
        progress=False,
        x0="zeros",
    )
    ev = make_evaluator(cfg, controller, rollout=Quadratic())
    assert isinstance(ev, RayEvaluator)
    result = evolve(controller, ev, cfg, tmp_path)
    assert len(result.history) == 3 and np.isfinite(result.best_return)


def test_missing_ray_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'dreamlab\[ray\]'"):
        RayEvaluator(Quadratic())
