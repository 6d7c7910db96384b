"""Environments for dreamlab: the built-in Catch, presets, and one way to make any env emit frames.

``make_env("catch")``, ``make_env("CarRacing-v3")`` and ``make_env("my_pkg.envs:MyEnv")`` all
return a Gymnasium env whose observations are ``(64, 64, 3) uint8`` frames. ``import dreamlab``
registers ``dreamlab/Catch-v0`` and ``dreamlab/CatchDiscrete-v0`` (:mod:`dreamlab.registration`).
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
from dreamlab.envs.trust import EnvTrustError, check_env_trusted, trust_env_code
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
from dreamlab.registration import CATCH_IDS, register_envs

__all__ = [
    "CATCH_IDS",
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
    "EnvTrustError",
    "FrameObservation",
    "MissingExtraError",
    "NoisyPolicy",
    "ObsSource",
    "Policy",
    "RandomPolicy",
    "ResizeFrame",
    "check_env_spaces",
    "check_env_trusted",
    "get_preset",
    "locate_objects",
    "make_env",
    "make_policy",
    "preset_from_dict",
    "preset_to_dict",
    "register_envs",
    "resolve_preset",
    "trust_env_code",
    "wrap_frames",
]


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
        env = _construct(env_id, factory, call_kwargs)
        if not isinstance(env, gym.Env):
            raise EnvSpecError(f"{env_id}: returned {type(env).__name__}, expected a gymnasium.Env")
        if preset.max_episode_steps is not None:
            env = TimeLimit(env, preset.max_episode_steps)
        return env
    try:
        return _construct(
            env_id,
            gym.make,
            {"render_mode": render_mode, "max_episode_steps": preset.max_episode_steps, **kwargs},
            positional=env_id,
        )
    except gym.error.UnregisteredEnv as e:
        raise EnvSpecError(_unknown_id_message(env_id, str(e))) from None


def _construct(
    env_id: str, factory: Any, kwargs: dict[str, Any], positional: str | None = None
) -> Any:
    """``factory(**kwargs)`` (``gym.make(positional, **kwargs)``), its failures as one
    :class:`EnvSpecError` naming the env: a keyword its constructor does not take (with the ones
    it does), or whatever the env's own code raised while it was made."""
    args = () if positional is None else (positional,)
    try:
        return factory(*args, **kwargs)
    except (EnvSpecError, gym.error.UnregisteredEnv, gym.error.NamespaceNotFound):
        raise
    except gym.error.Error as e:
        raise EnvSpecError(f"{env_id}: Gymnasium cannot make it ({e})") from None
    except TypeError as e:
        if "keyword argument" in str(e):
            given = sorted(k for k in kwargs if k not in ("render_mode", "max_episode_steps"))
            raise EnvSpecError(
                f"{env_id}: could not be constructed: its constructor does not take the keyword "
                f"arguments given ({e}); "
                f"given: {given}{_accepted_keywords(env_id, factory)}"
            ) from None
        raise EnvSpecError(f"{env_id}: making the env raised TypeError: {e}") from None
    except Exception as e:  # the env's own code failed: name it, without a traceback
        raise EnvSpecError(
            f"{env_id}: making the env raised {type(e).__name__}: {e}".rstrip(": ")
        ) from None


def _accepted_keywords(env_id: str, factory: Any) -> str:
    """``"; it takes: [...]"`` for the env's constructor, where its signature can be read."""
    target = factory
    if factory is gym.make:
        spec = gym.registry.get(env_id.partition(":")[2] or env_id)
        if spec is None or not isinstance(spec.entry_point, str):
            return ""
        module, _, attr = spec.entry_point.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except Exception:
            return ""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return ""
    names = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return f"; it takes: {[n for n in names if n != 'self']}"


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
    except SyntaxError as e:
        raise EnvSpecError(
            f"{env_id}: module {module_name!r} has a syntax error at {e.filename}:{e.lineno} "
            f"({e.msg})"
        ) from None
    except Exception as e:  # the module's own code failed while it was imported
        raise EnvSpecError(
            f"{env_id}: importing module {module_name!r} raised {type(e).__name__}: {e}"
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
