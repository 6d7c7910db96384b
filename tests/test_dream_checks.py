"""The dream's checks (``dreamlab.generations.vmc.dream_checks``): each measurement tells a good
dream from a bad one, and the ``checks`` stage writes them on a real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dreamlab.cli import main as cli_main
from dreamlab.generations.args import PipelineConfig
from dreamlab.generations.vmc.checks_report import checks_markdown
from dreamlab.generations.vmc.dream_checks import death_metrics, survival_curve
from dreamlab.generations.vmc.pipeline import run_pipeline
from dreamlab.generations.vmc.report import temperature_rows
from dreamlab.generations.vmc.run import Run
from dreamlab.io import append_jsonl, read_jsonl


def test_death_metrics_tell_a_sharp_m_from_a_flat_one_and_a_kind_one() -> None:
    lengths = [50, 80, 120, 200]
    sharp = [np.r_[np.zeros(n - 1), 1.0] for n in lengths]  # dies exactly where reality did
    flat = [np.full(n, 1.0 / n) for n in lengths]  # a clock: right on average, blind to state
    kind = [np.zeros(n) for n in lengths]  # never kills
    s, f, k = death_metrics(sharp), death_metrics(flat), death_metrics(kind)
    assert s["recall_at_half"] == 1.0 and s["peak_at_death"] == 1.0
    assert s["expected_deaths"] == pytest.approx(1.0) and s["sampled_over_real"] == 1.0
    assert s["p_last_steps"] == [1.0, 0.0, 0.0]
    assert f["recall_at_half"] == 0.0 and f["expected_deaths"] == pytest.approx(1.0)
    assert 0.5 < f["sampled_over_real"] < 0.9  # a clock kills early half the time
    assert k["expected_deaths"] == 0.0 and k["sampled_over_real"] > 1.0  # the dream is too kind


def test_survival_curve() -> None:
    curve = survival_curve(np.array([1, 3, 3, 10]), 4)
    np.testing.assert_allclose(curve, [1.0, 0.75, 0.75, 0.25, 0.25])


def test_temperature_table_reads_taus_and_seeds_from_controller_names(tmp_path: Path) -> None:
    real = {
        "controller": 400.0,  # the run's C: the run's tau
        "controller_seed1": 800.0,  # the run's tau, another CMA-ES seed
        "controller_tau1.0": 850.0,
        "controller_tau1_seed2": 650.0,
        "controller_tau1.3": 660.0,
        "controller_vonly": 300.0,  # not a row: another input
        "controller_tau1.3.5": 1.0,  # not a temperature
        "random": 220.0,
    }
    agents = {name: {"mean_return": r} for name, r in real.items()}
    (tmp_path / "eval.json").write_text(json.dumps({"agents": agents}))
    append_jsonl(tmp_path / "controller_tau1.0" / "metrics.jsonl", {"controller/eval/return": 1e3})
    rows = temperature_rows(tmp_path, 1.15)
    assert [(t, n) for t, n, _, _ in rows] == [
        (1.0, "controller_tau1.0"),
        (1.0, "controller_tau1_seed2"),
        (1.15, "controller"),
        (1.15, "controller_seed1"),
        (1.3, "controller_tau1.3"),
    ]
    assert rows[0][2] == 1e3 and np.isnan(rows[1][2])  # dream score: the last many-dream check
    text = "\n".join(checks_markdown(tmp_path, rows))
    assert "| 1.3 | `controller_tau1.3` | nan | 660.0 |" in text
    assert "tau 1, 2 CMA-ES seeds: real score 750 on average (median 750, 650 to 850)" in text
    assert "tau 1.15, 2 CMA-ES seeds: real score 600 on average" in text
    assert "tau 1.3, " not in text  # one seed: no spread


@pytest.fixture(scope="module")
def checked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "checked"
    run = Run.open_or_create(path, "catch-debug")
    run.config.iterations = 0
    run.config.vonly_ablation = False
    run.config.dream_checks = True
    run.config.check_episodes = 8
    run.config.dream_starts = "first"  # as the Doom presets: where real episodes start
    run.save_config()
    run_pipeline(PipelineConfig(run=path, progress=False))
    return path


def test_checks_stage_measures_every_pitfall(checked_run: Path) -> None:
    c = json.loads((checked_run / "checks.json").read_text())
    assert (checked_run / "survival.png").stat().st_size > 0
    assert (checked_run / "heldout" / "latents" / "store.json").exists()
    for which in ("heldout", "train"):
        m = c["termination"][which]
        assert m["episodes"] == 8 and 0.0 <= m["p_at_death_mean"] <= 1.0
    a = c["alignment"]
    assert a["terminated_on_last_step"] == a["episodes"] == 20
    assert a["terminated_before_last_step"] == 0
    b = c["boundaries"]
    assert b["fake_transitions"] == 0 and b["windows"] > 0 and b["deaths_in_windows"] > 0
    s = c["starts"]
    assert s["bank_rows"] == s["episodes"] == 20  # dreams start at real episodes' first frames
    assert s["dream_start_memory_max_abs"] == s["agent_start_memory_max_abs"] == 0.0
    for tau, t in c["temperature"]["taus"].items():
        assert t["spread"] == pytest.approx(float(tau) ** 0.5, rel=0.05)
        assert t["mixture_tv"] < t["noise_tv"] + 0.02
    surv = c["survival"]
    assert set(surv) == {"C", "random"} and set(surv["C"]) == {"dream", "real"}
    assert surv["C"]["dream"]["episodes"] == 200
    report = (checked_run / "report.md").read_text()
    assert "## Checks of the dream" in report and "survival.png" in report
    ev = json.loads((checked_run / "eval.json").read_text())
    assert len(ev["agents"]["controller"]["lengths"]) == ev["agents"]["controller"]["episodes"]


def test_train_controller_seed_is_another_cma_es_run_beside_the_runs_c(checked_run: Path) -> None:
    config = (checked_run / "config.json").read_text()
    argv = ["train-controller", "--run", str(checked_run), "--generations", "2"]
    for seed in (0, 7):
        assert cli_main([*argv, "--seed", str(seed), "--name", f"controller_seed{seed}"]) == 0
    assert (checked_run / "config.json").read_text() == config  # the run's settings stay
    runs = {}
    for seed in (0, 7):
        out = checked_run / f"controller_seed{seed}"
        assert json.loads((out / "evolve.json").read_text())["config"]["seed"] == seed
        runs[seed] = [r["controller/train/best"] for r in read_jsonl(out / "metrics.jsonl")]
    assert runs[0] != runs[7]  # other candidates, other dreams


def test_train_controller_keeps_its_dream_precision_when_resumed(
    checked_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["train-controller", "--run", str(checked_run), "--name", "controller_p"]
    assert cli_main([*argv, "--generations", "2"]) == 0
    chosen = json.loads((checked_run / "controller_p" / "precision.json").read_text())
    assert chosen["precision"] in ("float32", "bfloat16")

    def measure_again(*args: object, **kwargs: object) -> str:
        raise AssertionError("a resumed run measured its dream precision again")

    monkeypatch.setattr("dreamlab.generations.vmc.precision.dream_precision", measure_again)
    assert cli_main([*argv, "--generations", "3"]) == 0  # resumes in the saved precision
    rows = read_jsonl(checked_run / "controller_p" / "metrics.jsonl")
    assert [r["generation"] for r in rows if "controller/train/best" in r][-1] == 3
