"""Progress bars that suit both a terminal and a log file.

``dreamlab.progress.tqdm`` is ``tqdm.auto.tqdm`` with one difference: when its output is not a
terminal (``make demo > log``, CI, ``nohup``), a bar redrawn in place with carriage returns would
fill the file with one line per update. There it instead writes a plain line (no ``\\r``) at most
every ``$DREAMLAB_PROGRESS_SECONDS`` seconds (default 10), plus the final line when it closes.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from tqdm.auto import tqdm as _auto_tqdm

__all__ = ["tqdm", "log_interval"]

INTERVAL_ENV = "DREAMLAB_PROGRESS_SECONDS"


def log_interval() -> float:
    """Seconds between progress lines written to a non-terminal (``$DREAMLAB_PROGRESS_SECONDS``)."""
    raw = os.environ.get(INTERVAL_ENV, "10")
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"${INTERVAL_ENV} must be a number of seconds, got {raw!r}") from None
    return max(seconds, 0.0)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class _Lines:
    """File wrapper turning tqdm's in-place redraws into whole lines."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.encoding = getattr(stream, "encoding", "utf-8")

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").rstrip()
        if line:
            self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False


class tqdm(_auto_tqdm):  # noqa: N801 - a drop-in for tqdm.auto.tqdm
    """``tqdm.auto.tqdm`` that writes whole lines every few seconds when not on a terminal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stream = kwargs.get("file") or sys.stderr
        notebook = "notebook" in type(self).__mro__[1].__module__
        self._log_lines = not kwargs.get("disable") and not notebook and not _is_terminal(stream)
        if self._log_lines:
            kwargs["file"] = _Lines(stream)
            kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), log_interval())
            kwargs["dynamic_ncols"] = False
            kwargs.setdefault("ncols", 100)
        super().__init__(*args, **kwargs)

    # In a log, a new postfix or description waits for the next timed line: tqdm would print
    # one line per call (a loss every few steps) and then another at the next update.
    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=refresh and not self._log_lines, **kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=refresh and not self._log_lines)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=refresh and not self._log_lines)
