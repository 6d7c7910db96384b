"""Collect episodes from a real environment into an episode store, in parallel and resumably.

Episode ``i`` is always played with seed ``cfg.seed + i`` (env reset, action space and policy), so
the data does not depend on how episodes are scheduled over workers, and re-running a collection
only plays the indices that are missing. Every episode is written atomically when it finishes, so a
killed collection (even by SIGKILL) keeps all finished episodes, leaves no partial one, and a rerun
plays exactly the missing indices. A rerun says where it resumes, or that there is nothing to do.

Worker processes (``multiprocessing``, spawn) each build their env once and write finished
episodes straight into the store; they die with the collecting process (a SIGKILLed collection
leaves no orphan that goes on writing the episodes its rerun plays). With ``ray=True`` Ray tasks
play the episodes and the driver writes them, so the store does not need to be on a file system
the Ray nodes share.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dreamlab.data.schema import StoreError, StoreMeta
from dreamlab.data.store import EpisodeStore
from dreamlab.io import SettingError


@dataclass
class CollectConfig:
    """Collect episodes from an environment into an episode store."""

    env: str = "catch"
    """preset name (catch, carracing, ...), registered Gymnasium id, or pkg.module:Class"""
    out: Path = Path("runs/default/data")
    """directory of the episode store (created if missing, resumed if it exists)"""
    episodes: int = 100
    """number of episodes the store must hold when collection ends"""
    policy: str = "random"
    """collection policy: random, brownian, expert, or 'preset' for the preset's collect_policy"""
    seed: int = 0
    """episode i is played with seed seed + i"""
    workers: int | None = None
    """parallel worker processes (Ray tasks in flight with --ray); default: os.cpu_count()"""
    ray: bool = False
    """play episodes as Ray tasks instead of local worker processes"""
    ray_address: str | None = None
    """address of a running Ray cluster; None starts a local one"""
    max_episode_steps: int | None = None
    """truncate episodes after this many steps; None keeps the preset's limit"""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """extra keyword arguments for the env constructor, merged over the preset's"""
    progress: bool = True
    """show a progress bar (the one-line summary at the end is printed either way)"""

    def __post_init__(self) -> None:
        if not 0 <= self.episodes <= MAX_EPISODES:
            raise SettingError(
                f"--episodes: expected 0 to {MAX_EPISODES:,} episodes, got {self.episodes}"
            )
        if self.seed < 0:
            raise SettingError(f"--seed: expected an integer >= 0, got {self.seed}")
        if self.workers is not None and self.workers < 0:
            raise SettingError(f"--workers: expected >= 0 (0 = every CPU), got {self.workers}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise SettingError(f"--max-episode-steps: expected >= 1, got {self.max_episode_steps}")


MAX_EPISODES = 1_000_000
"""the most episodes one store may be asked for (the paper collected 10,000; a million 64x64
episodes of 1,000 frames would be 12 TB)"""


@dataclass
class CollectSummary:
    """What the store holds after a collection, and what this run added."""

    episodes: int
    """episodes in the store"""
    frames: int
    """observations in the store (T+1 per episode)"""
    mean_return: float
    """mean undiscounted return over the stored episodes"""
    disk_bytes: int
    """total size of the episode files"""
    seconds: float
    """wall time of this run"""
    new_episodes: int
    """episodes written by this run"""


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to play and store episodes (picklable, no open resources)."""

    preset: Any
    """the resolved EnvPreset"""
    policy: str
    seed: int
    store_path: str | None
    """where workers write episodes; None: return them to the caller (Ray)"""


@dataclass(frozen=True)
class EpisodeStats:
    """Small result of one episode, sent back to the parent."""

    index: int
    num_steps: int
    episode_return: float
    file_bytes: int


def resolve_collect_preset(cfg: CollectConfig) -> Any:
    """The env preset for ``cfg.env`` with ``max_episode_steps`` and ``env_kwargs`` applied."""
    from dreamlab.envs.presets import resolve_preset

    preset = resolve_preset(cfg.env)
    changes: dict[str, Any] = {}
    if cfg.max_episode_steps is not None:
        changes["max_episode_steps"] = cfg.max_episode_steps
    if cfg.env_kwargs:
        changes["env_kwargs"] = {**preset.env_kwargs, **cfg.env_kwargs}
    return dataclasses.replace(preset, **changes) if changes else preset


def _policy_name(policy: str, preset: Any) -> str:
    return str(preset.collect_policy) if policy == "preset" else policy


def play_episode(
    env: Any, policy_name: str, seed: int, max_steps: int | None
) -> dict[str, np.ndarray]:
    """Play one episode with a fresh policy, everything seeded with ``seed``.

    Args:
        env: a dreamlab env (``make_env``): ``(H, W, 3) uint8`` observations.
        policy_name: name for ``dreamlab.envs.policies.make_policy``.
        seed: seeds the env reset, the action space and the policy.
        max_steps: safety cap: truncate here if the env has not ended the episode by itself.

    Returns:
        The episode's arrays: obs ``(T+1, H, W, 3)``, action ``(T, *shape)``, reward ``(T,)``,
        terminated ``(T,)``, truncated ``(T,)``.
    """
    from dreamlab.data.rollout import play_episodes
    from dreamlab.envs.policies import make_policy

    policy = make_policy(policy_name, env.action_space, seed)
    played = play_episodes([env], policy, [seed], keep_arrays=True, max_episode_steps=max_steps)
    arrays = played[0].arrays
    assert arrays is not None  # keep_arrays
    return arrays


def _episode_info(job: _Job, index: int, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {
        "seed": str(job.seed + index),
        "policy": _policy_name(job.policy, job.preset),
        "preset": str(job.preset.name),
        "return": repr(float(arrays["reward"].sum(dtype=np.float64))),
    }


# Per-process state of a worker: its env (built once) and, for local workers, the open store.
_WORKER: dict[str, Any] = {}
# In a pool worker, the pid of the collecting process that started it.
_PARENT_PID: int | None = None


def _worker_env(job: _Job) -> Any:
    if _WORKER.get("job") != job:
        from dreamlab.envs import make_env

        if "env" in _WORKER:
            _WORKER["env"].close()
        _WORKER.clear()
        _WORKER["env"] = make_env(job.preset.env_id, job.preset)
        _WORKER["job"] = job
        if job.store_path is not None:
            _WORKER["store"] = EpisodeStore.open(job.store_path)
    return _WORKER["env"]


def _play(job: _Job, index: int) -> dict[str, np.ndarray]:
    env = _worker_env(job)
    return play_episode(
        env, _policy_name(job.policy, job.preset), job.seed + index, _cap(job.preset)
    )


def _cap(preset: Any) -> int | None:
    # Agent steps never exceed env steps, so this cap only bites when the env has no limit of its own.
    return int(preset.max_episode_steps) if preset.max_episode_steps else None


def _play_and_store(job: _Job, index: int) -> EpisodeStats:
    """Worker task: play episode ``index`` and write it into the store."""
    arrays = _play(job, index)
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)  # the collection was killed; its rerun plays this episode
    path = _WORKER["store"].append(arrays, index=index, info=_episode_info(job, index, arrays))
    return EpisodeStats(
        index, len(arrays["reward"]), float(arrays["reward"].sum()), path.stat().st_size
    )


def _init_worker(job: _Job, parent: int) -> None:
    """Start a pool worker of the collecting process ``parent``: make it die with that process
    (an orphan would go on writing episodes that a rerun also plays), then build its env."""
    global _PARENT_PID
    _PARENT_PID = parent
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # killed while this worker was starting
        os._exit(1)
    # Close the env when the pool ends this worker: an env may run its own process (VizDoom's
    # game), which would otherwise outlive the worker and keep a core busy
    atexit.register(_close_worker_env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _worker_env(job)


def _close_worker_env() -> None:
    env = _WORKER.pop("env", None)
    if env is not None:
        env.close()


def _play_for_ray(job: _Job, index: int) -> tuple[int, dict[str, np.ndarray]]:
    """Ray task: play episode ``index`` and return its arrays to the driver."""
    return index, _play(job, index)


def _run_serial(job: _Job, indices: list[int]) -> Iterator[EpisodeStats]:
    try:
        for index in indices:
            yield _play_and_store(job, index)
    finally:
        if "env" in _WORKER:
            _WORKER["env"].close()
        _WORKER.clear()


def _run_pool(job: _Job, indices: list[int], workers: int) -> Iterator[EpisodeStats]:
    # spawn, not fork: the parent may hold threads (torch, progress bars) that fork would copy.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(job, os.getpid())) as pool:
        yield from pool.imap_unordered(functools.partial(_play_and_store, job), indices)
        pool.close()  # workers leave their loop and close their envs (terminate skips that)
        pool.join()


def _run_ray(
    job: _Job, indices: list[int], workers: int, cfg: CollectConfig, store: EpisodeStore
) -> Iterator[EpisodeStats]:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "collect(ray=True) needs Ray, which is not installed: pip install 'dreamlab[ray]'"
        ) from None
    started = not ray.is_initialized()
    if started:
        if cfg.ray_address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=cfg.ray_address, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(_play_for_ray)
        pending = list(indices)
        in_flight: list[Any] = []
        # A bounded window of tasks keeps at most ~2 episodes per worker in the object store.
        while pending or in_flight:
            while pending and len(in_flight) < 2 * workers:
                in_flight.append(remote.remote(job, pending.pop(0)))
            done, in_flight = ray.wait(in_flight, num_returns=1)
            index, arrays = ray.get(done[0])
            path = store.append(arrays, index=index, info=_episode_info(job, index, arrays))
            yield EpisodeStats(
                index, len(arrays["reward"]), float(arrays["reward"].sum()), path.stat().st_size
            )
    finally:
        if started:
            ray.shutdown()


def _check_collect_meta(store: EpisodeStore, meta: StoreMeta) -> None:
    """A resumed store must have been collected with the same preset, seed and policy."""
    old_preset = store.meta.preset
    if old_preset is not None:  # a store imported from Minari has no preset to compare with
        for key, value in (meta.preset or {}).items():
            if old_preset.get(key) != value:
                raise StoreError(
                    f"{store.path}: incompatible store (preset.{key}: store has "
                    f"{old_preset.get(key)!r}, got {value!r}); collect into a new --out directory"
                )
    old = store.meta.extra.get("collect", {})
    for key, value in meta.extra["collect"].items():
        if key in old and old[key] != value:
            raise StoreError(
                f"{store.path}: incompatible store (collect.{key}: store was collected with "
                f"{old[key]!r}, got {value!r}); collect into a new --out directory"
            )


def _summarize(store: EpisodeStore, seconds: float, new_episodes: int) -> CollectSummary:
    store.refresh()
    returns = []
    for i in store.indices:
        info = store.info(i)
        if "return" in info:
            returns.append(float(info["return"]))
        else:  # episodes imported from elsewhere carry no cached return
            returns.append(float(store.episode(i)["reward"].sum(dtype=np.float64)))
    return CollectSummary(
        episodes=len(store),
        frames=store.num_frames,
        mean_return=float(np.mean(returns)) if returns else float("nan"),
        disk_bytes=store.disk_bytes(),
        seconds=seconds,
        new_episodes=new_episodes,
    )


def collect(cfg: CollectConfig) -> CollectSummary:
    """Collect episodes until the store at ``cfg.out`` holds ``cfg.episodes`` of them.

    The env is built and checked up front (``make_env`` validates its spaces), then the missing
    episode indices are played by ``cfg.workers`` processes (or Ray tasks), each written to the
    store the moment it ends.

    Raises:
        EnvSpecError: the env cannot be used (from ``dreamlab.envs``).
        StoreError: ``cfg.out`` holds a store of another env, preset, seed or policy.
    """
    from dreamlab.envs import make_env
    from dreamlab.envs.policies import POLICY_NAMES
    from dreamlab.envs.presets import preset_to_dict

    t0 = time.perf_counter()
    preset = resolve_collect_preset(cfg)
    policy_name = _policy_name(cfg.policy, preset)
    if policy_name not in POLICY_NAMES:
        raise ValueError(
            f"CollectConfig.policy: unknown policy {cfg.policy!r}; expected 'preset' or one of "
            f"{list(POLICY_NAMES)}"
        )
    env = make_env(preset.env_id, preset)
    try:
        obs_shape = tuple(env.observation_space.shape or ())
        meta = StoreMeta.for_env(
            preset.env_id,
            obs_shape,
            env.action_space,
            preset=preset_to_dict(preset),
            extra={"collect": {"seed": cfg.seed, "policy": policy_name}},
        )
    finally:
        env.close()
    store = EpisodeStore.open_or_create(cfg.out, meta)
    _check_collect_meta(store, meta)
    missing = store.missing(cfg.episodes)
    have = cfg.episodes - len(missing)
    if not missing:
        print(
            f"{store.path} already holds the {cfg.episodes} episodes asked for; nothing to "
            "collect (ask for more --episodes, or remove it to collect again)",
            file=sys.stderr,
            flush=True,
        )
    elif have:
        print(
            f"resuming collect at {have} of {cfg.episodes} episodes ({store.path})",
            file=sys.stderr,
            flush=True,
        )
    workers = max(1, min(cfg.workers or os.cpu_count() or 1, max(1, len(missing))))

    job = _Job(preset=preset, policy=policy_name, seed=cfg.seed, store_path=str(store.path))
    if cfg.ray:
        results = _run_ray(dataclasses.replace(job, store_path=None), missing, workers, cfg, store)
    elif workers == 1:
        results = _run_serial(job, missing)
    else:
        results = _run_pool(job, missing, workers)

    new = 0
    if missing:
        from dreamlab.progress import tqdm

        with tqdm(
            total=cfg.episodes,
            initial=have,
            unit="ep",
            desc=f"collect {preset.name}",
            disable=not cfg.progress,
        ) as bar:
            for stats in results:
                new += 1
                bar.update(1)
                bar.set_postfix(steps=stats.num_steps, ret=f"{stats.episode_return:.1f}")
    summary = _summarize(store, time.perf_counter() - t0, new)
    _print_summary(store, summary)
    return summary


def _print_summary(store: EpisodeStore, s: CollectSummary) -> None:
    from rich.console import Console

    Console().print(
        f"[bold]{store.path}[/]: {s.episodes} episodes ({s.new_episodes} new), {s.frames} frames, "
        f"mean return {s.mean_return:.2f}, {s.disk_bytes / 1e6:.1f} MB, {s.seconds:.1f} s"
    )
