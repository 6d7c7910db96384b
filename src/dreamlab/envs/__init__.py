"""Environments for dreamlab: the built-in Catch, presets, and one way to make any env emit frames.

``make_env("catch")``, ``make_env("CarRacing-v3")`` and ``make_env("my_pkg.envs:MyEnv")`` all
return a Gymnasium env whose observations are ``(64, 64, 3) uint8`` frames. Importing this
package registers ``dreamlab/Catch-v0`` and ``dreamlab/CatchDiscrete-v0``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit

from dreamlab.envs.catch import CatchConfig, CatchEnv, locate_objects
from dreamlab.envs.policies import (
    POLICY_NAMES,
    BrownianPolicy,
    CatchExpert,
    NoisyPolicy,
    Policy,
    RandomPolicy,
    make_policy,
)
from dreamlab.envs.presets import (
    PRESETS,
    EnvPreset,
    MissingExtraError,
    get_preset,
    preset_from_dict,
    preset_to_dict,
    resolve_preset,
)
from dreamlab.envs.wrappers import (
    ActionRepeat,
    CropFrame,
    EnvSpecError,
    FrameObservation,
    ObsSource,
    ResizeFrame,
    check_env_spaces,
    wrap_frames,
)

__all__ = [
    "PRESETS",
    "POLICY_NAMES",
    "ActionRepeat",
    "BrownianPolicy",
    "CatchConfig",
    "CatchEnv",
    "CatchExpert",
    "CropFrame",
    "EnvPreset",
    "EnvSpecError",
    "FrameObservation",
    "MissingExtraError",
    "NoisyPolicy",
    "ObsSource",
    "Policy",
    "RandomPolicy",
    "ResizeFrame",
    "check_env_spaces",
    "get_preset",
    "locate_objects",
    "make_env",
    "make_policy",
    "preset_from_dict",
    "preset_to_dict",
    "register_envs",
    "resolve_preset",
    "wrap_frames",
]

CATCH_IDS = {"dreamlab/Catch-v0": False, "dreamlab/CatchDiscrete-v0": True}


def register_envs() -> None:
    """Register the built-in env ids with Gymnasium. Idempotent (runs on import)."""
    for env_id, discrete in CATCH_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="dreamlab.envs.catch:CatchEnv",
                kwargs={"discrete": discrete},
            )


register_envs()


def make_env(
    env_id: str,
    preset: EnvPreset | None = None,
    *,
    render_mode: str | None = None,
    **env_kwargs: Any,
) -> gym.Env[np.ndarray, Any]:
    """Make an env that emits ``(S, S, 3) uint8`` frames, S = ``preset.frame_size``.

    Args:
        env_id: a preset name (``"catch"``), a registered Gymnasium id (``"CarRacing-v3"``), or
            ``"pkg.module:ClassName"`` (a ``gym.Env`` subclass or factory, called with the
            keyword arguments).
        preset: wrapper settings; ``None`` resolves one from ``env_id`` (see
            :func:`resolve_preset`). When given, ``env_id`` must be its name or its env id.
        render_mode: passed to the env. For state-based envs (no image in the observation) the
            frames come from ``render()``: ``None`` then means ``"rgb_array"``.
        **env_kwargs: constructor keywords, merged over ``preset.env_kwargs``.

    Returns:
        The wrapped env: observation space ``Box(0, 255, (S, S, 3), uint8)``, action space a
        1-D ``Box`` or a ``Discrete``. ``render()`` still returns the native full-size frame.

    Raises:
        EnvSpecError: unknown id, or an observation/action space dreamlab cannot use.
        MissingExtraError: the preset needs an optional package (the message names the extra).
    """
    if preset is None:
        preset = resolve_preset(env_id)
    elif env_id not in (preset.name, preset.env_id):
        raise EnvSpecError(
            f"make_env: env_id {env_id!r} does not match preset {preset.name!r} "
            f"(env_id {preset.env_id!r}); pass one of those or no preset"
        )
    preset.import_requirements()
    kwargs = {**preset.env_kwargs, **env_kwargs}

    env = _instantiate(preset, render_mode, kwargs)
    try:
        check_env_spaces(env, preset.image_key)
    except EnvSpecError:
        if render_mode is not None or getattr(env, "render_mode", None) == "rgb_array":
            env.close()
            raise
        # A state-based env made without a render mode: frames can only come from render().
        env.close()
        env = _instantiate(preset, "rgb_array", kwargs)
    return wrap_frames(
        env,
        frame_size=preset.frame_size,
        crop=preset.crop,
        action_repeat=preset.action_repeat,
        image_key=preset.image_key,
    )


def _instantiate(
    preset: EnvPreset, render_mode: str | None, kwargs: dict[str, Any]
) -> gym.Env[Any, Any]:
    """Build the raw env (with the preset's time limit) from a registered id or a class path."""
    env_id = preset.env_id
    factory = _user_factory(env_id)
    if factory is not None:
        call_kwargs = dict(kwargs)
        if render_mode is not None:
            call_kwargs["render_mode"] = render_mode
        try:
            env = factory(**call_kwargs)
        except TypeError as e:
            raise EnvSpecError(f"{env_id}: could not be constructed with {call_kwargs}: {e}") from e
        if not isinstance(env, gym.Env):
            raise EnvSpecError(f"{env_id}: returned {type(env).__name__}, expected a gymnasium.Env")
        if preset.max_episode_steps is not None:
            env = TimeLimit(env, preset.max_episode_steps)
        return env
    try:
        return gym.make(
            env_id, render_mode=render_mode, max_episode_steps=preset.max_episode_steps, **kwargs
        )
    except gym.error.UnregisteredEnv as e:
        raise EnvSpecError(_unknown_id_message(env_id, str(e))) from None
    except ModuleNotFoundError as e:
        if ":" in env_id:
            raise EnvSpecError(
                f"{env_id}: could not import module {env_id.split(':')[0]!r} ({e.msg}); "
                "expected 'pkg.module:ClassName' importable from sys.path"
            ) from None
        raise


def _user_factory(env_id: str) -> Any | None:
    """For ``pkg.module:Name`` naming a class or callable (not a registered id), return it."""
    if ":" not in env_id:
        return None
    module_name, _, attr = env_id.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise EnvSpecError(
            f"{env_id}: could not import module {module_name!r} ({e.msg}); expected "
            "'pkg.module:ClassName' with the module importable from sys.path"
        ) from None
    obj = getattr(module, attr, None)
    if obj is None:
        # Gymnasium's own "module:EnvId" syntax: the import registered the id.
        if attr in gym.registry:
            return None
        raise EnvSpecError(
            f"{env_id}: module {module_name!r} has no attribute {attr!r} and no env id "
            f"{attr!r} is registered"
        )
    if inspect.isclass(obj) and not issubclass(obj, gym.Env):
        raise EnvSpecError(f"{env_id}: {attr} is a class but not a gymnasium.Env subclass")
    if not callable(obj):
        raise EnvSpecError(f"{env_id}: {attr} is not a class or a callable")
    return obj


def _unknown_id_message(env_id: str, detail: str) -> str:
    close = difflib.get_close_matches(env_id, [*PRESETS, *gym.registry], n=3, cutoff=0.6)
    hint = f" Did you mean {close}?" if close else ""
    return (
        f"unknown environment {env_id!r} ({detail}).{hint} Known presets: {sorted(PRESETS)}; "
        "or pass a registered Gymnasium id, or 'pkg.module:ClassName' for your own env class."
    )
