"""Named environment presets: which env, how its frames are cut and sized, how data is collected.

A preset is plain data (saved as JSON in a run directory and in episode stores), so the exact same
env can be rebuilt later with ``make_env(preset.env_id, preset)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from dreamlab.envs.policies import POLICY_NAMES
from dreamlab.envs.wrappers import EnvSpecError, check_crop


class MissingExtraError(EnvSpecError, ImportError):
    """A preset needs an optional package that is not installed (names the extra to install)."""


@dataclass(frozen=True)
class EnvPreset:
    """Everything needed to build an environment's 64x64 frame stream and collect data from it."""

    name: str
    """short name used on the command line (``catch``, ``carracing``, ...)"""
    env_id: str
    """registered Gymnasium id, or ``pkg.module:ClassName`` for a user's env class"""
    frame_size: int = 64
    """side S of the square uint8 frames the env emits"""
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    """pixels cut off the native frame before resizing: (top, bottom, left, right)"""
    action_repeat: int = 1
    """env steps per agent step (rewards summed)"""
    max_episode_steps: int | None = None
    """truncate episodes after this many env steps (counted before action repeat); None: env's own"""
    collect_policy: str = "random"
    """policy that collects the world model's training data: random, brownian or expert"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for the env's constructor (e.g. Catch's num_balls)"""
    image_key: str | None = None
    """entry of a Dict observation holding the picture; None to auto-detect"""
    import_modules: tuple[str, ...] = ()
    """modules imported before making the env (they register its id)"""
    extra: str | None = None
    """the dreamlab extra that installs those modules (``pip install 'dreamlab[EXTRA]'``)"""
    description: str = ""
    """one line for humans"""

    def __post_init__(self) -> None:
        where = f"EnvPreset {self.name!r}"
        if not self.name or not self.env_id:
            raise ValueError(f"{where}: name and env_id must be non-empty strings")
        if not isinstance(self.frame_size, int) or self.frame_size < 8:
            raise ValueError(f"{where}: frame_size={self.frame_size!r}; expected an int >= 8")
        try:
            object.__setattr__(self, "crop", check_crop(tuple(self.crop)))
        except (EnvSpecError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
        if not isinstance(self.action_repeat, int) or self.action_repeat < 1:
            raise ValueError(f"{where}: action_repeat={self.action_repeat!r}; expected an int >= 1")
        if self.max_episode_steps is not None and (
            not isinstance(self.max_episode_steps, int) or self.max_episode_steps < 1
        ):
            raise ValueError(
                f"{where}: max_episode_steps={self.max_episode_steps!r}; expected None or an int >= 1"
            )
        if self.collect_policy not in POLICY_NAMES:
            raise ValueError(
                f"{where}: collect_policy={self.collect_policy!r}; expected one of {list(POLICY_NAMES)}"
            )
        if not isinstance(self.env_kwargs, dict):
            raise ValueError(
                f"{where}: env_kwargs must be a dict, got {type(self.env_kwargs).__name__}"
            )
        object.__setattr__(self, "import_modules", tuple(self.import_modules))

    def import_requirements(self) -> None:
        """Import ``import_modules`` (registering the env id); a missing one names the extra."""
        for module in self.import_modules:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:
                hint = (
                    f"install it with: pip install 'dreamlab[{self.extra}]'"
                    if self.extra
                    else f"install the package that provides {module!r}"
                )
                raise MissingExtraError(
                    f"preset {self.name!r} ({self.env_id}) needs the module {module!r}, which is "
                    f"not installed ({e.msg}); {hint}"
                ) from None


_CATCH_HARD = {"ball_speed_y": 3.0, "ball_speed_x": 3.0, "paddle_width": 8, "paddle_speed": 4.0}

PRESETS: dict[str, EnvPreset] = {
    p.name: p
    for p in (
        EnvPreset(
            name="catch",
            env_id="dreamlab/Catch-v0",
            max_episode_steps=1000,
            description="built-in Catch, continuous paddle velocity in [-1, 1], 5 balls",
        ),
        EnvPreset(
            name="catch-discrete",
            env_id="dreamlab/CatchDiscrete-v0",
            max_episode_steps=1000,
            description="built-in Catch, actions left / stay / right, 5 balls",
        ),
        EnvPreset(
            name="catch-hard",
            env_id="dreamlab/Catch-v0",
            max_episode_steps=1000,
            env_kwargs=dict(_CATCH_HARD),
            description="Catch with faster balls (3 px/step) and an 8 px paddle (4 px/step)",
        ),
        EnvPreset(
            name="catch-32",
            env_id="dreamlab/Catch-v0",
            frame_size=32,
            max_episode_steps=1000,
            env_kwargs={"frame_size": 32, "paddle_width": 6},
            description="Catch on 32x32 frames (13 steps per ball): a reduced world for fast tests",
        ),
        EnvPreset(
            name="carracing",
            env_id="CarRacing-v3",
            crop=(0, 12, 0, 0),
            max_episode_steps=1000,
            collect_policy="brownian",
            description="Box2D CarRacing (World Models), dashboard cropped, Brownian exploration",
        ),
        EnvPreset(
            name="doom-takecover",
            env_id="VizdoomTakeCover-v1",
            max_episode_steps=2100,
            image_key="screen",
            import_modules=("vizdoom.gymnasium_wrapper",),
            extra="doom",
            description="VizDoom Take Cover (World Models), full 4:3 view squashed to 64x64",
        ),
        EnvPreset(
            name="atari-pong",
            env_id="ALE/Pong-v5",
            crop=(34, 16, 0, 0),
            import_modules=("ale_py",),
            extra="atari",
            description="Atari Pong (frameskip 4 built in), score bar and bottom border cropped",
        ),
        EnvPreset(
            name="atari-breakout",
            env_id="ALE/Breakout-v5",
            import_modules=("ale_py",),
            extra="atari",
            description="Atari Breakout (frameskip 4 built in), full frame: lives predict the end",
        ),
    )
}


def get_preset(name: str) -> EnvPreset:
    """The preset called ``name``; an unknown name raises :class:`EnvSpecError` listing them."""
    try:
        return PRESETS[name]
    except KeyError:
        raise EnvSpecError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None


def resolve_preset(env: str) -> EnvPreset:
    """The preset for a preset name or an env id.

    A preset name gives that preset; an env id that a preset uses gives the first preset listed
    for it (``CarRacing-v3`` -> ``carracing``, ``dreamlab/Catch-v0`` -> ``catch``); any other id
    (including ``pkg.module:Class``) gives a generic preset with the defaults (64x64, no crop, no
    action repeat, the env's own time limit, random collection). Never raises for an unknown id:
    :func:`dreamlab.envs.make_env` is what finds out that an id does not exist.
    """
    if env in PRESETS:
        return PRESETS[env]
    for preset in PRESETS.values():
        if preset.env_id == env:
            return preset
    return EnvPreset(name=env, env_id=env, description=f"generic preset for {env}")


def preset_to_dict(preset: EnvPreset) -> dict[str, Any]:
    """A JSON-ready dict of ``preset`` (tuples become lists); inverse of :func:`preset_from_dict`."""
    d = dataclasses.asdict(preset)
    d["crop"] = list(preset.crop)
    d["import_modules"] = list(preset.import_modules)
    return d


def preset_from_dict(data: dict[str, Any], where: str = "preset") -> EnvPreset:
    """Rebuild a preset saved by :func:`preset_to_dict`.

    Args:
        data: the dict (e.g. read from ``store.json``).
        where: names the source in error messages (a file path, a JSON field).
    """
    if not isinstance(data, dict):
        raise ValueError(
            f"{where}: expected a JSON object for an env preset, got {type(data).__name__}"
        )
    known = {f.name for f in dataclasses.fields(EnvPreset)}
    unknown = sorted(set(data) - known)
    missing = sorted({"name", "env_id"} - set(data))
    if unknown or missing:
        raise ValueError(
            f"{where}: not a valid env preset (unknown fields {unknown}, missing fields {missing})"
        )
    values = dict(data)
    if "crop" in values and isinstance(values["crop"], list):
        values["crop"] = tuple(values["crop"])
    if "import_modules" in values and isinstance(values["import_modules"], list):
        values["import_modules"] = tuple(values["import_modules"])
    try:
        return EnvPreset(**values)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
