"""Recorded-video import and export: tests write their own small videos with imageio."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from dreamlab.data.action_log import align_actions, parse_action_space, read_action_log
from dreamlab.data.frames import read_frames
from dreamlab.data.store import EpisodeStore
from dreamlab.data.video_io import VideoImportConfig, export_episodes, import_videos

NUM_FRAMES = 12
DISCRETE3 = {"type": "Discrete", "n": 3, "start": 0}


def brightness_frames(num: int = NUM_FRAMES, h: int = 48, w: int = 80) -> np.ndarray:
    """Flat frames whose brightness encodes their index (survives lossy codecs and resizing)."""
    values = np.linspace(20, 235, num).round().astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (num, h, w, 3)).copy()


def frame_index(frame: np.ndarray, num: int = NUM_FRAMES) -> int:
    values = np.linspace(20, 235, num)
    return int(np.abs(values - frame.mean()).argmin())


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def cfg(tmp_path: Path, sources: list[Path], actions: list[Path], **kw) -> VideoImportConfig:
    kw.setdefault("action_space", "discrete:3")
    kw.setdefault("size", 16)
    return VideoImportConfig(
        sources=sources, actions=actions, out=tmp_path / "data", progress=False, **kw
    )


@pytest.fixture
def mp4(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    imageio.mimwrite(path, list(brightness_frames()), fps=10, macro_block_size=16)
    return path


@pytest.fixture
def gif(tmp_path: Path) -> Path:
    path = tmp_path / "clip.gif"
    imageio.mimwrite(path, list(brightness_frames()), duration=100, loop=0)
    return path


@pytest.fixture
def png_dir(tmp_path: Path) -> Path:
    d = tmp_path / "frames"
    d.mkdir()
    for i, frame in enumerate(brightness_frames()):
        imageio.imwrite(d / f"f{i}.png", frame)  # natural order: f2 before f10
    return d


def test_mp4_with_csv_by_frame_round_trip(tmp_path: Path, mp4: Path) -> None:
    actions = [i % 3 for i in range(NUM_FRAMES - 1)]
    log = write_csv(
        tmp_path / "a.csv",
        "frame,action,reward",
        [f"{i},{a},{0.5 if i == 4 else 0}" for i, a in enumerate(actions)],
    )
    summary = import_videos(cfg(tmp_path, [mp4], [log]))
    store = EpisodeStore.open(tmp_path / "data")
    ep = store.episode(summary.episodes[0])
    assert ep["obs"].shape == (NUM_FRAMES, 16, 16, 3) and ep["obs"].dtype == np.uint8
    assert [frame_index(f) for f in ep["obs"]] == list(range(NUM_FRAMES))  # order kept
    np.testing.assert_array_equal(ep["action"], actions)
    assert ep["reward"][4] == 0.5 and ep["reward"].sum() == 0.5
    assert ep["truncated"][-1] and not ep["terminated"].any()
    assert store.info(0)["source"] == str(mp4) and store.info(0)["fps"] == "10"
    store.validate()


def test_gif_and_png_dir_with_json_and_timestamps(tmp_path: Path, gif: Path, png_dir: Path) -> None:
    # JSON by frame, box actions, a terminated flag on the last step
    steps = [
        {"frame": i, "action": [i / 20, 1.0 - i / 20], "terminated": i == NUM_FRAMES - 2}
        for i in range(NUM_FRAMES - 1)
    ]
    log_json = tmp_path / "a.json"
    log_json.write_text(json.dumps({"steps": steps}))
    # CSV by time at 10 fps, sample and hold: rows every 0.2 s hold for two frames
    log_csv = write_csv(
        tmp_path / "b.csv",
        "time,action_0,action_1,reward",
        [f"{t / 10:.2f},{t / 20},0.5,1" for t in range(0, NUM_FRAMES - 1, 2)],
    )
    summary = import_videos(
        cfg(tmp_path, [gif, png_dir], [log_json, log_csv], action_space="box:2", fps=10)
    )
    store = EpisodeStore.open(tmp_path / "data")
    assert summary.episodes == [0, 1] and len(store) == 2
    a, b = store.episode(0), store.episode(1)
    for ep in (a, b):
        assert [frame_index(f) for f in ep["obs"]] == list(range(NUM_FRAMES))
    np.testing.assert_allclose(a["action"][:, 0], [i / 20 for i in range(NUM_FRAMES - 1)])
    assert a["terminated"][-1] and not a["truncated"].any()
    held = [(t - t % 2) / 20 for t in range(NUM_FRAMES - 1)]
    np.testing.assert_allclose(b["action"][:, 0], held, atol=1e-6)
    np.testing.assert_array_equal(b["reward"], [1, 0] * 5 + [1])


def test_align_by_time_uses_nearest_frame_and_sums_rewards(tmp_path: Path) -> None:
    log = read_action_log(
        write_csv(
            tmp_path / "t.csv",
            "timestamp,action,reward",
            ["0.0,0,0", "0.099,2,1", "0.12,1,2", "0.31,0,0"],
        )
    )
    out = align_actions(log, 5, DISCRETE3, fps=10)
    np.testing.assert_array_equal(out["action"], [0, 1, 1, 0])  # 0.099 and 0.12 -> frame 1
    np.testing.assert_array_equal(out["reward"], [0, 3, 0, 0])


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (["0,1", "1,1", "3,1"], r"no action row for frame 2"),
        (["0,1", "1,1", "1,2", "2,1"], r"a\.csv line 4: second row for frame 1"),
        (["0,1", "1,1", "2,1", "3,1", "7,1"], r"a\.csv line 6: frame 7 is past the video's last"),
        (["0,1", "1,5", "2,1", "3,1"], r"a\.csv line 3: action 5 outside Discrete\(3\)"),
        (["0,1", "1,x", "2,1", "3,1"], r"a\.csv line 3: action 'x' is not a number"),
    ],
)
def test_misaligned_or_bad_rows_name_the_row(tmp_path: Path, rows: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        align_actions(
            read_action_log(write_csv(tmp_path / "a.csv", "frame,action", rows)), 5, DISCRETE3
        )


def test_time_log_errors(tmp_path: Path) -> None:
    def log(rows: list[str]):
        return read_action_log(write_csv(tmp_path / "t.csv", "time,action", rows))

    with pytest.raises(ValueError, match="starts at 0.3 s, after the video's first frame"):
        align_actions(log(["0.3,1"]), 5, DISCRETE3, fps=10)
    with pytest.raises(ValueError, match="past the video's end .* wrong --fps"):
        align_actions(log(["0,1", "2.0,1"]), 5, DISCRETE3, fps=10)
    with pytest.raises(ValueError, match="no action row between 0.000 s and 0.400 s"):
        align_actions(log(["0,1"]), 30, DISCRETE3, fps=10, max_hold=0.3)
    with pytest.raises(ValueError, match="line 3: time 0.1 s is before"):
        align_actions(log(["0.2,1", "0.1,1"]), 5, DISCRETE3, fps=10)
    with pytest.raises(ValueError, match="keyed by time, so the frame rate is needed"):
        align_actions(log(["0,1"]), 5, DISCRETE3)
    with pytest.raises(ValueError, match="terminated at frame 1, but the video goes on"):
        bad = write_csv(tmp_path / "e.csv", "frame,action,terminated", ["0,1,0", "1,1,1", "2,1,0"])
        align_actions(read_action_log(bad), 4, DISCRETE3)


def test_log_format_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of a frame column"):
        read_action_log(write_csv(tmp_path / "a.csv", "action,reward", ["1,0"]))
    with pytest.raises(ValueError, match="no 'action'"):
        read_action_log(write_csv(tmp_path / "b.csv", "frame,reward", ["0,0"]))
    (tmp_path / "c.json").write_text("{oops")
    with pytest.raises(ValueError, match="c.json: not valid JSON"):
        read_action_log(tmp_path / "c.json")
    with pytest.raises(ValueError, match="action log not found"):
        read_action_log(tmp_path / "missing.csv")
    assert parse_action_space("box:-1,0,0:1,1,1")["shape"] == [3]
    with pytest.raises(ValueError, match="expected 'discrete:N'"):
        parse_action_space("box")


def test_unreadable_video_and_inconsistent_sizes(tmp_path: Path, png_dir: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 50)
    with pytest.raises(ValueError, match=r"broken\.mp4: cannot read video") as err:
        list(read_frames(bad))
    assert "\n" not in str(err.value)
    imageio.imwrite(png_dir / "f99.png", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match=r"f99\.png: frame is 10x10, but .*f0\.png is 80x48"):
        list(read_frames(png_dir))
    (png_dir / "f98.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"f98\.png: cannot read image"):
        list(read_frames(png_dir))


def test_failed_import_leaves_nothing(tmp_path: Path, mp4: Path, png_dir: Path) -> None:
    good = write_csv(tmp_path / "good.csv", "frame,action", [f"{i},1" for i in range(11)])
    short = write_csv(tmp_path / "short.csv", "frame,action", [f"{i},1" for i in range(5)])
    # a new store: the first video imports, the second fails -> no store at all
    with pytest.raises(ValueError, match="no action row for frame 5"):
        import_videos(cfg(tmp_path, [mp4, png_dir], [good, short]))
    assert not (tmp_path / "data").exists()
    # an existing store keeps exactly what it had
    import_videos(cfg(tmp_path, [mp4], [good]))
    before = sorted(p.name for p in (tmp_path / "data" / "episodes").iterdir())
    with pytest.raises(ValueError, match="no action row"):
        import_videos(cfg(tmp_path, [png_dir, mp4], [good, short]))
    after = sorted(p.name for p in (tmp_path / "data" / "episodes").iterdir())
    assert before == after == ["ep_000000.safetensors"]
    with pytest.raises(ValueError, match="1 source\\(s\\) but 2 action log"):
        import_videos(cfg(tmp_path, [mp4], [good, good]))
    with pytest.raises(ValueError, match="not --size 32"):
        import_videos(cfg(tmp_path, [mp4], [good], size=32))


def test_import_with_env_and_export(tmp_path: Path, mp4: Path) -> None:
    log = write_csv(
        tmp_path / "a.csv", "frame,action", [f"{i},{(i % 5 - 2) / 2}" for i in range(11)]
    )
    summary = import_videos(
        VideoImportConfig(
            sources=[mp4], actions=[log], out=tmp_path / "data", env="catch-32", progress=False
        )
    )
    store = EpisodeStore.open(tmp_path / "data")
    assert store.meta.env_id == "dreamlab/Catch-v0" and store.meta.obs_shape == (32, 32, 3)
    assert store.episode(0)["action"].shape == (11, 1)
    paths = export_episodes(store, tmp_path / "videos", summary.episodes, fmt="mp4", progress=False)
    paths += export_episodes(store, tmp_path / "videos", None, fmt="gif", progress=False)
    frames = [list(read_frames(p)) for p in paths]
    assert [len(f) for f in frames] == [NUM_FRAMES, NUM_FRAMES]
    with pytest.raises(ValueError, match="no episode\\(s\\) \\[7\\]"):
        export_episodes(store, tmp_path / "videos", [7], progress=False)
