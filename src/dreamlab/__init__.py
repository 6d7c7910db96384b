"""dreamlab: world models that learn to act inside their own dream.

The Python API, the same for every generation (:mod:`dreamlab.api`)::

    import dreamlab
    run = dreamlab.run_pipeline("runs/x", preset="catch")   # or env="pkg.module:Class", data=...
    world_model = dreamlab.load_world_model(run)             # a WorldModel: dream in it
    agent = dreamlab.load_agent(run)                         # agent.predict(obs, state, start)

These three names are looked up in :mod:`dreamlab.api` on first use, so ``import dreamlab`` stays
cheap (no torch). Importing it registers the built-in environments with Gymnasium
(``gym.make("dreamlab/Catch-v0")``, or ``gym.make("dreamlab:dreamlab/Catch-v0")`` in a fresh
interpreter); see :mod:`dreamlab.registration`.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["load_agent", "load_world_model", "run_pipeline"]

from dreamlab.registration import register_envs as _register_envs  # noqa: E402

_register_envs()


def __getattr__(name: str) -> Any:
    """``dreamlab.run_pipeline`` / ``load_world_model`` / ``load_agent`` from :mod:`dreamlab.api`
    (the top layer), imported when first asked for."""
    if name in __all__:
        return getattr(importlib.import_module("dreamlab.api"), name)
    raise AttributeError(f"module 'dreamlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
