"""Where CMA-ES candidates are scored: a backend, not an algorithm.

Every evaluator answers one question, ``evaluate(params (P, D), rollouts R, seed) -> returns
(P, R)``: the return of each of P candidate controllers in each of R episodes. All candidates of
one call see the same R episode seeds (common random numbers), so differences in their returns
come from the candidates rather than from luckier starts.

- :class:`~dreamlab.train.dream_evaluator.DreamEvaluator` (its own module): the whole
  population x rollouts as ONE batched dream. The default.
- :class:`LocalEvaluator`: real-env episodes in this process, a candidate's episodes in lockstep.
- :class:`ProcessEvaluator`: real-env episodes in local worker processes.
- :class:`RayEvaluator`: the same episodes as Ray tasks, on a laptop or a cluster. A worker that
  dies mid-generation does not lose the generation: its episodes are run again.

Real-env episodes are described by a *rollout function* ``fn(params (D,), seed) -> return``;
:class:`EnvRollout` is the standard one (a dreamlab env + an agent built from the parameters).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch

from dreamlab.data.rollout import play_episodes

__all__ = [
    "EnvRollout",
    "Evaluator",
    "LocalEvaluator",
    "ProcessEvaluator",
    "RayEvaluator",
    "RolloutFn",
    "check_params",
    "child_threads",
    "episode_seeds",
    "run_episode",
]

RolloutFn = Callable[[np.ndarray, int], float]
"""One episode: ``fn(params (D,), seed) -> return``. Must be picklable for process/Ray backends."""


@runtime_checkable
class Evaluator(Protocol):
    """Scores a population: ``evaluate(params (P, D), rollouts, seed) -> returns (P, R)``."""

    def evaluate(self, params: np.ndarray, rollouts: int, seed: int) -> np.ndarray:
        """Returns ``(P, R)`` float64 episode returns."""
        ...

    def close(self) -> None:
        """Release workers / device memory."""
        ...


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def child_threads(threads: int) -> Iterator[None]:
    """Processes spawned inside this block start with ``threads`` BLAS / OpenMP threads.

    ``torch.set_num_threads`` in a worker does not reach NumPy's OpenBLAS, whose idle threads
    spin: two CMA-ES workers on two cores, each with a two-thread OpenBLAS for CMA-ES's
    eigendecompositions, took 1.8 s instead of 0.3 s for some generations (BENCHMARKS.md). The
    variables are read when a child imports NumPy and torch, so they are set around the spawn
    and restored after it.
    """
    saved = {name: os.environ.get(name) for name in THREAD_VARS}
    os.environ.update({name: str(threads) for name in THREAD_VARS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def episode_seeds(seed: int, rollouts: int) -> list[int]:
    """The R episode seeds every candidate of one evaluation shares."""
    state = np.random.SeedSequence([seed, 0x5EED]).generate_state(rollouts, dtype=np.uint32)
    return [int(s) for s in state]


def check_params(params: np.ndarray, rollouts: int, dim: int | None = None) -> np.ndarray:
    """``params`` as ``(P, D)`` float64, checked: P >= 1, D == ``dim`` (if given), all finite,
    ``rollouts`` >= 1; raises a ValueError saying which fails."""
    arr = np.asarray(params, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"evaluate: params must be (P, D) with P >= 1, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"evaluate: params have {arr.shape[1]} values per candidate, the controller has {dim}"
        )
    if not np.isfinite(arr).all():
        raise ValueError("evaluate: params contain NaN or inf")
    if rollouts <= 0:
        raise ValueError(f"evaluate: rollouts must be >= 1, got {rollouts}")
    return arr


# ---------------------------------------------------------------------------------- real env
def run_episode(
    env: gym.Env[Any, Any], agent: Any, seed: int, max_episode_steps: int | None
) -> float:
    """Play one episode of ``agent`` (batched SB3-style ``predict``) in ``env``; return the return."""
    return play_episodes([env], agent, [seed], max_episode_steps=max_episode_steps)[
        0
    ].episode_return


_ENV_CACHE: dict[str, gym.Env[Any, Any]] = {}
"""Per-process envs of :class:`EnvRollout`, keyed by the rollout's token (one env per worker)."""


class EnvRollout:
    """A picklable rollout function: one real episode of the agent made from a parameter vector.

    Args:
        env_id: anything :func:`dreamlab.envs.make_env` accepts (preset name, Gymnasium id, ...).
        agent_factory: picklable ``factory(params (D,)) -> agent`` with a batched ``predict``;
            it should cache heavy parts (V and M) per process itself.
        max_episode_steps: optional cap on top of the env's own time limit.
        env_kwargs: keyword arguments for ``make_env``.
    """

    def __init__(
        self,
        env_id: str,
        agent_factory: Callable[[np.ndarray], Any],
        *,
        max_episode_steps: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.env_id = env_id
        self.agent_factory = agent_factory
        self.max_episode_steps = max_episode_steps
        self.env_kwargs = dict(env_kwargs or {})
        self.token = uuid.uuid4().hex

    def env(self) -> gym.Env[Any, Any]:
        """This process's env (made on first use)."""
        env = _ENV_CACHE.get(self.token)
        if env is None:
            from dreamlab.envs import make_env

            env = make_env(self.env_id, **self.env_kwargs)
            _ENV_CACHE[self.token] = env
        return env

    def __call__(self, params: np.ndarray, seed: int) -> float:
        agent = self.agent_factory(np.asarray(params))
        return run_episode(self.env(), agent, seed, self.max_episode_steps)


class LocalEvaluator:
    """Real-env episodes in this process: a candidate's R episodes in lockstep slots.

    No worker processes to start (importing torch and loading V and M in each costs seconds), and
    one batched ``predict`` per step for all R episodes; the choice for cheap envs such as Catch,
    and for CMA-ES's occasional real-env checks. Episodes use the same seeds as
    :class:`ProcessEvaluator`, so both give the same returns for a deterministic agent.

    Args:
        rollout: an :class:`EnvRollout` (its env and agent factory are used directly).
        num_envs: lockstep slots (envs made once and kept).
    """

    def __init__(self, rollout: EnvRollout, num_envs: int = 16) -> None:
        if num_envs < 1:
            raise ValueError(f"LocalEvaluator: num_envs must be >= 1, got {num_envs}")
        self.rollout = rollout
        self.num_envs = num_envs
        self._envs: list[gym.Env[Any, Any]] = []

    def evaluate(self, params: np.ndarray, rollouts: int, seed: int) -> np.ndarray:
        """Returns ``(P, R)``: candidate by candidate, its R episodes in lockstep."""
        from dreamlab.envs import make_env

        arr = check_params(params, rollouts)
        seeds = episode_seeds(seed, rollouts)
        while len(self._envs) < min(self.num_envs, rollouts):
            self._envs.append(make_env(self.rollout.env_id, **self.rollout.env_kwargs))
        out = np.empty((arr.shape[0], rollouts), dtype=np.float64)
        for p in range(arr.shape[0]):
            agent = self.rollout.agent_factory(arr[p])
            played = play_episodes(
                self._envs, agent, seeds, max_episode_steps=self.rollout.max_episode_steps
            )
            out[p] = [e.episode_return for e in played]
        return out

    def close(self) -> None:
        """Close the envs."""
        for env in self._envs:
            env.close()
        self._envs = []


_WORKER_ROLLOUT: RolloutFn | None = None


def _init_worker(rollout: RolloutFn, threads: int) -> None:
    global _WORKER_ROLLOUT
    _WORKER_ROLLOUT = rollout
    # Many workers each using every core for tiny matmuls only fight over the cores.
    torch.set_num_threads(threads)


def _worker_episode(params: np.ndarray, seed: int) -> float:
    assert _WORKER_ROLLOUT is not None, "worker was started without a rollout function"
    return float(_WORKER_ROLLOUT(params, seed))


class ProcessEvaluator:
    """Real-env episodes in a pool of local worker processes (spawned, so torch stays safe).

    A worker that dies (segfault, OOM kill) breaks the pool; the pool is rebuilt and the
    episodes that had not returned are run again, at most ``max_restarts`` times per call.

    Args:
        rollout: picklable rollout function (e.g. :class:`EnvRollout`).
        workers: number of processes; 0 = every CPU.
        max_restarts: pool rebuilds allowed per ``evaluate`` call before giving up.
        threads_per_worker: torch threads in each worker.
    """

    def __init__(
        self,
        rollout: RolloutFn,
        workers: int = 0,
        *,
        max_restarts: int = 3,
        threads_per_worker: int = 1,
    ) -> None:
        self.rollout = rollout
        self.workers = workers if workers > 0 else (os.cpu_count() or 1)
        self.max_restarts = max_restarts
        self.threads_per_worker = threads_per_worker
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0
        """pool rebuilds after a worker died, over the evaluator's life"""

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.rollout, self.threads_per_worker),
            )
        return self._pool

    def evaluate(self, params: np.ndarray, rollouts: int, seed: int) -> np.ndarray:
        """Returns ``(P, R)``: every (candidate, episode) pair runs as one pool task."""
        arr = check_params(params, rollouts)
        seeds = episode_seeds(seed, rollouts)
        out = np.full((arr.shape[0], rollouts), np.nan)
        todo = [(p, r) for p in range(arr.shape[0]) for r in range(rollouts)]
        restarts = 0
        while todo:
            pool = self._get_pool()
            with child_threads(self.threads_per_worker):  # workers start at the first submits
                futures: dict[Future[float], tuple[int, int]] = {
                    pool.submit(_worker_episode, arr[p], seeds[r]): (p, r) for p, r in todo
                }
            wait(futures)
            failed: list[tuple[int, int]] = []
            broken = False
            for fut, (p, r) in futures.items():
                try:
                    out[p, r] = fut.result()
                except BrokenProcessPool:
                    failed.append((p, r))
                    broken = True
            todo = failed
            if broken:
                restarts += 1
                self.restarts += 1
                self._shutdown()
                if restarts > self.max_restarts:
                    raise RuntimeError(
                        f"ProcessEvaluator: worker processes died {restarts} times in one "
                        f"evaluation; {len(todo)} episodes could not be run"
                    )
        return out

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        """Stop the worker processes."""
        self._shutdown()


# ---------------------------------------------------------------------------------- Ray
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "the 'ray' backend needs Ray: pip install 'dreamlab[ray]' (or use backend "
            "'dream' / 'processes')"
        ) from None
    return ray


def _ray_episode(rollout: RolloutFn, params: np.ndarray, seed: int) -> float:
    return float(rollout(params, seed))


class RayEvaluator:
    """Episodes as Ray tasks: local Ray or a cluster (``address``), scale-out without new code.

    Fault tolerance comes in two layers: Ray re-runs a task whose worker process died
    (``max_retries``), and when even that is exhausted the evaluator resubmits the episode itself
    (``max_resubmits`` per episode), so a generation always comes back complete or fails loudly.
    Errors raised by the rollout code itself are not retried (they would fail again).

    Args:
        rollout: picklable rollout function (e.g. :class:`EnvRollout`).
        address: Ray cluster address ('auto', 'ray://host:10001'); ``None`` starts a local Ray
            unless one is already running in this process.
        num_cpus: CPUs for a local Ray (``None`` = all).
        max_retries: Ray's own retries of a task whose worker died.
        max_resubmits: further resubmissions per episode by this evaluator.
        init_kwargs: extra keyword arguments for ``ray.init``.
    """

    def __init__(
        self,
        rollout: RolloutFn,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        max_retries: int = 3,
        max_resubmits: int = 3,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self._started_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            kwargs.update(init_kwargs or {})
            if address is not None:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus, **kwargs)
            self._started_ray = True
        self.max_resubmits = max_resubmits
        self._remote = ray.remote(num_cpus=1, max_retries=max_retries)(_ray_episode)
        self._rollout_ref = ray.put(rollout)
        self.resubmits = 0
        """episodes this evaluator had to resubmit after Ray gave up on them"""

    def _submit(self, params: np.ndarray, seed: int) -> Any:
        return self._remote.remote(self._rollout_ref, params, seed)

    def evaluate(self, params: np.ndarray, rollouts: int, seed: int) -> np.ndarray:
        """Returns ``(P, R)``; episodes lost to dead workers are run again."""
        ray = self._ray
        lost_errors = (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.RayActorError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.OwnerDiedError,
            ray.exceptions.LocalRayletDiedError,
        )
        arr = check_params(params, rollouts)
        seeds = episode_seeds(seed, rollouts)
        out = np.full((arr.shape[0], rollouts), np.nan)
        param_refs = [ray.put(arr[p]) for p in range(arr.shape[0])]
        pending = {
            self._submit(param_refs[p], seeds[r]): (p, r)
            for p in range(arr.shape[0])
            for r in range(rollouts)
        }
        attempts: dict[tuple[int, int], int] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=min(len(pending), 256), timeout=None)
            for ref in ready:
                p, r = pending.pop(ref)
                try:
                    out[p, r] = ray.get(ref)
                except lost_errors as e:
                    attempts[(p, r)] = attempts.get((p, r), 0) + 1
                    if attempts[(p, r)] > self.max_resubmits:
                        raise RuntimeError(
                            f"RayEvaluator: episode (candidate {p}, rollout {r}) was lost "
                            f"{attempts[(p, r)]} times; last error: {e}"
                        ) from e
                    self.resubmits += 1
                    pending[self._submit(param_refs[p], seeds[r])] = (p, r)
                except ray.exceptions.RayTaskError as e:
                    raise RuntimeError(
                        f"RayEvaluator: the rollout of candidate {p}, episode {r} raised: "
                        f"{e.cause if hasattr(e, 'cause') else e}"
                    ) from e
        if not np.isfinite(out).all():
            raise RuntimeError("RayEvaluator: some episodes returned NaN or inf")
        return out

    def close(self) -> None:
        """Shut Ray down if this evaluator started it."""
        if self._started_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self._started_ray = False
