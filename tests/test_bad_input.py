"""Hostile but fair input: one ``dreamlab: error:`` line naming the file or option, before any
work, and nothing written.

Every case here was a traceback, a silently wrong run, or code run without consent on an earlier
main: a config.json edited by hand (wrong types, a missing section), an env that fails to import
or construct, options that cannot apply to a resumed stage, out-of-range numbers, NaN weights,
a second writer on a run, and a run directory naming a module to import.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamlab.cli import main
from dreamlab.lock import LOCK_FILE

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``catch-debug`` run up to C (seconds)."""
    run = tmp_path_factory.mktemp("runs") / "small"
    argv = ["pipeline", "--run", str(run), "--preset", "catch-debug", "--no-progress"]
    assert main([*argv, "--until", "controller", "--iterations", "0"]) == 0
    return run


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name != LOCK_FILE
    }


def _one_error_line(capsys: pytest.CaptureFixture[str], *says: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dreamlab: error:"), err
    assert "Traceback" not in err
    for word in says:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], root: Path, *says: str, code: int = 2
) -> str:
    """Run ``argv``: exit ``code``, one error line saying ``says``, nothing under ``root``
    changed."""
    before = _snapshot(root) if root.exists() else None
    capsys.readouterr()
    assert main(argv) == code, argv
    line = _one_error_line(capsys, *says)
    after = _snapshot(root) if root.exists() else None
    assert after == before, "a refused command changed files"
    return line


def _edit_config(run: Path, edit: Callable[[dict], None]) -> None:
    path = run / "config.json"
    data = json.loads(path.read_text())
    edit(data["config"])
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------- config.json by hand
@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda c: c.update(collect_episodes="many"), "collect_episodes: expected an integer"),
        (lambda c: c.update(seed=[1]), "seed: expected an integer"),
        (lambda c: c.pop("evolve"), "['evolve'] are missing"),
        (lambda c: c["evolve"].update(population_size="32"), "evolve:population_size"),
        (lambda c: c.update(colour="blue"), "unknown RunConfig fields ['colour']"),
        (lambda c: c["vae"].update(z_dim=None), "vae:z_dim: expected an integer"),
    ],
    ids=["string-for-int", "list-for-int", "missing-section", "nested-type", "unknown", "null"],
)
@pytest.mark.parametrize("command", ["evaluate", "dream", "train-mdnrnn", "pipeline"])
def test_a_config_json_with_wrong_fields_is_one_line_naming_the_field(
    small_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[dict], None],
    says: str,
    command: str,
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    _edit_config(run, edit)
    _refused(capsys, [command, "--run", str(run)], run, f"{run}/config.json", says)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("evolve.json", "[1]", "expected an object with the run's 'config'"),
        ("precision.json", '{"setting": "auto", "precision": "fp8"}', "'float32' or 'bfloat16'"),
        ("precision.json", "[]", "'float32' or 'bfloat16'"),
    ],
    ids=["evolve-not-an-object", "precision-unknown", "precision-not-an-object"],
)
def test_a_controllers_record_edited_by_hand_is_one_line_naming_it(
    small_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str,
    says: str,
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "controller" / name).write_text(text)
    argv = ["train-controller", "--run", str(run)]
    _refused(capsys, argv, run, f"{run}/controller/{name}", says)


def test_a_field_the_file_never_had_takes_its_default(small_run: Path, tmp_path: Path) -> None:
    """A later dreamlab adds fields: a config written before them (its key digest matching the
    keys it has) loads with their defaults; the same key removed by hand is an error."""
    import shutil

    from dreamlab.generations.vmc.run import Run
    from dreamlab.rundir import RunError
    from dreamlab.typed import key_digest

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    path = run / "config.json"
    data = json.loads(path.read_text())
    del data["config"]["iterate_keep_best"]
    path.write_text(json.dumps(data))
    with pytest.raises(RunError, match=r"\['iterate_keep_best'\] are missing"):
        Run.open(run)
    data["keys"] = key_digest(data["config"])  # as the older version wrote it
    path.write_text(json.dumps(data))
    assert Run.open(run).config.iterate_keep_best is False


@pytest.mark.parametrize("kind", ["rssm", "diffusion"])
def test_a_nested_key_removed_by_hand_is_an_error_in_every_generation(
    kind: str, tmp_path: Path
) -> None:
    """Dreamer and diffusion runs, like V/M/C ones: a key deleted from config.json by hand
    (the recorded key digest no longer matches) names the field instead of taking a default."""
    from dreamlab.generations.diffusion.train import TrainDiffusionConfig
    from dreamlab.generations.rssm.config import DreamerConfig, get_dreamer_preset
    from dreamlab.rundir import RunError, read_run_config, write_run_config

    if kind == "rssm":
        cls: Any = DreamerConfig
        config, nested, key = (
            get_dreamer_preset("catch-dreamer-debug").to_json(),
            "imagination",
            "horizon",
        )
    else:
        cls = TrainDiffusionConfig
        config, nested, key = dataclasses.asdict(TrainDiffusionConfig()), "agent", "rounds"
    write_run_config(tmp_path, kind, config)
    assert cls.from_json(read_run_config(tmp_path)[1]) == cls.from_json(config)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    del data["config"][nested][key]
    path.write_text(json.dumps(data))
    with pytest.raises((ValueError, RunError), match=rf"\['{key}'\] are missing"):
        cls.from_json(read_run_config(tmp_path)[1])


# --------------------------------------------------------------------------------- envs
BROKEN_ENVS = {
    "syntax": "def broken(:\n",
    "raises_on_import": "raise RuntimeError('no licence server')\n",
    "raises_on_make": textwrap.dedent(
        """
        import gymnasium as gym
        class Env(gym.Env):
            def __init__(self, **kwargs):
                raise RuntimeError("the simulator did not start")
        """
    ),
}


@pytest.mark.parametrize(
    ("env", "kwargs", "says"),
    [
        ("catch", {"no_such_option": 1}, "no_such_option"),
        ("syntax_env:Env", None, "syntax error"),
        ("raises_on_import_env:Env", None, "RuntimeError: no licence server"),
        ("raises_on_make_env:Env", None, "RuntimeError: the simulator did not start"),
    ],
    ids=["unknown-keyword", "syntax-error", "raises-on-import", "raises-on-construction"],
)
def test_an_env_that_cannot_be_made_is_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: str,
    kwargs: dict[str, int] | None,
    says: str,
) -> None:
    for name, source in BROKEN_ENVS.items():
        (tmp_path / f"{name}_env.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    argv = ["pipeline", "--run", str(run), "--env", env, "--no-progress"]
    _refused(capsys, argv + (["--env-kwargs", json.dumps(kwargs)] if kwargs else []), run, says)
    assert not run.exists()
    store = tmp_path / "store"
    argv = ["collect", "--out", str(store), "--env", env, "--no-progress", "--workers", "1"]
    if kwargs:  # collect takes the keywords as KEY VALUE pairs
        argv += ["--env-kwargs", *(str(x) for pair in kwargs.items() for x in pair)]
    _refused(capsys, argv, store, says)
    assert not store.exists()


# ------------------------------------------------------------------------ out-of-range options
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["collect", "--episodes", "1000000000000"], "--episodes"),
        (["collect", "--seed", "-1"], "--seed"),
        (["evaluate", "--episodes", "0"], "--episodes"),
        (["dream", "--temperature", "nan"], "--temperature"),
        (["dream", "--steps", "0"], "--steps"),
        (["pipeline", "--seed", "-3"], "--seed"),
    ],
    ids=["huge-collect", "negative-seed", "zero-episodes", "nan-temperature", "no-steps", "seed"],
)
def test_an_out_of_range_option_names_the_option_and_writes_nothing(
    small_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    says: str,
) -> None:
    out = tmp_path / "out"
    where = ["--out", str(out)] if argv[0] == "collect" else ["--run", str(small_run)]
    root = out if argv[0] == "collect" else small_run
    _refused(capsys, [*argv, *where], root, says)
    assert not out.exists()


def test_options_that_cannot_apply_to_a_resumed_stage_are_refused_by_name(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    # V half trained: stop it at step 20 of 30 (its checkpoint_every is 20)
    shutil.rmtree(run / "vae")
    assert main(["train-vae", "--run", str(run), "--steps", "20"]) == 0
    for argv, says in (
        (["train-vae", "--lr", "1e12"], "lr=0.001 (asked: 1000000000000.0)"),
        (["train-vae", "--batch-size", "7"], "batch_size=32 (asked: 7)"),
        (["train-vae", "--z-dim", "9"], "z_dim 32 (asked: 9)"),
        (["train-controller", "--sigma0", "0.9"], "sigma0=0.1 (asked: 0.9)"),
        (["train-controller", "--population-size", "6"], "population 4 (asked: population 6"),
    ):
        _refused(capsys, [*argv, "--run", str(run)], run, *says.split(" (asked: "))
    # what may change does: more steps resume the same V
    capsys.readouterr()
    assert main(["train-vae", "--run", str(run), "--steps", "30"]) == 0
    assert "resuming vae at step 20 of 30" in capsys.readouterr().err


# ------------------------------------------------------------------------------ NaN weights
def test_nan_weights_are_refused_naming_the_file(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    path = run / "controller" / "model.safetensors"
    weights = load_file(str(path))
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    path.unlink()
    save_file(weights, str(path), metadata={"kind": "controller"})
    for argv in (["evaluate", "--episodes", "2"], ["dream", "--steps", "3"]):
        _refused(capsys, [*argv, "--run", str(run)], run, str(path), name, "NaN")


# --------------------------------------------------------------------------- two writers
def test_a_second_writer_is_refused_naming_the_first(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dreamlab.lock import run_lock\n"
            "with run_lock(sys.argv[1], 'dreamlab pipeline (test holder)'):\n"
            "    print('held', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for argv in (
            ["pipeline", "--run", str(run)],
            ["train-controller", "--run", str(run), "--generations", "3"],
            ["collect", "--out", str(run / "data"), "--episodes", "30"],
            ["evaluate", "--run", str(run)],
        ):
            _refused(capsys, argv, run, f"pid {holder.pid}", "test holder")
    finally:
        holder.kill()
        holder.wait()
    # the lock goes with its process: no stale lock to delete
    time.sleep(0.1)
    assert main(["report", "--run", str(run)]) == 0


# -------------------------------------------------------------- a run that names code to run
def test_a_run_naming_a_module_env_needs_consent_before_it_is_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "stranger_env.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from dreamlab.envs.catch import CatchEnv as Env\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps(
            {
                "kind": "vmc",
                "config": {
                    "preset": "catch-debug",
                    "env": "stranger_env:Env",
                    "collect_episodes": 2,
                },
            }
        )
    )
    for argv in (["evaluate"], ["dream"], ["report"], ["pipeline"], ["play", "--port", "0"]):
        _refused(capsys, [*argv, "--run", str(run)], run, "stranger_env", "--trust-env-code")
        assert not marker.exists(), argv
    # consent: --trust-env-code passes the gate (this run has nothing trained to report on)
    capsys.readouterr()
    main(["report", "--run", str(run), "--trust-env-code"])
    assert "--trust-env-code" not in capsys.readouterr().err
    # ... and so does the env given again, with which the run collects its episodes
    argv = ["pipeline", "--run", str(run), "--env", "stranger_env:Env", "--until", "collect"]
    assert main([*argv, "--no-progress"]) == 0
    assert marker.exists()
