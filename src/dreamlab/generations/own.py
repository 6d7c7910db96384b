"""A new run of any generation from a user's own env or recorded episodes, sized from them.

``dreamlab pipeline --generation vmc|rssm|diffusion|tokens --env pkg.module:Class|GymId
[--env-kwargs JSON] | --data STORE --run R`` starts here, whatever the generation:

1. the episodes come first: ``COLLECT_EPISODES`` random-policy episodes of the env collected into
   ``RUN/data`` (resumably), or the store ``--data`` linked in as ``RUN/data``;
2. :func:`store_facts` reads from them what every generation sizes itself by: the frame size,
   the action space, the episode lengths, whether episodes end on failure (``terminated``) or on
   a time limit, the share of foreground pixels;
3. the generation's own ``*_own_config(facts, env, env_kwargs, seed, scale)`` turns those facts
   into its run config (preset ``generic``), which its pipeline records in ``RUN/config.json``,
   so ``dreamlab pipeline --run R`` resumes it like any preset's run.

Every agent learns only from those episodes and in its world model's dream; the real env scores
the agent at the end and does nothing else. ``--scale`` multiplies every training budget (a
quick look, or the tests).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import STORE_FILE, EpisodeStore
from dreamlab.envs.trust import check_env_trusted
from dreamlab.rundir import RunError, store_action_space
from dreamlab.worldmodel import ActionSpec

__all__ = [
    "COLLECT_EPISODES",
    "GENERIC",
    "OwnConfig",
    "StoreFacts",
    "check_same_env",
    "failure_share",
    "foreground_share",
    "foreground_weight",
    "new_own_store",
    "open_own",
    "parse_env_kwargs",
    "prepare_data",
    "scaled",
    "store_env",
    "store_facts",
]

GENERIC = "generic"
"""the preset name a run sized from its env and data records"""
COLLECT_EPISODES = 200
"""random-policy episodes collected for a new run (times ``--scale``, at least 8)"""


def scaled(n: int, scale: float, least: int = 2) -> int:
    """Budget ``n`` times ``scale``, at least ``least``."""
    return max(least, round(n * scale))


def parse_env_kwargs(text: str | None) -> dict[str, Any]:
    """``--env-kwargs`` JSON as a dict ({} when absent).

    Raises:
        RunError: not JSON, or not a JSON object.
    """
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunError(f"--env-kwargs: not JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise RunError(
            f"--env-kwargs: expected a JSON object like '{{\"size\": 32}}', got {text!r}"
        )
    return value


def check_same_env(
    path: Path, made: tuple[str, dict[str, Any]], env: str | None, kwargs: dict[str, Any]
) -> None:
    """Refuse resuming the run at ``path``, made from env ``made``, with another ``--env`` or
    ``--env-kwargs``."""
    if (env is not None and env != made[0]) or (kwargs and kwargs != made[1]):
        raise RunError(
            f"{path} was made from env {made[0]!r} {made[1]}; resume it with "
            "`dreamlab pipeline --run` alone, or use another --run directory"
        )


def _link_store(source: Path, target: Path) -> None:
    """Copy the episode store ``source`` to ``target`` (hard links where the disk allows), the
    run's own ``data/``; written beside and renamed, so a killed copy leaves nothing half-made."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, partial, copy_function=link)
    os.replace(partial, target)


def check_frames(store: EpisodeStore) -> tuple[int, ...]:
    """The frame shape of ``store``, checked usable by every generation: square RGB frames and a
    ``Discrete(n)`` or 1-D ``Box`` action space (else :class:`RunError`)."""
    shape = tuple(store.meta.schema["obs"].shape)
    if len(shape) != 3 or shape[-1] != 3 or shape[0] != shape[1]:
        raise RunError(
            f"{store.path}: frames of shape {shape}; the world models need square RGB frames "
            "(S, S, 3) — make_env resizes an env's frames to 64x64"
        )
    space = store_action_space(store)
    if not (hasattr(space, "n") or len(getattr(space, "shape", ()) or ()) == 1):
        raise RunError(f"{store.path}: action space {space}; expected Discrete(n) or a 1-D Box")
    return shape


def prepare_data(
    run: Path,
    env: str | None,
    env_kwargs: dict[str, Any],
    data: Path | None,
    seed: int,
    progress: bool,
    episodes: int = COLLECT_EPISODES,
) -> tuple[EpisodeStore, str, dict[str, Any]]:
    """``RUN/data`` for a new run: ``data`` linked in, or ``episodes`` random episodes of ``env``
    collected (resumably). Returns the store and the env it came from.

    Raises:
        RunError: ``data`` is not an episode store of frames, or names another env than ``env``.
    """
    target = run / "data"
    if data is not None:
        data = Path(data)
        if not (data / STORE_FILE).is_file():
            raise RunError(f"{data}: not an episode store (no {STORE_FILE}); make one with collect")
        store = EpisodeStore.open(data)
        if store.meta.kind != "observations" or "obs" not in store.meta.schema:
            raise RunError(f"{data}: holds {store.meta.kind}, not frames; give the store of frames")
        recorded, kwargs = store_env(store)
        if env is not None and env not in (recorded, store.meta.env_id):
            raise RunError(
                f"{data}: its episodes come from env {recorded!r}, not {env!r}; give that env's "
                "data or leave out --env"
            )
        check_env_trusted(recorded, str(data / STORE_FILE))  # the run will make this env
        check_frames(store)  # before anything is written
        if not (target / STORE_FILE).is_file():
            run.mkdir(parents=True, exist_ok=True)
            _link_store(data, target)
        return EpisodeStore.open(target), recorded, {**kwargs, **env_kwargs}
    if env is None:
        raise RunError(f"{run}: no run here; start one with --preset NAME, --env ENV or --data DIR")
    collect(
        CollectConfig(
            env=env,
            out=target,
            episodes=episodes,
            policy="random",
            seed=seed,
            env_kwargs=dict(env_kwargs),
            progress=progress,
        )
    )
    return EpisodeStore.open(target), env, dict(env_kwargs)


def new_own_store(
    run: Path,
    env: str | None,
    env_kwargs: dict[str, Any],
    data: Path | None,
    seed: int,
    progress: bool,
    scale: float = 1.0,
    check_actions: Callable[[ActionSpec], None] | None = None,
) -> tuple[EpisodeStore, str, dict[str, Any]]:
    """:func:`prepare_data` for a new run, after making ``env`` once and calling
    ``check_actions`` on its (or the store's) action space: a bad env, or actions the generation
    cannot take, are one clear error before anything is written."""
    if env is not None:
        from dreamlab.envs import make_env

        probe = make_env(env, **env_kwargs)
        space = probe.action_space
        probe.close()
    elif data is not None and (Path(data) / STORE_FILE).is_file():
        space = store_action_space(EpisodeStore.open(data))
    else:
        space = None
    if check_actions is not None and space is not None:
        check_actions(ActionSpec.from_space(space))
    episodes = scaled(COLLECT_EPISODES, scale, least=8)
    return prepare_data(run, env, env_kwargs, data, seed, progress, episodes)


def foreground_share(store: EpisodeStore, frames: int = 256) -> float:
    """Share of pixels that differ from their frame's median colour (the models'
    ``foreground``), over up to ``frames`` frames spread across the store."""
    from dreamlab.models import foreground_weights, frames_to_tensor

    indices = list(store.indices)
    rows = []
    per_episode = max(1, frames // max(1, len(indices)))
    for i in indices[: frames // per_episode]:
        obs = store.episode(i)["obs"]
        rows.append(np.asarray(obs[:: max(1, len(obs) // per_episode)][:per_episode]))
    x = frames_to_tensor(np.concatenate(rows))
    weights = foreground_weights(x, 1.0, 0.1)  # 1 on background, 2 on foreground
    return float((weights - 1.0).mean())


def foreground_weight(share: float) -> float:
    """The extra image-loss weight on foreground pixels for a store whose foreground is ``share``
    of the pixels: 0.6 / share, 1..20; 0 when the foreground is 10 % or more.

    A model's image loss on small objects sits on a background-only plateau unless they weigh
    enough of it (Catch: 0.7 % of the pixels at weight 20, docs/vm.md). Two 8x8 objects on
    64x64 (3.1 %): at 13 % of the loss V learned one object in 600 steps, not the other; at 25 %
    (weight 8) it never drew Dodge's falling rock in 2,000 steps, at 62 % (weight 20) it drew it
    by step 500 (docs/envs.md)."""
    return float(np.clip(0.6 / max(share, 1e-6), 1.0, 20.0)) if share < 0.1 else 0.0


def failure_share(store: EpisodeStore) -> float:
    """Share of ``store``'s episodes whose last step is ``terminated`` (ended by the env, not by a
    time limit): > 0 for an env that ends on failure."""
    ends = [bool(np.asarray(store.episode(i)["terminated"])[-1:].any()) for i in store.indices]
    return float(np.mean(ends)) if ends else 0.0


@dataclass(frozen=True)
class StoreFacts:
    """What every generation sizes a run by, read from its episodes (:func:`store_facts`)."""

    frame_size: int
    """side of the square RGB frames"""
    spec: ActionSpec
    """the action space: Discrete(n) or a 1-D Box"""
    episodes: int
    """episodes in the store"""
    frames: int
    """frames in the store (steps + one first frame per episode)"""
    median_length: float
    """median steps per episode"""
    dream_steps: int
    """how long a dream may last: the 95th percentile of the lengths + 20 %, 10..1000"""
    seq_len: int
    """a training window: the median length, 4..32"""
    dies: bool
    """whether any episode ends ``terminated`` (the env ends on failure, not only on time)"""
    foreground_share: float
    """share of the pixels that are foreground (objects, not the background colour)"""
    mean_return: float
    """mean return of the store's episodes (the collecting policy's: random play's)"""

    def line(self) -> str:
        """One line for the pipeline's first message."""
        ends = "on failure" if self.dies else "on a time limit"
        return (
            f"{self.episodes} episodes of median {self.median_length:.0f} steps (ending {ends}), "
            f"{self.frame_size}px frames, {self.spec.kind}({self.spec.n}) actions"
        )


def store_env(store: EpisodeStore) -> tuple[str, dict[str, Any]]:
    """The env (name, keywords) a store's episodes were collected in, as its metadata records it
    (the env preset's name and keywords, else the env id)."""
    preset = store.meta.preset or {}
    return str(preset.get("name") or store.meta.env_id), dict(preset.get("env_kwargs") or {})


def store_facts(store: EpisodeStore) -> StoreFacts:
    """The :class:`StoreFacts` of ``store``.

    Raises:
        RunError: no episodes, frames that are not square RGB images, or an unusable action space.
    """
    shape = check_frames(store)
    lengths = np.asarray(store.lengths, dtype=np.int64)
    if len(lengths) == 0:
        raise RunError(f"{store.path}: holds no episodes")
    returns = [float(np.sum(store.episode(i)["reward"])) for i in store.indices]
    return StoreFacts(
        frame_size=int(shape[0]),
        spec=ActionSpec.from_space(store_action_space(store)),
        episodes=len(lengths),
        frames=int(lengths.sum() + len(lengths)),
        median_length=float(np.median(lengths)),
        dream_steps=int(np.clip(np.ceil(np.percentile(lengths, 95) * 1.2), 10, 1000)),
        seq_len=int(np.clip(np.median(lengths), 4, 32)),
        dies=failure_share(store) > 0,
        foreground_share=foreground_share(store),
        mean_return=float(np.mean(returns)),
    )


class OwnConfig(Protocol):
    """What :func:`open_own` reads of a generation's run config."""

    env: str
    env_kwargs: dict[str, Any]


C = TypeVar("C", bound=OwnConfig)


def open_own(
    path: Path,
    options: Any,
    saved: C | None,
    own_config: Callable[[StoreFacts, str, dict[str, Any], int, float], C],
    *,
    title: str,
    describe: Callable[[C], str],
    check_actions: Callable[[ActionSpec], None] | None = None,
) -> C:
    """The config of a run sized from ``--env``/``--data`` (``options``, a ``PipelineConfig``).

    An existing run (``saved``, its recorded config) must have been made from the same env and
    is returned as it is. A new one gets its episodes (:func:`new_own_store`), its facts and
    ``own_config(facts, env, env_kwargs, seed, scale)``; one line says what it was sized from
    (``title`` names the run, ``describe`` its sizes). The caller records the config.
    """
    kwargs = parse_env_kwargs(options.env_kwargs)
    if saved is not None:
        check_same_env(path, (saved.env, saved.env_kwargs), options.env, kwargs)
        return saved
    seed = 0 if options.seed is None else options.seed
    scale = options.budget_scale
    store, env, env_kwargs = new_own_store(
        path, options.env, kwargs, options.data, seed, options.progress, scale, check_actions
    )
    facts = store_facts(store)
    cfg = own_config(facts, env, env_kwargs, seed, scale)
    print(
        f"[dreamlab] {path}: {title} of {env} sized from {facts.line()}: {describe(cfg)}",
        flush=True,
    )
    return cfg
