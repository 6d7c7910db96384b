"""dreamlab: world models that learn to act inside their own dream.

Importing it registers the built-in environments with Gymnasium (``gym.make("dreamlab/Catch-v0")``,
or ``gym.make("dreamlab:dreamlab/Catch-v0")`` in a fresh interpreter); see
:mod:`dreamlab.registration`.
"""

__version__ = "0.1.0"

from dreamlab.registration import register_envs as _register_envs  # noqa: E402

_register_envs()
