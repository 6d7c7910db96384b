"""The training loop: logs, resume after a kill equals an uninterrupted run, NaN stops safely."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dreamlab.checkpoint import CheckpointError, register_model
from dreamlab.io import read_jsonl
from dreamlab.models.vae import VAE, VAEConfig
from dreamlab.train.fit import TrainConfig, TrainingDivergedError, fit

pytestmark = pytest.mark.usefixtures("one_thread")


TINY_VAE = VAEConfig(
    frame_size=16,
    z_dim=4,
    enc_channels=(8, 16),
    dec_channels=(16,),
    dec_kernels=(6, 6),
    dec_dense=32,
)
FRAMES = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)


def frame_batches(start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """Batch ``s`` depends only on ``s``, so a resumed run sees the same data stream."""
    for step in itertools.count(start_step):
        rng = np.random.default_rng(1000 + step)
        yield {"obs": FRAMES[rng.integers(0, len(FRAMES), 8)]}


def quiet(**overrides: object) -> TrainConfig:
    base = dict(lr=1e-3, log_every=2, checkpoint_every=5, progress=False, tensorboard=False)
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


class Killed(Exception):
    """Stands in for the process being killed mid-run."""


def test_fit_logs_checkpoints_and_plots(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = fit(VAE(TINY_VAE), frame_batches, quiet(tensorboard=True), tmp_path, total_steps=6)
    assert result.step == 6 and result.start_step == 0
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6]
    assert {"vae/train/loss", "vae/train/recon", "vae/train/kl", "vae/train/grad_norm"} <= set(
        records[0]
    )
    assert result.metrics["vae/train/recon"] == records[-1]["vae/train/recon"]
    for name in (
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "trainer.json",
        "curves.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tb").iterdir())
    assert json.loads((tmp_path / "trainer.json").read_text())["step"] == 6


def test_killed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    straight = VAE(TINY_VAE)
    fit(straight, frame_batches, quiet(), tmp_path / "straight", total_steps=20)

    def dies_at_13(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        for step, batch in zip(
            itertools.count(start_step), frame_batches(start_step), strict=False
        ):
            if step == 12:  # the 13th batch
                raise Killed
            yield batch

    torch.manual_seed(0)
    with pytest.raises(Killed):
        fit(VAE(TINY_VAE), dies_at_13, quiet(), tmp_path / "resumed", total_steps=20)
    assert json.loads((tmp_path / "resumed" / "trainer.json").read_text())["step"] == 10

    torch.manual_seed(
        123
    )  # a fresh process would initialise differently: weights must come from disk
    resumed = VAE(TINY_VAE)
    result = fit(resumed, frame_batches, quiet(), tmp_path / "resumed", total_steps=20)
    assert result.start_step == 10 and result.step == 20
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    steps = [r["step"] for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl")]
    assert steps == list(range(2, 21, 2))  # records of the killed run past step 10 were dropped

    # Asking for no more steps than done trains nothing.
    again = fit(resumed, frame_batches, quiet(), tmp_path / "resumed", total_steps=20)
    assert again.start_step == again.step == 20


@dataclass
class NanAfterConfig:
    """Config of a model whose loss turns NaN after a number of calls."""

    nan_after: int = 5
    """calls of compute_loss that return a finite loss"""


class NanAfter(nn.Module):
    """A linear model whose loss becomes NaN at call ``nan_after + 1``."""

    def __init__(self, config: NanAfterConfig) -> None:
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.ones(3))
        self.calls = 0

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        self.calls += 1
        loss = (self.weight * batch["x"]).sum().pow(2)
        if self.calls > self.config.nan_after:
            loss = loss * float("nan")
        return loss, {"loss": float(loss.detach())}


register_model("test-nan-after", NanAfterConfig, NanAfter)


def test_nan_loss_stops_without_touching_the_last_checkpoint(tmp_path: Path) -> None:
    def batches(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        while True:
            yield {"x": np.ones(3, np.float32)}

    model = NanAfter(NanAfterConfig(nan_after=5))
    with pytest.raises(
        TrainingDivergedError, match="nan-stage: training diverged at step 6: the loss"
    ) as info:
        fit(model, batches, quiet(checkpoint_every=4), tmp_path, total_steps=10, stage="nan-stage")
    assert info.value.step == 6 and info.value.stage == "nan-stage"
    # The step-4 checkpoint is intact; the step-6 one was never written.
    assert json.loads((tmp_path / "trainer.json").read_text())["step"] == 4
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def nan_batches(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        while True:
            yield {"x": np.full(3, np.nan, np.float32)}

    # Resuming on bad data fails at the first step after the checkpoint, again without writing.
    with pytest.raises(TrainingDivergedError, match="step 5"):
        fit(
            NanAfter(NanAfterConfig(nan_after=5)),
            nan_batches,
            quiet(checkpoint_every=4),
            tmp_path,
            total_steps=10,
            stage="nan-stage",
        )
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == {
        k: v for k, v in before.items() if k != "metrics.jsonl"
    }


def test_resume_refuses_torn_or_foreign_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fit(VAE(TINY_VAE), frame_batches, quiet(), tmp_path / "run", total_steps=5)
    other = VAEConfig(**{**TINY_VAE.__dict__, "z_dim": 8})
    with pytest.raises(CheckpointError, match="trained with config"):
        fit(VAE(other), frame_batches, quiet(), tmp_path / "run", total_steps=10)

    trainer = tmp_path / "run" / "trainer.json"
    state = json.loads(trainer.read_text())
    trainer.write_text(json.dumps({**state, "step": 3}))
    with pytest.raises(CheckpointError, match="different steps"):
        fit(VAE(TINY_VAE), frame_batches, quiet(), tmp_path / "run", total_steps=10)

    trainer.unlink()
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        fit(VAE(TINY_VAE), frame_batches, quiet(), tmp_path / "run", total_steps=10)


def test_batch_sources(tmp_path: Path) -> None:
    torch.manual_seed(0)
    epoch = [{"obs": FRAMES[i : i + 8]} for i in range(0, 24, 8)]  # 3 batches per pass
    result = fit(VAE(TINY_VAE), epoch, quiet(), tmp_path / "list", total_steps=7)
    assert result.step == 7
    with pytest.raises(ValueError, match="ran out"):
        fit(VAE(TINY_VAE), iter(epoch), quiet(), tmp_path / "iter", total_steps=7)


def test_train_config_steps_and_validation() -> None:
    assert TrainConfig(epochs=2, batch_size=100).resolve_steps(1050) == 21
    assert TrainConfig(steps=7).resolve_steps(10**6) == 7
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        TrainConfig().resolve_steps(0)


def test_viz_writers_used_by_the_stages(tmp_path: Path) -> None:
    import imageio.v2 as imageio

    from dreamlab.viz import plot_curves, save_image_grid, write_video

    real = np.zeros((3, 16, 16, 3), np.uint8)
    real[:, 4:8, 4:8] = 255
    save_image_grid(tmp_path / "grid.png", [real, real[:2]], scale=2, gap=1)
    grid = imageio.imread(tmp_path / "grid.png")
    assert grid.shape == (2 * 32 + 1, 3 * 32 + 2, 3)
    assert (grid[8:16, 8:16] == 255).all() and (grid[33:, 66:] == 0).all()  # black padding tile
    save_image_grid(tmp_path / "labelled.png", [real, real], labels=["real", "recon"])
    assert imageio.imread(tmp_path / "labelled.png").shape[1] > grid.shape[1]
    with pytest.raises(ValueError, match=r"rows\[1\]"):
        save_image_grid(tmp_path / "bad.png", [real, np.zeros((2, 8, 8, 3), np.uint8)])

    frames = np.random.default_rng(0).integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    write_video(tmp_path / "clip.gif", frames, fps=10)
    gif = imageio.mimread(tmp_path / "clip.gif")
    assert len(gif) == 5 and gif[0].shape[:2] == (260, 260)  # 13x nearest-neighbour
    write_video(tmp_path / "clip.mp4", frames, fps=10, scale=4)
    assert len(imageio.mimread(tmp_path / "clip.mp4")) == 5
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        write_video(tmp_path / "clip.avi", frames)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "clip.gif", frames.astype(np.float32))

    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps({"step": s, "a/train/loss": 1.0 / s}) + "\n" for s in range(1, 6))
    )
    assert plot_curves(tmp_path / "m.jsonl", tmp_path / "c.png") == ["a/train/loss"]
    assert (tmp_path / "c.png").stat().st_size > 0
    with pytest.raises(ValueError, match="never logged"):
        plot_curves(tmp_path / "m.jsonl", tmp_path / "c.png", keys=["b/train/loss"])
    assert [
        p.name for p in tmp_path.iterdir() if ".tmp" in p.name
    ] == []  # atomic writes cleaned up


def test_cli_reports_divergence_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A diverged training stage (fit or Dreamer) ends the command with one line and code 3."""
    import dreamlab.cli as cli
    from dreamlab.generations.args import ReportArgs

    def diverge(args: ReportArgs) -> None:
        raise TrainingDivergedError("dreamer", 12, "the world-model loss", {"loss": float("nan")})

    monkeypatch.setitem(cli.COMMANDS, "report", (ReportArgs, diverge))
    assert cli.main(["report", "--run", "runs/x"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dreamer: training diverged at step 12" in err[0]
