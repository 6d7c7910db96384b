"""``pipeline``, ``evaluate``, ``dream``, ``report`` and ``play``'s loader work on a run of every
generation through the registry: the run's recorded kind picks the generation, and a preset of
another generation, an unknown preset or a missing run is one ``dreamlab: error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dreamlab
from dreamlab import cli
from dreamlab.envs import make_env
from dreamlab.play.model import load_play_model
from dreamlab.rundir import RunError, read_run_config, run_kind
from dreamlab.worldmodel import WorldModel

# the quick presets of three generations (the token generation's own tests run its pipeline)
QUICK = [
    ("vmc", "catch-debug"),
    ("rssm", "catch-dreamer-debug"),
    ("diffusion", "catch-diffusion-debug"),
]


@pytest.mark.parametrize(("kind", "preset"), QUICK)
def test_every_command_on_a_run_of_each_generation(
    kind: str, preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert cli.main(["pipeline", "--run", str(run), "--preset", preset, "--no-progress"]) == 0
    assert run_kind(run) == kind
    saved = json.loads((run / "config.json").read_text())
    assert saved["kind"] == kind and isinstance(saved["config"], dict)
    # resumes with no preset: everything is done, nothing is trained again
    assert cli.main(["pipeline", "--run", str(run), "--no-progress"]) == 0
    assert read_run_config(run) == (kind, saved["config"])

    assert cli.main(["evaluate", "--run", str(run), "--episodes", "2", "--agent", "random"]) == 0
    scores = json.loads((run / "eval.json").read_text())
    assert scores["agents"]["random"]["episodes"] == 2
    # the planner searches imagined action sequences in any generation's world model
    plan = ["--agent", "planner", "--horizon", "3", "--population", "8", "--iterations", "1"]
    assert cli.main(["evaluate", "--run", str(run), "--episodes", "1", *plan]) == 0
    planner = json.loads((run / "eval.json").read_text())["agents"]["planner"]
    assert planner["episodes"] == 1 and planner["planning"]["calls"] > 0
    assert planner["planner"]["horizon"] == 3
    if kind != "vmc":  # an ensemble of M is V/M/C's: one line, not a silent no-op
        capsys.readouterr()
        assert cli.main(["evaluate", "--run", str(run), *plan, "--pessimism", "1.0"]) == 2
        err = capsys.readouterr().err
        assert "--pessimism" in err and "\n" not in err.strip()

    video = tmp_path / "dream.gif"
    assert cli.main(["dream", "--run", str(run), "--steps", "4", "--video", str(video)]) == 0
    assert video.stat().st_size > 0
    assert cli.main(["report", "--run", str(run)]) == 0
    assert (run / "report.md").read_text().strip()

    model = load_play_model(run)
    assert model.start_frames.ndim == 4 and model.start_frames.shape[-1] == 3

    # K sampled futures and the reward fan from any generation's world model
    argv = ["futures", "--run", str(run), "--samples", "4", "--horizon", "3", "--context", "1"]
    assert cli.main(argv) == 0
    for name in ("futures.png", "futures_reward.png", "futures.json"):
        assert (run / name).stat().st_size > 0
    if kind != "vmc":
        assert cli.main([*argv, "--ensemble"]) == 2

    # the Python API: the same calls and the same types for every generation
    assert dreamlab.run_pipeline(run, progress=False) == run  # resumes: all done
    world_model = dreamlab.load_world_model(run)
    assert isinstance(world_model, WorldModel)
    agent = dreamlab.load_agent(run)
    frames = make_env(model.env_id, **model.env_kwargs).reset(seed=0)[0]
    action, _ = agent.predict(frames, None, episode_start=None)
    assert model.action_space.contains(np.asarray(action).astype(model.action_space.dtype))
    assert dreamlab.load_agent(run, "controller") is not None
    for name in ("random", "planner"):  # every generation's, as evaluate names them
        other, _ = dreamlab.load_agent(run, name).predict(frames, None, episode_start=None)
        assert model.action_space.contains(np.asarray(other).astype(model.action_space.dtype))
    if kind == "vmc":  # V/M/C's other agents by name, as evaluate names them
        assert dreamlab.load_agent(run, "controller_round0") is not None
    with pytest.raises(RunError, match="no_such_agent"):
        dreamlab.load_agent(run, "no_such_agent")

    # a preset of another generation on this run: one line, nothing touched
    other = "catch-dreamer-debug" if kind != "rssm" else "catch-debug"
    before = (run / "config.json").read_bytes()
    capsys.readouterr()
    assert cli.main(["pipeline", "--run", str(run), "--preset", other]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dreamlab: error:") and "\n" not in err and f"holds a {kind} run" in err
    assert (run / "config.json").read_bytes() == before


def test_unknown_preset_and_missing_run_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["pipeline", "--run", str(tmp_path / "r"), "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dreamlab: error: unknown preset 'nope'") and "catch-dreamer" in err
    assert not (tmp_path / "r").exists()
    for command in ("evaluate", "dream", "report"):
        assert cli.main([command, "--run", str(tmp_path / "missing")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("dreamlab: error:") and "no run here" in err and "\n" not in err


def test_pipeline_help_lists_every_preset_of_the_registry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dreamlab.generations import preset_names

    with pytest.raises(SystemExit) as done:
        cli.main(["pipeline", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    for name in preset_names():
        assert f" {name}," in text or f" {name};" in text or f" {name}." in text, name
