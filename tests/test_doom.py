"""A tiny Doom pipeline end to end (slow: VizDoom plays every real episode). VizDoom is installed
by the project's own files (``make setup`` installs the ``doom`` extra), so it is imported, not
skipped: a missing install step fails here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreamlab.data.store import EpisodeStore
from dreamlab.generations.args import PipelineConfig
from dreamlab.generations.vmc.config import STAGES
from dreamlab.generations.vmc.pipeline import run_pipeline

pytestmark = pytest.mark.slow


def test_tiny_doom_pipeline_end_to_end(tmp_path: Path) -> None:
    import vizdoom  # noqa: F401  (installed by make setup; a missing install fails here)

    path = tmp_path / "doom"
    run_pipeline(PipelineConfig(run=path, preset="doom-takecover-debug", progress=False))
    timings = json.loads((path / "timings.json").read_text())
    ran = {"collect", "vae", "encode", "mdnrnn", "controller", "evaluate", "dream", "checks"}
    rounds = {"round0_controller", "round1_explore", "round1_mdnrnn"}  # the iterative procedure
    assert ran | rounds <= set(timings) <= set(STAGES) | rounds
    assert len(EpisodeStore.open(path / "rounds" / "0" / "data")) == 2  # round 0's C played
    ev = json.loads((path / "eval.json").read_text())
    for agent in ("random", "controller_round0", "controller"):
        a = ev["agents"][agent]
        assert a["episodes"] == 3 and len(a["lengths"]) == 3
        assert a["mean_return"] == pytest.approx(sum(a["lengths"]) / 3)  # 1 per step survived
    checks = json.loads((path / "checks.json").read_text())
    align = checks["alignment"]
    assert align["terminated_on_last_step"] == align["episodes"] == 6  # every episode is a death
    assert align["last_frame_brightness"] < 1.0 < align["frame_before_brightness"]  # black
    assert checks["boundaries"]["fake_transitions"] == 0
    # one start per episode M trained on: the 6 collected and the 2 round 0's C played
    assert checks["starts"]["bank_rows"] == checks["starts"]["episodes"] == 8
    report = (path / "report.md").read_text()
    for section in ("Scores in the real environment", "Checks of the dream", "Wall time"):
        assert section in report
    # resuming a finished run trains nothing again (evaluate and the checks score afresh)
    models = sorted(path.rglob("model.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in models]
    run_pipeline(PipelineConfig(run=path, progress=False))
    assert [p.stat().st_mtime_ns for p in models] == stamps
    assert len(EpisodeStore.open(path / "data")) == 6
