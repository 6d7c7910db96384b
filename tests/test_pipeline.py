"""The run directory and the one-command pipeline, end to end on the tiny ``catch-debug`` preset."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from dreamlab.cli import main
from dreamlab.generations.args import PipelineConfig
from dreamlab.generations.vmc.config import RunConfig, get_run_preset
from dreamlab.generations.vmc.pipeline import run_pipeline
from dreamlab.generations.vmc.run import Run
from dreamlab.rundir import RunError


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "debug"
    run_pipeline(PipelineConfig(run=path, preset="catch-debug", progress=False))
    return path


def test_pipeline_writes_every_artifact(debug_run: Path) -> None:
    for name in [
        "config.json",
        "data/store.json",
        "vae/model.safetensors",
        "vae/config.json",
        "vae/metrics.jsonl",
        "vae/reconstructions.png",
        "latents/store.json",
        "mdnrnn/model.safetensors",
        "controller/model.safetensors",
        "controller/cma_state.safetensors",
        "controller_vonly/model.safetensors",
        # catch iterates once: round 0's M and C, and the episodes that C played
        "rounds/0/mdnrnn/model.safetensors",
        "rounds/0/controller/model.safetensors",
        "rounds/0/data/store.json",
        "rounds/0/latents/store.json",
        "eval.json",
        "dream_vs_real.mp4",
        "dream_vs_real.gif",
        "prediction_error.png",
        "report.md",
        "timings.json",
        "kindness.json",
        "vae/foreground.json",
    ]:
        assert (debug_run / name).exists(), name
    ev = json.loads((debug_run / "eval.json").read_text())
    for key in ("env", "episodes", "mean_return", "std_return", "catch_rate"):
        assert key in ev
    assert set(ev["agents"]) >= {
        "random",
        "expert",
        "controller_round0",
        "controller",
        "controller_vonly",
    }
    assert ev["agents"]["expert"]["catch_rate"] > 0.9
    report = (debug_run / "report.md").read_text()
    assert "Scores in the real environment" in report
    assert "Dream vs reality" in report
    assert "Wall time" in report
    # C and random play in whole dreams beside their real scores, and the verdict on top
    kind = json.loads((debug_run / "kindness.json").read_text())
    assert set(kind["agents"]) == {"controller", "random"}
    for a in kind["agents"].values():
        assert a["dream"]["episodes"] == kind["episodes"] and a["real"]["episodes"] == 4
    assert kind["verdict"][1:] in report and "Is the dream kinder than reality?" in report
    fg = json.loads((debug_run / "vae" / "foreground.json").read_text())
    assert fg["frames"] == 256 and 0 <= fg["recall"] <= 1 and 0 < fg["foreground_share"] < 0.05
    assert "of the foreground pixels" in report
    # nothing pickled anywhere in a run directory
    assert not list(debug_run.rglob("*.pt")) and not list(debug_run.rglob("*.pkl"))


def test_controllers_read_standardized_features_measured_in_the_dream(debug_run: Path) -> None:
    run = Run.open(debug_run)
    assert run.config.controller_normalize and run.config.dream_starts == "memory"  # `catch`
    for name, size in (("controller", run.world_model("zh").feature_dim), ("controller_vonly", 32)):
        cfg = run.controller(name).config
        assert cfg.normalizes_inputs and len(cfg.input_std) == cfg.feature_dim == size, name
        assert min(cfg.input_std) > 0


def test_pipeline_resumes_as_a_no_op(debug_run: Path) -> None:
    before = {
        p: p.stat().st_mtime_ns
        for p in [debug_run / "vae/model.safetensors", debug_run / "mdnrnn/model.safetensors"]
    }
    data_files = sorted((debug_run / "data/episodes").iterdir())
    run_pipeline(
        PipelineConfig(run=debug_run, preset="catch-debug", until="mdnrnn", progress=False)
    )
    assert sorted((debug_run / "data/episodes").iterdir()) == data_files
    for p, mtime in before.items():
        assert p.stat().st_mtime_ns == mtime, f"{p} was retrained on resume"


def test_run_config_round_trips() -> None:
    for name in ("catch", "catch-debug", "carracing-small", "doom-takecover"):
        cfg = get_run_preset(name)
        again = RunConfig.from_json(json.loads(json.dumps(cfg.to_json())))
        assert again == cfg


def test_run_refuses_a_different_preset(debug_run: Path) -> None:
    with pytest.raises(RunError, match="catch-debug"):
        Run.open(debug_run, "catch")


def test_unknown_preset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="unknown pipeline preset"):
        Run.open(tmp_path / "x", "no-such-preset")


def test_cli_stage_without_inputs_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["train-vae", "--run", str(tmp_path / "empty"), "--preset", "catch-debug"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no episodes yet" in err and "dreamlab collect" in err


def test_cli_evaluate_and_report(debug_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(debug_run),
                "--episodes",
                "3",
                "--agent",
                "controller",
                "random",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "controller" in out and "random" in out
    ev = json.loads((debug_run / "eval.json").read_text())
    assert ev["agents"]["controller"]["episodes"] == 3
    assert main(["report", "--run", str(debug_run)]) == 0


def test_cli_dream_writes_a_video(debug_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "dream.gif"
    assert main(["dream", "--run", str(debug_run), "--video", str(out), "--steps", "12"]) == 0
    assert out.exists() and out.stat().st_size > 0


def test_raced_restarts_continue_the_best_seed_and_resume(debug_run: Path) -> None:
    from dreamlab.checkpoint import CheckpointError
    from dreamlab.generations.vmc.controller import (
        RESTARTS_FILE,
        check_controller_resume,
        race_restarts,
        stage_controller,
    )
    from dreamlab.train.evolve import EvolveConfig

    ecfg = EvolveConfig(
        generations=3,
        population_size=4,
        rollouts_per_candidate=2,
        eval_every=1,
        eval_rollouts=16,
        max_episode_steps=20,
        seed=5,
        restarts=2,
        restart_generations=2,
        progress=False,
        tensorboard=False,
    )
    run = Run.open(debug_run)
    result = stage_controller(run, "zh", ecfg, name="raced")
    out = debug_run / "raced"
    record = json.loads((out / RESTARTS_FILE).read_text())
    scores = {int(k): v for k, v in record["scores"].items()}
    assert set(scores) == {5, 6} and record["chosen_seed"] == max(scores, key=scores.__getitem__)
    # the winner's two raced generations are the first two of the continued run, then one more
    winner = out / "restarts" / f"seed_{record['chosen_seed']}" / "metrics.jsonl"
    raced = [json.loads(line) for line in winner.read_text().splitlines()]
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in final] == [1, 2, 3]
    assert final[:2] == raced
    assert result.generations == 3 and result.resumed_from == 2
    assert result.best_eval_return >= scores[record["chosen_seed"]]
    # a rerun skips the race and resumes the finished run as a no-op
    stamp = (out / RESTARTS_FILE).stat().st_mtime_ns
    again = stage_controller(run, "zh", ecfg, name="raced")
    assert (out / RESTARTS_FILE).stat().st_mtime_ns == stamp
    assert again.resumed_from == 3
    # killed while the winner's copy was moved into place: restarts.json still in .commit/
    for resume in (
        lambda: check_controller_resume(run, "raced", ecfg),
        lambda: race_restarts(run, "zh", ecfg, "raced"),
    ):
        (out / ".commit").mkdir()
        (out / RESTARTS_FILE).rename(out / ".commit" / RESTARTS_FILE)
        resume()
        assert (out / RESTARTS_FILE).exists() and not (out / ".commit").exists()
    # a race cut short refuses a setting that shapes its restarts before anything is recorded
    shutil.copytree(out / "restarts", debug_run / "cut" / "restarts")
    check_controller_resume(run, "cut", ecfg)
    with pytest.raises(CheckpointError, match="seed_5: checkpoint has population 4"):
        check_controller_resume(run, "cut", dataclasses.replace(ecfg, population_size=6))
    with pytest.raises(ValueError, match="eval_every must be > 0"):
        EvolveConfig(restarts=2, eval_every=0)
    with pytest.raises(ValueError, match="restart_generations"):
        EvolveConfig(generations=10, restarts=2, restart_generations=11)


def test_iterating_fine_tunes_m_on_the_controllers_own_play(debug_run: Path) -> None:
    import torch

    from dreamlab.data.store import EpisodeStore
    from dreamlab.generations.vmc.controller import dream_start_bank
    from dreamlab.generations.vmc.iterate import stage_explore
    from dreamlab.train.batches import sequence_batches

    run = Run.open(debug_run)
    cfg = run.config
    assert cfg.iterations == 1
    played = EpisodeStore.open(debug_run / "rounds/0/data")
    assert len(played) == cfg.iterate_episodes
    assert played.meta.extra["collect"]["policy"].startswith("controller of round 0")
    # the last M began as round 0's and learned the episodes round 0's C played
    latents = EpisodeStore.open(debug_run / "rounds/0/latents")
    batch = next(sequence_batches(latents, cfg.seq_len, 16, seed=9)(0))
    losses = []
    for model in (run.mdnrnn(0), run.mdnrnn()):
        torch.manual_seed(0)  # the same z resampled for both
        with torch.no_grad():
            losses.append(float(model.compute_loss(batch)[0]))
    assert losses[1] < losses[0], losses
    trainer = json.loads((debug_run / "mdnrnn/trainer.json").read_text())
    assert trainer["train_config"]["epochs"] == cfg.iterate_epochs
    # the last C's dreams start from every real frame: random play and C's own
    bank = dream_start_bank(run, run.world_model())
    assert bank["h"].shape[0] == run.data().num_frames + played.num_frames
    assert "C of round 0 (its M saw random play only)" in (debug_run / "report.md").read_text()
    # a lost episode is played again, the others are kept
    victim = played.episode_path(played.indices[-1])
    kept = {p: p.stat().st_mtime_ns for p in (debug_run / "rounds/0/data/episodes").iterdir()}
    victim.unlink()
    (latents.episode_path(latents.indices[-1])).unlink()
    stage_explore(run, 0, progress=False)
    again = {p: p.stat().st_mtime_ns for p in (debug_run / "rounds/0/data/episodes").iterdir()}
    assert set(again) == set(kept) and victim.exists()
    assert all(again[p] == t for p, t in kept.items() if p != victim)
    assert len(EpisodeStore.open(debug_run / "rounds/0/latents")) == cfg.iterate_episodes


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("iterations", -1, "iterations must be >= 0"),
        ("iterate_noise", 2.0, "iterate_noise"),
        ("iterate_epochs", 0.0, "iterate_epochs"),
        ("iterate_episodes", 0, "iterate_episodes"),
    ],
)
def test_bad_iteration_settings_are_refused(
    tmp_path: Path, field: str, value: float, message: str
) -> None:
    from dreamlab.generations.vmc.iterate import stage_first_controller

    run = Run.open(tmp_path / "r", "catch-debug")
    setattr(run.config, field, value)
    with pytest.raises(RunError, match=message):
        stage_first_controller(run)


def test_iterations_are_chosen_when_the_run_is_made(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    until = "controller"
    run_pipeline(
        PipelineConfig(run=path, preset="catch-debug", iterations=0, until=until, progress=False)
    )
    assert Run.open(path).config.iterations == 0
    assert (path / "mdnrnn/model.safetensors").exists()
    assert (path / "controller/model.safetensors").exists() and not (path / "rounds").exists()
    with pytest.raises(RunError, match="iterations=0"):
        run_pipeline(PipelineConfig(run=path, preset="catch-debug", iterations=1, progress=False))
    with pytest.raises(RunError, match="--iterations must be >= 0"):
        run_pipeline(PipelineConfig(run=tmp_path / "bad", preset="catch-debug", iterations=-1))


def test_dream_precision_auto_follows_the_hardware_not_a_timing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dreamlab.generations.vmc.precision as precision
    from dreamlab.generations.vmc.precision import dream_precision

    assert dream_precision("float32") == "float32" and dream_precision("bfloat16") == "bfloat16"
    with pytest.raises(RunError, match="dream_precision"):
        dream_precision("float8")  # type: ignore[arg-type]
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda native=native: native)
        # the same answer every time, however busy the machine: no step is timed
        picks = {dream_precision("auto") for _ in range(5)}
        assert picks == {"bfloat16" if native else "float32"}


def test_a_round_keeps_the_previous_c_unless_its_search_beats_it(tmp_path: Path) -> None:
    """``iterate_keep_best``: round 1's C reads round 0's input statistics, round 0's C is scored
    in round 1's dream before the search, and the C kept is whichever scored best there."""
    import dataclasses

    from dreamlab.checkpoint import read_config
    from dreamlab.io import read_jsonl

    path = tmp_path / "keep"
    run = Run.open(path, "catch-debug")
    run.config.iterate_keep_best = True
    run.config.controller_normalize = True
    run.config.evolve = dataclasses.replace(run.config.evolve, eval_every=1, eval_rollouts=8)
    run.save_config()
    run_pipeline(PipelineConfig(run=path, until="iterate", progress=False))
    assert read_config(path / "controller")[1] == read_config(path / "rounds/0/controller")[1]
    first = read_jsonl(path / "controller/metrics.jsonl")[0]
    held = first["controller/eval/incumbent_return"]
    assert (
        "controller/eval/incumbent_return"
        not in read_jsonl(path / "rounds/0/controller/metrics.jsonl")[0]
    )
    summary = json.loads((path / "controller/summary.json").read_text())
    evals = [r["controller/eval/return"] for r in read_jsonl(path / "controller/metrics.jsonl")]
    assert summary["best_eval_return"] == max([held, *evals])
    previous = Run.open(path).controller("rounds/0/controller").get_flat_params()
    kept = Run.open(path).controller().get_flat_params()
    assert bool((kept == previous).all()) == (summary["best_eval_return"] == held)
