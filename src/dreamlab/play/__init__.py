"""Play the dream: a local web page that streams what a world model imagines while a person acts.

- :mod:`dreamlab.play.model`: find a run's world model (V+M, RSSM, ...) behind the ``WorldModel``
  protocol, its action space, env and real start frames (:func:`load_play_model`).
- :mod:`dreamlab.play.session`: one person's dream (and optionally the real env beside it):
  keys -> actions, step, reset, temperature.
- :mod:`dreamlab.play.server`: the WebSocket + static-page server (``dreamlab play``).
- :mod:`dreamlab.play.export`: episodes and dreams of a run to mp4/GIF (``dreamlab export-video``).
"""

from dreamlab.play.model import PlayModel, load_play_model
from dreamlab.play.session import KeyMap, PlaySession

__all__ = ["KeyMap", "PlayModel", "PlaySession", "load_play_model"]
