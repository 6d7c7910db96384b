"""The built-in environments' Gymnasium ids, registered when dreamlab is imported.

Gymnasium's convention is that importing a package registers its envs (``import ale_py`` makes
``ALE/Pong-v5`` available), and ``gym.make("pkg:Id")`` imports ``pkg`` for that. So
``import dreamlab`` registers ``dreamlab/Catch-v0`` and ``dreamlab/CatchDiscrete-v0``, importing
Gymnasium and nothing heavier: the entry point names the class by path, which is imported only
when the env is made (no torch on the way).
"""

from __future__ import annotations

import gymnasium as gym

__all__ = ["CATCH_IDS", "register_envs"]

CATCH_IDS = {"dreamlab/Catch-v0": False, "dreamlab/CatchDiscrete-v0": True}
"""Gymnasium id -> whether its action space is ``Discrete(3)`` (else a 1-D ``Box``)"""


def register_envs() -> None:
    """Register the built-in env ids with Gymnasium. Idempotent (runs on ``import dreamlab``)."""
    for env_id, discrete in CATCH_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="dreamlab.envs.catch:CatchEnv",
                kwargs={"discrete": discrete},
            )
