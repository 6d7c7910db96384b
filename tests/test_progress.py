"""Progress bars write whole lines, every few seconds, to a file that is not a terminal."""

from __future__ import annotations

import io
import time

import pytest

from dreamlab.progress import log_interval, tqdm


def test_a_bar_in_a_log_file_writes_a_few_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMLAB_PROGRESS_SECONDS", "0.2")
    log = io.StringIO()
    t0 = time.perf_counter()
    for _ in tqdm(range(200), desc="steps", file=log):
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # one line per 0.2 s at most (plus the first and the last), never one per step
    assert 2 <= len(lines) <= seconds / 0.2 + 3, lines
    assert "200/200" in lines[-1]


def test_disabled_bars_write_nothing_and_bad_intervals_are_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = io.StringIO()
    for _ in tqdm(range(5), file=log, disable=True):
        pass
    assert log.getvalue() == ""
    monkeypatch.setenv("DREAMLAB_PROGRESS_SECONDS", "often")
    with pytest.raises(ValueError, match="DREAMLAB_PROGRESS_SECONDS"):
        log_interval()


def test_a_postfix_set_every_step_waits_for_the_timed_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DREAMLAB_PROGRESS_SECONDS", "0.2")
    log = io.StringIO()
    t0 = time.perf_counter()
    with tqdm(total=200, desc="fit", file=log) as bar:
        for step in range(200):
            time.sleep(0.005)
            bar.set_postfix(loss=f"{1 / (step + 1):.3g}")
            bar.set_description(f"fit {step}")
            bar.update(1)
    seconds = time.perf_counter() - t0
    lines = log.getvalue().splitlines()
    assert 2 <= len(lines) <= seconds / 0.2 + 3, lines
    assert "loss=0.005" in lines[-1]
