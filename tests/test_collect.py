"""Collection: the episode contract, seeding, resume after SIGKILL, workers and Ray agree."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dreamlab.data import EpisodeStore, StoreError
from dreamlab.data.collect import CollectConfig, collect

FEW_BALLS = {"num_balls": 2}  # 55-step Catch episodes keep the tests fast


def config(out: Path, **kw: object) -> CollectConfig:
    defaults: dict[str, object] = dict(
        env="catch", episodes=3, workers=1, env_kwargs=dict(FEW_BALLS), progress=False
    )
    defaults.update(kw)
    return CollectConfig(out=out, **defaults)  # type: ignore[arg-type]


def store_arrays(path: Path) -> dict[int, dict[str, np.ndarray]]:
    store = EpisodeStore.open(path)
    return {i: {k: np.array(v) for k, v in store.episode(i).items()} for i in store.indices}


def assert_same_data(a: Path, b: Path) -> None:
    left, right = store_arrays(a), store_arrays(b)
    assert left.keys() == right.keys()
    for i in left:
        for k in left[i]:
            np.testing.assert_array_equal(left[i][k], right[i][k], err_msg=f"episode {i} {k}")


def test_collected_episodes_obey_the_contract(tmp_path: Path) -> None:
    summary = collect(config(tmp_path / "data", episodes=3, seed=7))
    store = EpisodeStore.open(tmp_path / "data", env_id="dreamlab/Catch-v0", obs_shape=(64, 64, 3))
    store.validate()
    assert store.indices == [0, 1, 2]
    returns = []
    for i in store.indices:
        ep = store.episode(i)
        num_steps = len(ep["action"])
        assert ep["obs"].shape == (num_steps + 1, 64, 64, 3) and ep["obs"].dtype == np.uint8
        assert ep["action"].shape == (num_steps, 1) and ep["action"].dtype == np.float32
        assert np.abs(ep["action"]).max() <= 1.0
        assert ep["reward"].dtype == np.float32 and ep["reward"].shape == (num_steps,)
        ended = ep["terminated"] | ep["truncated"]
        assert ended[-1] and not ended[:-1].any()  # exactly one end, on the last step
        assert store.info(i)["seed"] == str(7 + i)
        returns.append(float(ep["reward"].sum()))
    meta = json.loads((tmp_path / "data" / "store.json").read_text())
    assert meta["env_id"] == "dreamlab/Catch-v0"
    assert meta["preset"]["name"] == "catch" and meta["preset"]["env_kwargs"] == FEW_BALLS
    assert meta["extra"]["collect"] == {"seed": 7, "policy": "random"}
    assert summary.episodes == summary.new_episodes == 3
    assert summary.frames == store.num_frames
    assert summary.mean_return == pytest.approx(np.mean(returns))
    assert summary.disk_bytes == sum(p.stat().st_size for p in store.episodes_dir.iterdir())


def test_max_episode_steps_truncates(tmp_path: Path) -> None:
    collect(config(tmp_path / "short", episodes=2, max_episode_steps=10))
    store = EpisodeStore.open(tmp_path / "short")
    assert store.lengths.tolist() == [10, 10]
    ep = store.episode(0)
    assert ep["truncated"][-1] and not ep["terminated"].any()
    assert store.meta.preset is not None and store.meta.preset["max_episode_steps"] == 10


def test_discrete_actions_and_preset_policy(tmp_path: Path) -> None:
    collect(config(tmp_path / "d", env="catch-discrete", episodes=2, policy="preset"))
    store = EpisodeStore.open(tmp_path / "d", env_id="dreamlab/CatchDiscrete-v0")
    assert store.meta.action_space == {"type": "Discrete", "n": 3, "start": 0}
    action = store.episode(1)["action"]
    assert action.dtype == np.int64 and action.ndim == 1
    assert set(np.unique(action)) <= {0, 1, 2}
    assert store.info(0)["policy"] == "random"


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    collect(config(tmp_path / "a", seed=3))
    collect(config(tmp_path / "b", seed=3))
    collect(config(tmp_path / "c", seed=4))
    assert_same_data(tmp_path / "a", tmp_path / "b")
    a, c = store_arrays(tmp_path / "a"), store_arrays(tmp_path / "c")
    assert not np.array_equal(a[0]["action"], c[0]["action"])


def test_two_workers_equal_one_worker(tmp_path: Path) -> None:
    collect(config(tmp_path / "serial", episodes=4, workers=1))
    summary = collect(config(tmp_path / "pool", episodes=4, workers=2))
    assert summary.new_episodes == 4
    assert_same_data(tmp_path / "serial", tmp_path / "pool")


def test_rerun_tops_up_and_refuses_other_settings(tmp_path: Path) -> None:
    out = tmp_path / "data"
    collect(config(out, episodes=2))
    again = collect(config(out, episodes=2))
    assert again.new_episodes == 0 and again.episodes == 2
    more = collect(config(out, episodes=4))
    assert more.new_episodes == 2 and EpisodeStore.open(out).indices == [0, 1, 2, 3]
    with pytest.raises(StoreError, match="env_id"):
        collect(config(out, env="catch-discrete"))
    with pytest.raises(StoreError, match="collect.seed"):
        collect(config(out, seed=1))
    with pytest.raises(StoreError, match="preset.env_kwargs"):
        collect(config(out, env_kwargs={"num_balls": 3}))


def test_bad_env_and_policy_are_reported(tmp_path: Path) -> None:
    from dreamlab.envs import EnvSpecError

    with pytest.raises(EnvSpecError):
        collect(config(tmp_path / "x", env="NoSuchEnv-v0"))
    with pytest.raises(ValueError, match="CollectConfig.policy: unknown policy 'greedy'"):
        collect(config(tmp_path / "x", policy="greedy"))
    assert not (tmp_path / "x").exists()


_SLOW_COLLECT = """
import time
import dreamlab.data.collect as c

play = c.play_episode

def slow_play(*args, **kwargs):  # a slow env, so the test can kill collection half-way
    time.sleep(0.2)
    return play(*args, **kwargs)

c.play_episode = slow_play
c.collect(c.CollectConfig(env="catch", out={out!r}, episodes={episodes}, workers=1,
                          env_kwargs={{"num_balls": 2}}, progress=False))
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_after_sigkill_keeps_finished_episodes(tmp_path: Path) -> None:
    out, episodes = tmp_path / "data", 30
    script = textwrap.dedent(_SLOW_COLLECT.format(out=str(out), episodes=episodes))
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    episodes_dir = out / "episodes"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if episodes_dir.is_dir() and len(list(episodes_dir.glob("ep_*.safetensors"))) >= 3:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "collection ended before it could be killed"

    store = EpisodeStore.open(out)
    store.validate()
    done = store.indices
    assert 3 <= len(done) < episodes
    assert done == list(range(len(done)))  # workers=1 plays indices in order
    before = {i: _digest(store.episode_path(i)) for i in done}

    summary = collect(config(out, episodes=episodes))
    assert summary.episodes == episodes
    assert summary.new_episodes == episodes - len(done)
    resumed = EpisodeStore.open(out)
    resumed.validate()
    assert resumed.indices == list(range(episodes))
    assert {i: _digest(resumed.episode_path(i)) for i in done} == before

    collect(config(tmp_path / "fresh", episodes=episodes))
    assert_same_data(out, tmp_path / "fresh")  # resuming gives the data of an unbroken run


def test_ray_collection_equals_local(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    collect(config(tmp_path / "local", episodes=3))
    summary = collect(config(tmp_path / "ray", episodes=3, workers=2, ray=True))
    assert summary.new_episodes == 3
    assert_same_data(tmp_path / "local", tmp_path / "ray")


CHILD_ENV = '''
import subprocess
from pathlib import Path

import gymnasium as gym
import numpy as np


class ChildEnv(gym.Env):
    """An env that runs a process of its own, as VizDoom runs its game, and stops it on close."""

    observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, pids: str = "") -> None:
        self.child = subprocess.Popen(["sleep", "600"])
        Path(pids, f"{self.child.pid}").touch()
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((16, 16, 3), np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.zeros((16, 16, 3), np.uint8), 1.0, self.t >= 5, False, {}

    def close(self):
        self.child.kill()
        self.child.wait()
'''


def test_pool_workers_close_their_envs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled collection closes every worker's env: a process the env runs (VizDoom's game)
    must not outlive the collection and keep a core busy."""
    (tmp_path / "child_env.py").write_text(CHILD_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    pids = tmp_path / "pids"
    pids.mkdir()
    collect(
        CollectConfig(
            env="child_env:ChildEnv",
            env_kwargs={"pids": str(pids)},
            out=tmp_path / "data",
            episodes=4,
            workers=2,
            progress=False,
        )
    )
    started = [int(p.name) for p in pids.iterdir()]
    assert len(started) >= 2  # one per worker (and one the parent makes to read the spec)
    time.sleep(0.5)
    alive = [pid for pid in started if Path(f"/proc/{pid}").exists()]
    assert not alive, f"env processes {alive} outlived the collection"
