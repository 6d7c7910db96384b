"""What the ``dreamlab`` command says: one error line for any bad input, a line for what it did.

Every subcommand is run on a bad input (a missing run, a truncated episode or checkpoint, a wrong
preset, an unknown env id, a NaN loss): it must end with exactly one ``dreamlab: error: ...`` line
naming the file (or setting) at fault, no traceback, a non-zero exit code, and no file half-written.
A finished stage run again says that there is nothing to do and how to redo it; a stage with more
to do says where it resumes. A collection or encoding killed by SIGKILL leaves a readable store that
the same command completes without losing or duplicating an episode.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from dreamlab.cli import main
from dreamlab.data.store import EpisodeStore

EPISODES = 6
"""episodes of the small run every bad-input case starts from"""


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``catch-debug`` run with data, V, latents and M (a few steps each: seconds)."""
    run = tmp_path_factory.mktemp("runs") / "small"
    for argv in (
        f"collect --out {run}/data --episodes {EPISODES} --workers 1 --no-progress",
        f"train-vae --run {run} --preset catch-debug --steps 3",
        f"encode --run {run}",
        f"train-mdnrnn --run {run} --steps 3",
    ):
        assert main(argv.split()) == 0, argv
    return run


def _copy_run(src: Path, dst: Path) -> Path:
    """Copy a run; large files are hard links (dreamlab replaces files, never rewrites them)."""

    def link_or_copy(s: str, d: str) -> None:
        if os.path.getsize(s) > 1_000_000:
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link_or_copy)
    return dst


def _truncate(path: Path) -> None:
    """Cut ``path`` to half its size, as a copy or a download stopped part-way would."""
    data = path.read_bytes()
    path.unlink()  # a new file: never write through a hard link to the fixture
    path.write_bytes(data[: len(data) // 2])


def _truncate_vae(run: Path) -> list[Path]:
    _truncate(run / "vae" / "model.safetensors")
    return [run / "vae" / "model.safetensors"]


def _truncate_episode(run: Path) -> list[Path]:
    bad = run / "data" / "episodes" / "ep_000003.safetensors"
    _truncate(bad)
    (run / "latents" / "episodes" / "ep_000003.safetensors").unlink()  # encode must read it
    return [bad]


def _nan_latents(run: Path) -> list[Path]:
    """Latents whose ``mu`` is NaN, and no M yet: M's first loss is NaN."""
    store = EpisodeStore.open(run / "latents")
    for index in store.indices:
        arrays = {k: np.array(v) for k, v in store.episode(index).items()}
        arrays["mu"][:] = np.nan
        store.episode_path(index).unlink()
        store.append(arrays, index=index)
    shutil.rmtree(run / "rounds")
    return []


Damage = Callable[[Path], list[Path]]

# subcommand -> (arguments, damage done to the run first, what the error names, exit code,
#                a path the failed command must leave without a file)
CASES: dict[str, tuple[str, Damage | None, str, int, str | None]] = {
    "pipeline": ("--run {run} --preset catch --no-progress", None, "{run}", 2, None),
    "collect": (
        "--out {tmp}/c --env nosuch-v0 --episodes 2 --no-progress",
        None,
        "nosuch-v0",
        2,
        "{tmp}/c",
    ),
    "train-vae": ("--run {run}", _truncate_vae, "{run}/vae/model.safetensors", 2, None),
    "encode": ("--run {run}", _truncate_episode, "ep_000003.safetensors", 2, None),
    "train-mdnrnn": ("--run {run}", _nan_latents, "{run}/rounds/0/mdnrnn", 3, None),
    "train-controller": ("--run {run}", _truncate_vae, "{run}/vae/model.safetensors", 2, None),
    "evaluate": ("--run {tmp}/none", None, "{tmp}/none", 2, "{tmp}/none"),
    "dream": ("--run {run}", _truncate_vae, "{run}/vae/model.safetensors", 2, None),
    "report": ("--run {tmp}/none", None, "{tmp}/none", 2, "{tmp}/none"),
    "export-minari": (
        "--store {run}/data --dataset-id dreamlab/catch-test-v0 --path {tmp}/minari",
        _truncate_episode,
        "ep_000003.safetensors",
        2,
        "{tmp}/minari/dreamlab/catch-test-v0",
    ),
    "import-minari": ("--dataset {tmp}/none --out {tmp}/io", None, "{tmp}/none", 2, "{tmp}/io"),
    "import": (
        "{tmp}/none.mp4 --actions {tmp}/none.csv --out {tmp}/imp",
        None,
        "{tmp}/none.mp4",
        2,
        "{tmp}/imp",
    ),
    "export-video": ("--run {run} --out {tmp}/vid", _truncate_episode, "ep_000003", 2, None),
    "play": ("--run {run} --port 0", _truncate_vae, "{run}/vae/model.safetensors", 2, None),
    "train-bc": ("--run {tmp}/bc --preset nosuch", None, "nosuch", 2, "{tmp}/bc"),
    "compare": ("--run {tmp}/cmp --wm-run {tmp}/none", None, "{tmp}/none", 2, "{tmp}/cmp"),
    "futures": ("--run {run}", _truncate_vae, "{run}/vae/model.safetensors", 2, None),
    "train-ensemble": ("--run {tmp}/none", None, "{tmp}/none", 2, "{tmp}/none"),
    "uncertainty": ("--run {run}", None, "{run}/mdnrnn_ensemble", 2, None),
    "train-dreamer": ("--run {tmp}/td --preset nosuch", None, "nosuch", 2, "{tmp}/td"),
    "compare-models": ("--out {tmp}/cm --data {tmp}/none", None, "{tmp}/none", 2, "{tmp}/cm"),
    "train-tokens": ("--run {tmp}/tt --env nosuch-v0", None, "nosuch-v0", 2, "{tmp}/tt"),
    "train-diffusion": ("--out {tmp}/td --data {tmp}/none", None, "{tmp}/none", 2, "{tmp}/td"),
}


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _assert_nothing_half_written(root: Path, damaged: list[Path]) -> None:
    """No temporary file is left, every JSON file parses, every safetensors file opens."""
    for path in _files(root):
        assert ".tmp" not in path.name, f"left behind: {path}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors" and path not in damaged:
            with safe_open(str(path), "np") as f:
                assert f.keys() is not None


def test_every_subcommand_is_covered() -> None:
    from dreamlab.cli import COMMANDS

    assert set(CASES) == set(COMMANDS)


@pytest.mark.parametrize("command", list(CASES))
def test_a_bad_input_is_one_error_line(
    command: str, small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template, damage, names, code, absent = CASES[command]
    run = _copy_run(small_run, tmp_path / "run")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    damaged = damage(run) if damage is not None else []
    capsys.readouterr()

    def fill(text: str) -> str:
        return text.format(run=run, tmp=scratch)

    assert main([command, *fill(template).split()]) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("dreamlab: error: ")]
    assert len(errors) == 1, err
    assert err.rstrip().splitlines()[-1] == errors[0]  # nothing after it
    assert fill(names) in errors[0], errors[0]
    if absent is not None:
        assert _files(Path(fill(absent))) == [], f"{command} wrote into {fill(absent)}"
    _assert_nothing_half_written(tmp_path, damaged)


def test_a_finished_stage_says_there_is_nothing_to_do(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(small_run, tmp_path / "run")
    expected = {
        "collect": f"{run}/data already holds the {EPISODES} episodes asked for; nothing to",
        "train-vae": f"vae is trained (step 3 of 3) at {run}/vae; remove it",
        "encode": f"latents are complete ({EPISODES} of {EPISODES} episodes) at {run}/latents",
        "train-mdnrnn": f"mdnrnn is trained (step 3 of 3) at {run}/rounds/0/mdnrnn; remove it",
    }
    for command, message in expected.items():
        capsys.readouterr()
        if command == "collect":
            argv = [command, "--out", f"{run}/data", "--episodes", str(EPISODES), "--no-progress"]
        else:
            argv = [command, "--run", str(run)]
        assert main(argv) == 0, command
        assert message in capsys.readouterr().err, command


def test_a_stage_with_more_to_do_says_where_it_resumes(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(small_run, tmp_path / "run")
    capsys.readouterr()
    assert main(["train-mdnrnn", "--run", str(run), "--steps", "5"]) == 0
    err = capsys.readouterr().err
    assert f"resuming mdnrnn at step 3 of 5 ({run}/rounds/0/mdnrnn)" in err
    assert "mdnrnn: trained 2 steps in" in err and "step 5 of 5" in err


def _kill_when(cmd: list[str], directory: Path, count: int) -> int:
    """Start ``cmd``, SIGKILL it once ``directory`` holds ``count`` episode files; return how
    many it holds once the process is gone (and check that no orphan goes on writing)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while len(list(directory.glob("ep_*.safetensors"))) < count:
            assert proc.poll() is None, f"{cmd[3]} ended before it could be killed"
            assert time.monotonic() < deadline, f"{cmd[3]} wrote no episode in 300 s"
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.1)  # a write in flight at the kill lands (or not) by now
    kept = len(list(directory.glob("ep_*.safetensors")))
    time.sleep(1.0)
    assert len(list(directory.glob("ep_*.safetensors"))) == kept, "a worker outlived the kill"
    return kept


def _assert_complete(store: EpisodeStore, total: int) -> None:
    store.refresh()
    assert store.indices == list(range(total))  # none lost; one file per index, so none twice
    store.validate()  # every episode readable, its header naming its own index


def test_a_killed_collect_resumes_without_losing_an_episode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, total = tmp_path / "data", 40
    argv = ["collect", "--out", str(out), "--episodes", str(total), "--no-progress"]
    kept = _kill_when(
        [sys.executable, "-m", "dreamlab.cli", *argv, "--workers", "2"], out / "episodes", 3
    )
    assert 3 <= kept < total
    killed = EpisodeStore.open(out)
    assert len(killed) == kept
    killed.validate()  # readable as it was left

    capsys.readouterr()
    assert main([*argv, "--workers", "2"]) == 0
    assert f"resuming collect at {kept} of {total} episodes ({out})" in capsys.readouterr().err
    store = EpisodeStore.open(out)
    _assert_complete(store, total)
    assert [store.info(i)["seed"] for i in store.indices] == [str(i) for i in range(total)]


def test_a_killed_encode_resumes_without_losing_an_episode(
    small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, total = _copy_run(small_run, tmp_path / "run"), 40
    shutil.rmtree(run / "data")
    shutil.rmtree(run / "latents")
    assert main(["collect", "--out", f"{run}/data", "--episodes", str(total), "--no-progress"]) == 0
    cmd = [sys.executable, "-m", "dreamlab.cli", "encode", "--run", str(run)]
    kept = _kill_when(cmd, run / "latents" / "episodes", 3)
    assert 3 <= kept < total
    EpisodeStore.open(run / "latents").validate()

    capsys.readouterr()
    assert main(["encode", "--run", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"resuming encode at episode {kept} of {total} ({run}/latents)" in err
    _assert_complete(EpisodeStore.open(run / "latents"), total)
