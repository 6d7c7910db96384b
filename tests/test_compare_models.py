"""compare-models: N contenders on the same episodes, cached rows, builders from the registry."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dreamlab import compare_models as cm
from dreamlab.cli import main
from dreamlab.generations import Generation

FAKE_BUILDERS = '''
from __future__ import annotations

import torch

from dreamlab.envs.policies import make_policy
from dreamlab.eval.contender import Contender

CALLS = []


class Still:
    """Holds the last observed frame; its features are the frame's mean."""

    feature_dim = 1
    action_dim = 3
    device = torch.device("cpu")

    def initial_state(self, batch_size):
        return {"frame": torch.zeros(batch_size, 3, 32, 32)}

    def observe(self, state, frames):
        return {"frame": frames.clone()}

    def step(self, state, action, temperature=1.0, generator=None):
        n = len(state["frame"])
        return dict(state), torch.full((n,), 0.1), torch.zeros(n, dtype=torch.bool)

    def decode(self, state):
        return state["frame"]

    def features(self, state):
        return state["frame"].mean((1, 2, 3)).unsqueeze(1)

    def start_state(self, start, generator=None):
        return {"frame": start["frame"].clone()}


def _build(ctx, generation):
    import numpy as np

    CALLS.append(ctx.out.name)
    first = ctx.data.episode(ctx.data.indices[0])["obs"][:1]  # (1, 32, 32, 3)
    frame = torch.as_tensor(np.array(first)).permute(0, 3, 1, 2).float() / 255.0
    return Contender(
        name=f"still frame {generation}",
        generation=generation,
        world_model=Still(),
        policy=make_policy("random", __import__("gymnasium").spaces.Discrete(3), seed=0),
        dream_policy=lambda f: torch.zeros(len(f), dtype=torch.long),
        dream_start={"frame": frame},
        params_world_model=0,
        params_agent=0,
        train_seconds=0.0,
        notes={"fake": True},
    )


def build_three(ctx):
    return _build(ctx, 3)


def build_four(ctx):
    return _build(ctx, 4)
'''

SMALL = [
    "--episodes",
    "12",
    "--heldout-episodes",
    "3",
    "--eval-episodes",
    "4",
    "--dream-episodes",
    "4",
    "--horizon",
    "10",
    "--speed-batch",
    "8",
    "--no-progress",
]


def test_vmc_and_rssm_end_to_end_and_resume(
    tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare-models", "--models", "vmc", "rssm", "--out", str(out), "--scale", "0.005"]
    assert main(argv + SMALL) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert list(summary["models"]) == ["vmc", "rssm"]
    assert summary["env"] == "catch-32" and summary["env_kwargs"] == {"discrete": True}
    assert summary["data"]["episodes"] == 12 and summary["heldout"]["episodes"] == 3
    for name, gen in (("vmc", 1), ("rssm", 2)):
        row = summary["models"][name]
        assert row["generation"] == gen and row["params_world_model"] > 0
        assert row["real"]["episodes"] == 4 and 0.0 <= row["real"]["catch_rate"] <= 1.0
        fid = row["fidelity"]
        assert set(fid["open_loop"]["mse"]["at"]) == {"1", "5", "10"}
        assert fid["probe"] is not None and fid["speed"]["steps_per_s"] > 0
        assert fid["control"]["actions"] == 3
        assert (out / name / "row.json").exists()
    assert summary["models"]["rssm"]["notes"]["updates"] == 15
    report = (out / "report.md").read_text()
    for text in ("| vmc | 1 |", "| rssm | 2 |", "copy last frame", "Position probe", "frames.png"):
        assert text in report, text
    for image in ("fidelity.png", "probe.png", "frames.png"):
        assert (out / image).stat().st_size > 0
    # a second call reuses both rows: no builder runs
    monkeypatch.setattr(cm, "_measure", lambda *a, **k: pytest.fail("re-measured a cached row"))
    assert main(argv + SMALL) == 0
    assert json.loads((out / "compare.json").read_text())["models"] == summary["models"]


def _generation(name: str, build: Any) -> Generation:
    """A registry entry whose only working part is its compare-models builder."""

    def unused(*_: Any) -> Any:
        pytest.fail("compare-models used more of a generation than its builder")

    return Generation(
        kind=name,
        number=0,
        title=f"fake {name}",
        config_class=dict,
        presets={},
        model_kinds=(),
        stages=(),
        train_command="",
        pipeline=unused,
        load_world_model=unused,
        load_agent=unused,
        evaluate=unused,
        dream=unused,
        report=unused,
        build_contender=build,
        contender_name=None if build is None else name,
    )


def test_builders_come_from_the_generation_registry(
    tmp_path: Path,
    one_thread: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "fake_generations.py").write_text(textwrap.dedent(FAKE_BUILDERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_generations  # type: ignore[import-not-found]

    registry = [
        _generation("fake3", fake_generations.build_three),
        _generation("nobuilder", None),
        _generation("fake4", fake_generations.build_four),
    ]
    monkeypatch.setattr(cm, "all_generations", lambda: registry)
    # a model's name and builder are its generation's contender_name and build_contender
    assert list(cm.contenders()) == ["fake3", "fake4"]
    assert cm.CompareModelsArgs().models == ["fake3", "fake4"]
    assert cm.resolve_builder("fake4") is fake_generations.build_four
    out = tmp_path / "cmp"
    # an unknown model (or a generation without a builder) fails before any episode is collected
    assert main(["compare-models", "--models", "fake3", "ghost", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'ghost'; known: fake3, fake4" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="unknown model 'nobuilder'"):
        cm.resolve_builder("nobuilder")

    args = ["compare-models", "--models", "fake4", "fake3", "--out", str(out), *SMALL]
    assert main(args) == 0
    assert fake_generations.CALLS == ["fake4", "fake3"]
    summary = json.loads((out / "compare.json").read_text())
    assert list(summary["models"]) == ["fake4", "fake3"]
    row = summary["models"]["fake3"]
    # a still frame is the copy-last baseline; reward 0.1 rounds to class 0
    fid = row["fidelity"]
    assert fid["open_loop"]["mse"]["at"] == fid["copy_last"]["mse"]["at"]
    assert fid["control"]["pairwise_mse"] == 0.0
    assert fid["recall"]["reward"]["0"]["recall"] == 1.0
    from dreamlab.data.store import EpisodeStore

    # never ends, 0.1 a step: the dream runs its whole length, 2x the longest real episode
    longest = int(EpisodeStore.open(out / "data").lengths.max())
    assert row["dream_return"] == pytest.approx(0.1 * 2 * longest, rel=1e-5)
    report = (out / "report.md").read_text()
    assert "| fake4 | 4 |" in report and "| fake3 | 3 |" in report
    # the shared data are reused: the same store, not re-collected
    assert main(args) == 0
    assert fake_generations.CALLS == ["fake4", "fake3"]
