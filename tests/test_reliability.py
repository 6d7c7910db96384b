"""Nothing strands a run: a kill or a full disk at any byte of a save, two writers on one run,
damaged files on disk.

A checkpoint is several files (weights, config, optimizer state, trainer state) that must change
together. These tests kill a real process (``os._exit``: no ``finally``, no cleanup) at every
file operation of a save, and fill a real disk in the middle of one, then check that the last
complete checkpoint loads, the stage resumes to the weights of a run never interrupted, and no
temporary file survives the rerun.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fit import TINY_VAE, frame_batches  # the same tiny V and data stream

from dreamlab.checkpoint import load_model
from dreamlab.data.schema import StoreError
from dreamlab.data.store import EpisodeStore
from dreamlab.io import (
    COMMITTED_DIR,
    STAGING_DIR,
    DiskFullError,
    commit_files,
    read_jsonl,
    settle,
    sweep_temp_files,
)
from dreamlab.models.vae import VAE
from dreamlab.train.fit import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent

QUIET = TrainConfig(lr=1e-3, log_every=1, checkpoint_every=2, progress=False, tensorboard=False)

# A child process that counts the file operations of dreamlab.io and dies (os._exit, as SIGKILL
# would: no cleanup runs) at operation KILL_AT: a file write is cut after half its bytes; a
# rename, replace or tree removal does not happen. ``count_from_commit`` counts only inside the
# Nth unit of commit_files (the second checkpoint of a training, say).
KILLER = textwrap.dedent(
    """
    import contextlib, os, shutil, sys
    import dreamlab.io as io

    KILL_AT = int(os.environ["KILL_AT"])
    COUNT_FROM_COMMIT = int(os.environ.get("COUNT_FROM_COMMIT", "1"))
    state = {"ops": 0, "commits": 0}

    def tick():
        if state["commits"] >= COUNT_FROM_COMMIT:
            state["ops"] += 1
            if state["ops"] == KILL_AT:
                return True
        return False

    real_write = io._write_file
    def write(path, data, sync=True):
        if tick():
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            os._exit(9)
        real_write(path, data, sync)
    io._write_file = write

    def dies(real):
        def call(*args, **kwargs):
            if tick():
                os._exit(9)
            return real(*args, **kwargs)
        return call
    os.rename, os.replace, shutil.rmtree = dies(os.rename), dies(os.replace), dies(shutil.rmtree)

    real_commit = io.commit_files
    @contextlib.contextmanager
    def counted(root):
        state["commits"] += 1
        with real_commit(root) as c:
            yield c
    io.commit_files = counted
    """
)


def _run_child(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-c", KILLER + textwrap.dedent(code)],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _leftovers(root: Path) -> list[Path]:
    """Temporary files and commit directories anywhere under ``root``."""
    return [
        p
        for p in root.rglob("*")
        if ".tmp" in p.name or p.name in (STAGING_DIR, COMMITTED_DIR) or p.name.startswith(".tmp")
    ]


# ------------------------------------------------------------------- the unit of files itself
COMMIT_THREE_FILES = """
    from pathlib import Path
    root, version = Path(sys.argv[-2]), sys.argv[-1]
    with io.commit_files(root) as c:
        for name in ("a.bin", "sub/b.bin", "c.json"):
            c.write_bytes(root / name, (version * 1000).encode())
    print("OPS", state["ops"])
"""


def _commit_child(root: Path, version: str, kill_at: int) -> subprocess.CompletedProcess[str]:
    code = COMMIT_THREE_FILES.replace("sys.argv[-2]", repr(str(root))).replace(
        "sys.argv[-1]", repr(version)
    )
    return _run_child(code, {"KILL_AT": str(kill_at)}, root.parent)


def test_a_unit_of_files_is_all_old_or_all_new_after_a_kill_at_any_operation(
    tmp_path: Path,
) -> None:
    names = ("a.bin", "sub/b.bin", "c.json")
    template = tmp_path / "template"
    done = _commit_child(template, "1", kill_at=0)
    assert done.returncode == 0, done.stderr
    total = int(done.stdout.split("OPS")[1])
    assert total >= 3 + 1 + 3  # three writes, the commit rename, three moves into place
    outcomes = set()
    for kill_at in range(1, total + 1):
        root = tmp_path / f"k{kill_at}"
        shutil.copytree(template, root)
        child = _commit_child(root, "2", kill_at)
        assert child.returncode == 9, (kill_at, child.stderr)
        settle(root)  # what any reader does first
        contents = {(root / n).read_bytes() for n in names}
        assert contents in ({b"1" * 1000}, {b"2" * 1000}), (kill_at, contents)
        outcomes.add(contents.pop())
        sweep_temp_files(root)  # what the next writer does first
        assert _leftovers(root) == [], kill_at
        with commit_files(root) as c:  # and it can write the next unit
            for n in names:
                c.write_bytes(root / n, b"3")
        assert {(root / n).read_bytes() for n in names} == {b"3"}
    assert outcomes == {b"1" * 1000, b"2" * 1000}  # kills before and after the commit point


# -------------------------------------------------------------- a training killed mid-save
FIT_CHILD = """
    import itertools, numpy as np, torch
    from dreamlab.models.vae import VAE, VAEConfig
    from dreamlab.train.fit import TrainConfig, fit
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    cfg = VAEConfig(frame_size=16, z_dim=4, enc_channels=(8, 16), dec_channels=(16,),
                    dec_kernels=(6, 6), dec_dense=32)
    frames = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    def batches(start):
        for step in itertools.count(start):
            yield {"obs": frames[np.random.default_rng(1000 + step).integers(0, 64, 8)]}
    torch.manual_seed(0)
    fit(VAE(cfg), batches, TrainConfig(lr=1e-3, log_every=1, checkpoint_every=2, progress=False,
        tensorboard=False), "vae", total_steps=6)
"""


def _straight(tmp_path: Path, total: int) -> VAE:
    torch.manual_seed(0)
    model = VAE(TINY_VAE)
    fit(model, frame_batches, QUIET, tmp_path / "straight", total_steps=total)
    return model


def test_a_reader_finishing_a_unit_never_deletes_the_writers_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """play and export-video read without the lock: a reader that finishes a cut-short unit
    while the writer commits its next one leaves that one for its writer to move in."""
    import dreamlab.io as io_mod

    (tmp_path / COMMITTED_DIR).mkdir()
    (tmp_path / COMMITTED_DIR / "model.safetensors").write_bytes(b"old unit")
    real_fsync = io_mod._fsync_dir
    injected = []

    def writer_commits_meanwhile(path: Path) -> None:
        if not injected:  # the reader has moved the old unit in; the writer's next lands now
            (tmp_path / COMMITTED_DIR / "model.safetensors").write_bytes(b"next unit")
            injected.append(path)
        real_fsync(path)

    monkeypatch.setattr(io_mod, "_fsync_dir", writer_commits_meanwhile)
    settle(tmp_path)
    monkeypatch.setattr(io_mod, "_fsync_dir", real_fsync)
    assert (tmp_path / "model.safetensors").read_bytes() == b"old unit"
    assert (tmp_path / COMMITTED_DIR / "model.safetensors").read_bytes() == b"next unit"
    settle(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == b"next unit"
    assert not (tmp_path / COMMITTED_DIR).exists()


@pytest.mark.parametrize(
    "kill_at",
    [1, 3, 5, 7],
    ids=[
        "mid-weights-file",
        "mid-optimizer-file",
        "before-the-commit-point",
        "mid-move-into-place",
    ],
)
def test_a_training_killed_inside_a_checkpoint_save_resumes_to_the_same_weights(
    tmp_path: Path, kill_at: int
) -> None:
    # the second checkpoint's operations: 4 writes (weights, config, optimizer, trainer.json),
    # the rename that commits them (5), 4 moves into place (6-9), the removal of the directory
    child = _run_child(FIT_CHILD, {"KILL_AT": str(kill_at), "COUNT_FROM_COMMIT": "2"}, tmp_path)
    assert child.returncode == 9, child.stderr
    out = tmp_path / "vae"
    load_model(out, VAE)  # loadable as left (a reader finishes a checkpoint cut short)
    steps = json.loads((out / "trainer.json").read_text())["step"]
    assert steps == (4 if kill_at > 5 else 2)  # the commit point decides which one it is

    torch.manual_seed(123)  # weights must come from disk, not from the seed
    resumed = VAE(TINY_VAE)
    result = fit(resumed, frame_batches, QUIET, out, total_steps=6)
    assert result.start_step == steps and result.step == 6
    assert _leftovers(out) == []
    straight = _straight(tmp_path, 6)
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_metrics(tmp_path: Path) -> None:
    out = tmp_path / "vae"

    def dies_at_step_2(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        for step, batch in zip(
            itertools.count(start_step), frame_batches(start_step), strict=False
        ):
            if step == 1:
                raise KeyboardInterrupt
            yield batch

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(VAE(TINY_VAE), dies_at_step_2, QUIET, out, total_steps=4)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    torch.manual_seed(0)
    fit(VAE(TINY_VAE), frame_batches, QUIET, out, total_steps=4)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_safetensors_leaves_no_stray_temp_file_and_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        torch.manual_seed(0)
        fit(VAE(TINY_VAE), frame_batches, QUIET, tmp_path / "vae", total_steps=2)
        store = EpisodeStore.create(tmp_path / "data", _meta())
        store.append(_episode(3), index=0)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not _leftovers(tmp_path)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# --------------------------------------------------------------------------- a full disk
def test_a_full_disk_during_a_save_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dreamlab.io as io

    out = tmp_path / "vae"
    real = io._write_file
    writes = {"n": 0}

    def fills_up(path: Path, data: bytes, sync: bool = True) -> None:
        writes["n"] += 1
        if writes["n"] > 4:  # the second checkpoint's first file: the device is full
            with open(path, "wb") as f:
                f.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, sync)

    monkeypatch.setattr(io, "_write_file", fills_up)
    torch.manual_seed(0)
    with pytest.raises(DiskFullError, match=f"no space left on the device writing {out}"):
        fit(VAE(TINY_VAE), frame_batches, QUIET, out, total_steps=4)
    assert json.loads((out / "trainer.json").read_text())["step"] == 2
    assert _leftovers(out) == []
    monkeypatch.setattr(io, "_write_file", real)  # space was freed
    resumed = VAE(TINY_VAE)
    assert fit(resumed, frame_batches, QUIET, out, total_steps=4).start_step == 2
    straight = _straight(tmp_path, 4)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()[:80]})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_is_one_error_and_the_stage_resumes(tiny_disk: Path) -> None:
    out = tiny_disk / "vae"
    filler = tiny_disk / "filler"

    def fills_the_disk_at_step_3(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        for step, batch in zip(
            itertools.count(start_step), frame_batches(start_step), strict=False
        ):
            if step == 2 and not filler.exists():  # another program takes the free space
                with open(filler, "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                    except OSError:
                        pass
            yield batch

    torch.manual_seed(0)
    with pytest.raises(DiskFullError) as raised:
        fit(VAE(TINY_VAE), fills_the_disk_at_step_3, QUIET, out, total_steps=4)
    assert "no space left on the device" in str(raised.value) and "\n" not in str(raised.value)
    assert json.loads((out / "trainer.json").read_text())["step"] == 2
    load_model(out, VAE)
    filler.unlink()
    resumed = VAE(TINY_VAE)
    assert fit(resumed, frame_batches, QUIET, out, total_steps=4).start_step == 2
    assert _leftovers(out) == []


# ---------------------------------------------------------------------- damaged episodes
def _meta():  # type: ignore[no-untyped-def]
    from gymnasium import spaces

    from dreamlab.data.schema import StoreMeta

    return StoreMeta.for_env("test-env", (8, 8, 3), spaces.Discrete(2))


def _episode(steps: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(steps)
    return {
        "obs": rng.integers(0, 256, (steps + 1, 8, 8, 3), dtype=np.uint8),
        "action": rng.integers(0, 2, steps),
        "reward": rng.normal(size=steps).astype(np.float32),
        "terminated": np.eye(1, steps, steps - 1, dtype=bool)[0],
        "truncated": np.zeros(steps, dtype=bool),
    }


def test_a_flipped_byte_in_an_episode_is_caught_on_read(tmp_path: Path) -> None:
    store = EpisodeStore.create(tmp_path / "data", _meta())
    path = store.append(_episode(5), index=0)
    header = EpisodeStore.open(tmp_path / "data").header(0)
    data = bytearray(path.read_bytes())
    data[header.entries["obs"].offset + 7] ^= 0x10  # one bit of one pixel
    path.write_bytes(bytes(data))
    damaged = EpisodeStore.open(tmp_path / "data")
    with pytest.raises(StoreError, match=rf"{path}: array 'obs' fails its checksum"):
        damaged.episode(0)
    with pytest.raises(StoreError, match="fails its checksum"):
        damaged.reader(0)
    with pytest.raises(StoreError, match="fails its checksum"):
        damaged.validate()


# ------------------------------------------------------------- same seed, same C, resumed
def test_a_controller_resumed_in_bfloat16_dreams_equals_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    """bfloat16 dreams (dream_precision, decided by the hardware or the config, never by a
    timing) resume bit-exactly, as float32 ones do."""
    from dreamlab.cli import main

    run = tmp_path / "run"
    argv = ["pipeline", "--run", str(run), "--preset", "catch-debug", "--iterations", "0"]
    assert main([*argv, "--until", "mdnrnn", "--no-progress"]) == 0
    data = json.loads((run / "config.json").read_text())
    data["config"]["dream_precision"] = "bfloat16"
    (run / "config.json").write_text(json.dumps(data))

    def train(name: str, generations: int) -> None:
        args = ["train-controller", "--run", str(run), "--name", name]
        assert main([*args, "--generations", str(generations)]) == 0

    train("straight", 5)
    train("resumed", 2)
    train("resumed", 5)
    for name in ("straight", "resumed"):
        chosen = json.loads((run / name / "precision.json").read_text())
        assert chosen == {"setting": "bfloat16", "precision": "bfloat16"}
    curves = {
        name: [r["controller/train/best"] for r in read_jsonl(run / name / "metrics.jsonl")]
        for name in ("straight", "resumed")
    }
    assert len(curves["straight"]) == 5 and curves["resumed"] == curves["straight"]
    a, b = (load_model(run / name) for name in ("straight", "resumed"))
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)


def test_a_collection_stopped_by_a_full_disk_is_one_line_and_keeps_its_episodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dreamlab.io as io
    from dreamlab.cli import main

    out = tmp_path / "data"
    argv = ["collect", "--out", str(out), "--episodes", "5", "--workers", "1", "--no-progress"]
    real = io._write_file
    episodes = {"n": 0}

    def fills_up(path: Path, data: bytes, sync: bool = True) -> None:
        if ".ep_" in path.name:
            episodes["n"] += 1
            if episodes["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, sync)

    monkeypatch.setattr(io, "_write_file", fills_up)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("dreamlab: error: no space left on the device writing") and "\n" not in err
    )
    assert "ep_000002.safetensors" in err
    assert EpisodeStore.open(out).indices == [0, 1] and _leftovers(out) == []
    monkeypatch.setattr(io, "_write_file", real)  # space was freed
    assert main(argv) == 0
    assert EpisodeStore.open(out).indices == list(range(5))
