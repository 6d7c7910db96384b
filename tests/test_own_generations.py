"""Every generation from a user's own env or data (docs/envs.md): ``dreamlab pipeline --generation
rssm|diffusion|tokens --env module:Class --run R`` collects random episodes, sizes the run from
them (recorded in config.json), trains the world model and its agent only on those episodes and
in the dream, scores the agent in the real env, says whether its dream is kinder than reality,
writes the report, and resumes without training again. What a generation cannot take is one sentence before anything is written (tests/test_own_env.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreamlab import cli
from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.store import EpisodeStore

ENV = "test_own_env:Reach"  # tests/test_own_env.py's env, on sys.path under pytest
STEPS = '{"steps": 12}'


def _weights(run: Path) -> dict[str, float]:
    return {str(p.relative_to(run)): p.stat().st_mtime for p in run.rglob("*.safetensors")}


def _real_return(run: Path, kind: str) -> float:
    scores = json.loads((run / "eval.json").read_text())
    return {
        "rssm": lambda: scores["final"]["mean_return"],
        "diffusion": lambda: scores["mean_return"],
        "tokens": lambda: scores["agent"]["mean_return"],
    }[kind]()


@pytest.mark.parametrize("kind", ["rssm", "diffusion", "tokens"])
def test_every_generation_runs_from_an_own_env_sized_from_it_and_resumes(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / kind
    own = ["--env", ENV, "--env-kwargs", STEPS, "--no-progress"]
    argv = ["pipeline", "--generation", kind, "--run", str(run), "--scale", "0.01", *own]
    assert cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "sized from 8 episodes of median 12 steps (ending on a time limit), 64px" in out
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["kind"] == kind
    config = recorded["config"]
    assert config["env"] == ENV and config["env_kwargs"] == {"steps": 12}
    assert len(EpisodeStore.open(run / "data")) == 8  # 200 random episodes x --scale, >= 8
    if kind == "rssm":  # offline: no env step for the agent, windows from the episode lengths
        assert config["offline_updates"] == 30 and config["seq_len"] == 12
        assert json.loads((run / "trainer.json").read_text())["env_steps"] == 0
    if kind == "diffusion":  # dreams as long as an episode may last (12 + 20 %)
        assert config["collect_episodes"] == 0 and config["agent"]["max_episode_steps"] == 15
    if kind == "tokens":  # 64px frames, the tiny tokenizer's 4x4 grid; no Catch prompts
        assert config["frame_size"] == 64 and not config["prompts"]
    assert 0 <= _real_return(run, kind) <= 12
    # is the dream kinder than reality? the trained agent and random play, dream beside real
    kindness = json.loads((run / "kindness.json").read_text())
    assert set(kindness["agents"]) == {"controller", "random"}
    assert kindness["agents"]["controller"]["real"]["mean_return"] == _real_return(run, kind)
    assert (
        kindness["verdict"] in out
        and "Is the dream kinder than reality?" in (run / "report.md").read_text()
    )
    # resumed: nothing is trained again; another generation for this run is refused
    before = _weights(run)
    assert cli.main(["pipeline", "--run", str(run), *own]) == 0, capsys.readouterr().err
    assert _weights(run) == before
    capsys.readouterr()
    assert cli.main(["pipeline", "--run", str(run), "--generation", "vmc", *own]) == 2
    assert f"holds a {kind} run" in capsys.readouterr().err


def test_each_generation_is_sized_from_the_facts_of_the_episodes(tmp_path: Path) -> None:
    from dreamlab.generations.diffusion.train import own_config as diffusion_config
    from dreamlab.generations.own import store_facts
    from dreamlab.generations.rssm.config import own_config as rssm_config
    from dreamlab.generations.tokens.config import own_config as tokens_config
    from dreamlab.generations.tokens.config import tokenizer_config
    from dreamlab.rundir import RunError

    env = "test_own_env:Dodge"
    collect(CollectConfig(env=env, out=tmp_path / "d", episodes=30, workers=1, progress=False))
    facts = store_facts(EpisodeStore.open(tmp_path / "d"))
    assert facts.dies and facts.frame_size == 64 and facts.spec.kind == "discrete"
    assert facts.episodes == 30 and 0 < facts.foreground_share < 0.1
    rssm = rssm_config(facts, env, {}, seed=2)
    assert rssm.offline_updates == 3000 and rssm.seq_len == facts.seq_len and rssm.seed == 2
    assert rssm.foreground_weight == pytest.approx(0.6 / facts.foreground_share, rel=1e-6)
    diffusion = diffusion_config(facts, env, {}, seed=2, scale=0.5)
    assert diffusion.steps == 1500 and diffusion.holdout_episodes == 3
    assert diffusion.agent.max_episode_steps == facts.dream_steps and diffusion.agent.rounds == 8
    tokens = tokens_config(facts, env, {}, seed=2)
    vq = tokenizer_config(tokens)
    assert vq.frame_size == 64 and vq.grid == 4 and tokens.horizon == min(15, facts.dream_steps)
    with pytest.raises(RunError, match="divisible"):
        tokenizer_config(type(tokens)(frame_size=36))
