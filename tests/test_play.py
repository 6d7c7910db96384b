"""dreamlab play: key maps, sessions, the server protocol, and a real headless browser."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from dreamlab.play import KeyMap, PlayModel, PlaySession, load_play_model
from dreamlab.play.server import PlayServer, is_loopback, unpack_tick

SIZE = 16


class PaddleWorldModel:
    """A hand-written world model: a bright column at x that the actions move.

    Discrete(3) as Catch orders it (0 left, 1 stay, 2 right); the dream ends after 40 steps.
    """

    feature_dim = 2
    action_dim = 3

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def initial_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        return {"x": torch.zeros(batch_size), "t": torch.zeros(batch_size)}

    def observe(
        self, state: dict[str, torch.Tensor], frames: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        x = frames[:, 0].mean(dim=1).argmax(dim=1).float()  # brightest column, (B,)
        return {**state, "x": x}

    def step(self, state, action, temperature=1.0, generator=None):
        x = (state["x"] + action.float() - 1.0).clamp(0, SIZE - 1)
        t = state["t"] + 1
        return {"x": x, "t": t}, torch.full_like(x, 0.5), t >= 40

    def decode(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        frames = torch.zeros(state["x"].shape[0], 3, SIZE, SIZE)
        for i, x in enumerate(state["x"].long().tolist()):
            frames[i, :, :, x] = 1.0
        return frames

    def features(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([state["x"], state["t"]], dim=-1)

    def start_state(self, start, generator=None):
        return self.initial_state(len(next(iter(start.values()))))


def paddle_model() -> PlayModel:
    start = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    start[:, :, SIZE // 2] = 255  # the paddle starts in the middle column
    return PlayModel(PaddleWorldModel(), gym.spaces.Discrete(3), start, name="paddle")


def paddle_x(frame: np.ndarray) -> int:
    return int(frame[:, :, 0].mean(axis=0).argmax())


# ------------------------------------------------------------------------------ key maps
def test_keymap_catch_discrete_and_doom_layout() -> None:
    km = KeyMap.for_space(gym.spaces.Discrete(3))
    assert (km.action([]), km.action(["ArrowLeft"]), km.action(["ArrowRight"])) == (1, 0, 2)
    assert km.action(["2"]) == 2 and km.action(["9"]) == 1  # digits pick; out of range ignored
    doom = KeyMap.for_space(gym.spaces.Discrete(3), "VizdoomTakeCover-v1")
    assert (doom.action([]), doom.action(["ArrowLeft"]), doom.action(["ArrowRight"])) == (0, 1, 2)
    assert any("action" in line for line in km.describe())


def test_keymap_boxes() -> None:
    one = KeyMap.for_space(gym.spaces.Box(-1.0, 1.0, (1,), np.float32))
    np.testing.assert_array_equal(one.action([]), [0.0])
    np.testing.assert_array_equal(one.action(["ArrowLeft"]), [-1.0])
    np.testing.assert_array_equal(one.action(["ArrowRight"]), [1.0])
    np.testing.assert_array_equal(one.action(["ArrowLeft", "ArrowRight"]), [0.0])
    car = KeyMap.for_space(gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.ones(3, np.float32)))
    np.testing.assert_allclose(car.action(["ArrowLeft", "ArrowUp"]), [-1.0, 1.0, 0.0])
    np.testing.assert_allclose(car.action(["ArrowDown"]), [0.0, 0.0, 0.8])
    assert car.action([]).dtype == np.float32
    with pytest.raises(ValueError, match="neither Discrete nor a 1-D Box"):
        KeyMap.for_space(gym.spaces.Box(0, 1, (2, 2)))


# ------------------------------------------------------------------------------ session
def test_session_steps_resets_and_ends() -> None:
    session = PlaySession(paddle_model(), seed=0)
    tick = session.reset()
    assert paddle_x(tick.dream) == SIZE // 2 and tick.header["step"] == 0
    for _ in range(3):
        tick = session.step(["ArrowRight"])
    assert paddle_x(tick.dream) == SIZE // 2 + 3 and tick.header["action"] == 2
    assert tick.header["dream"]["return"] == pytest.approx(1.5)
    while not session.finished:
        session.step([])
    assert session.step_count == 40
    tick = session.reset()
    assert tick.header["step"] == 0 and tick.header["episode"] == 2
    with pytest.raises(ValueError, match="temperature"):
        session.temperature = -1
    with pytest.raises(ValueError, match="no env"):
        session.set_real(True)


# ------------------------------------------------------------------------------ server
@pytest.fixture
def server():
    srv = PlayServer(paddle_model(), port=0, fps=0)
    srv.start()
    yield srv
    srv.stop()


def ws_url(srv: PlayServer) -> str:
    return f"ws://127.0.0.1:{srv.port}/ws"


def next_frame(ws, timeout: float = 10.0) -> tuple[dict, np.ndarray]:
    deadline = time.monotonic() + timeout
    while True:
        msg = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(msg, bytes):
            header, dream, _ = unpack_tick(msg)
            shape = (header["height"], header["width"], 3)
            return header, np.frombuffer(dream, np.uint8).reshape(shape)


def wait_for(ws, predicate, timeout: float = 10.0) -> tuple[dict, np.ndarray]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        header, frame = next_frame(ws, deadline - time.monotonic())
        if predicate(header, frame):
            return header, frame
    raise AssertionError("no matching frame in time")


def test_server_serves_page_and_404() -> None:
    srv = PlayServer(paddle_model(), port=0)
    srv.start()
    try:
        with urllib.request.urlopen(srv.url, timeout=10) as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            page = resp.read().decode()
        assert "<canvas" in page and "/ws" in page
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # works offline
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.url + "nope", timeout=10)
        assert err.value.code == 404
        err.value.close()
    finally:
        srv.stop()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")


def test_two_clients_have_their_own_dreams(server: PlayServer) -> None:
    with connect(ws_url(server)) as a, connect(ws_url(server)) as b:
        hello = json.loads(a.recv(timeout=10))
        assert hello["type"] == "hello" and hello["width"] == SIZE
        json.loads(b.recv(timeout=10))
        a.send(json.dumps({"type": "keys", "keys": ["ArrowRight"]}))
        b.send(json.dumps({"type": "keys", "keys": ["ArrowLeft"]}))
        _, fa = wait_for(a, lambda h, f: paddle_x(f) == SIZE - 1)
        _, fb = wait_for(b, lambda h, f: paddle_x(f) == 0)
        assert paddle_x(fa) != paddle_x(fb)
        # reset brings a back to the start while b goes on
        a.send(json.dumps({"type": "reset", "seed": 1}))
        header, frame = wait_for(a, lambda h, f: h["step"] == 0)
        assert paddle_x(frame) == SIZE // 2 and header["episode"] == 2


def test_garbage_and_closed_connections_never_crash(server: PlayServer) -> None:
    garbage = [
        "not json",
        "[1, 2]",
        json.dumps({"no": "type"}),
        json.dumps({"type": "teleport"}),
        json.dumps({"type": "keys", "keys": "ArrowLeft"}),
        json.dumps({"type": "temperature", "value": "hot"}),
        json.dumps({"type": "temperature", "value": 1e9}),
        json.dumps({"type": "reset", "seed": -3}),
        json.dumps({"type": "real", "on": True}),  # the paddle model names no env
        json.dumps({"type": "pause", "on": "yes"}),
        "[" * 3000,
        b"\x00\xff binary",
        json.dumps({"type": "keys", "keys": ["ArrowLeft"] * 600}),  # 8 KB: an error reply
    ]
    with connect(ws_url(server)) as ws:
        json.loads(ws.recv(timeout=10))
        errors = 0
        for message in garbage:
            ws.send(message)
        deadline = time.monotonic() + 10
        while errors < len(garbage) and time.monotonic() < deadline:
            msg = ws.recv(timeout=10)
            if isinstance(msg, str):
                assert json.loads(msg)["type"] == "error"
                errors += 1
        assert errors == len(garbage)
        next_frame(ws)  # still streaming
    with connect(ws_url(server)) as ws:  # 100 KB: closed before it is read (1009)
        json.loads(ws.recv(timeout=10))
        ws.send("x" * 100_000)
        with pytest.raises(Exception) as closed:
            while True:
                ws.recv(timeout=10)
        assert "1009" in str(closed.value)
    # abrupt closes: mid-stream, and before the handshake finishes
    for _ in range(3):
        with contextlib.suppress(Exception), connect(ws_url(server)) as ws:
            ws.recv(timeout=10)
            ws.socket.close()
    with connect(ws_url(server)) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        next_frame(ws)
    deadline = time.monotonic() + 5
    while server.num_clients and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.num_clients == 0 and server.errors == []


def test_cross_site_origin_is_refused(server: PlayServer) -> None:
    with pytest.raises(Exception, match="403"):
        connect(ws_url(server), origin="http://evil.example:80").recv(timeout=5)
    with connect(ws_url(server), origin=f"http://localhost:{server.port}") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"


# ------------------------------------------------------------------------------ a real run
def _tiny_vm_run(root: Path) -> Path:
    """A run directory with untrained small V and M on 32x32 Catch and two episodes."""
    from dreamlab.checkpoint import save_model
    from dreamlab.data.collect import CollectConfig, collect
    from dreamlab.generations.vmc.config import get_run_preset
    from dreamlab.models.mdnrnn import MDNRNN
    from dreamlab.models.vae import VAE

    cfg = get_run_preset("catch-test")
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_json()))
    collect(CollectConfig(env=cfg.env, out=run / "data", episodes=2, workers=1, progress=False))
    torch.manual_seed(0)
    vae = VAE(cfg.vae)
    save_model(run / "vae", vae)
    mdn = MDNRNN(dataclasses.replace(cfg.mdnrnn, z_dim=cfg.vae.z_dim, action_dim=1))
    save_model(run / "mdnrnn", mdn)
    return run


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_vm_run_plays_with_the_real_env_and_stays_untouched(tmp_path: Path, one_thread) -> None:
    run = _tiny_vm_run(tmp_path)
    before = _snapshot(run)
    model = load_play_model(run)
    assert model.name.startswith("V+M") and model.start_frames.shape[1:] == (32, 32, 3)
    srv = PlayServer(model, port=0, fps=0, real=True)
    srv.start()
    try:
        with connect(f"ws://127.0.0.1:{srv.port}/ws") as ws:
            hello = json.loads(ws.recv(timeout=30))
            assert hello["real"] and hello["real_available"]
            ws.send(json.dumps({"type": "keys", "keys": ["ArrowLeft"]}))
            ws.send(json.dumps({"type": "temperature", "value": 0.5}))
            # The server steps as fast as it can (fps=0), so ticks from before the key arrived
            # may still be queued: read on until the held key shows in the action.
            for _ in range(2000):
                msg = ws.recv(timeout=30)
                if isinstance(msg, bytes) and unpack_tick(msg)[0]["action"] == [-1.0]:
                    break
            else:
                raise AssertionError("the held ArrowLeft never reached the action")
            header, _, real = unpack_tick(msg)
            assert real is not None and len(real) == 32 * 32 * 3
            assert header["real"] is not None and header["step"] >= 1
            ws.send("garbage")
    finally:
        srv.stop()
    assert srv.errors == []
    assert _snapshot(run) == before


def test_load_play_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a run directory"):
        load_play_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no trained V"):
        load_play_model(tmp_path)


# ------------------------------------------------------------------------------ the browser
def _browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def test_browser_end_to_end(tmp_path: Path) -> None:
    """Headless Chromium presses keys; frames follow the actions; Enter resets."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    found = _browser()
    if found is None:
        pytest.skip(
            "no browser: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver); `make test` does where it can (scripts/install-browser.sh)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    chromium, chromedriver = found
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=900,800",
    ):
        options.add_argument(flag)
    srv = PlayServer(paddle_model(), port=0, fps=30)
    srv.start()
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_script_timeout(10)
    artifacts = Path(os.environ.get("DREAMLAB_TEST_ARTIFACTS", tmp_path))

    def poll(script: str, check, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = driver.execute_script(script)
            if check(value):
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out: {script} -> {value!r}")

    # The paddle column read back from the canvas the page drew (not from the server's header).
    column = """
        const c = document.getElementById('dream');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let best = -1, x = -1;
        for (let i = 0; i < c.width; i++) {
          let s = 0; for (let j = 0; j < c.height; j++) s += d[(j * c.width + i) * 4];
          if (s > best) { best = s; x = i; }
        }
        return x;"""
    try:
        driver.get(srv.url)
        poll("return window.dreamlab && window.dreamlab.frames", lambda n: bool(n) and n > 3)
        stage = driver.find_element(By.ID, "stage")
        assert driver.switch_to.active_element == stage  # the game has the keyboard focus
        assert driver.execute_script(column) == SIZE // 2
        ActionChains(driver).key_down(Keys.ARROW_RIGHT).perform()
        poll(column, lambda x: x == SIZE - 1)
        ActionChains(driver).key_up(Keys.ARROW_RIGHT).key_down(Keys.ARROW_LEFT).perform()
        poll(column, lambda x: x == 0)
        ActionChains(driver).key_up(Keys.ARROW_LEFT).perform()
        step_before = driver.execute_script("return window.dreamlab.header.step")
        assert step_before > 0
        stage.send_keys(Keys.ENTER)
        poll("return window.dreamlab.header.episode", lambda e: e == 2)
        assert driver.execute_script(column) == SIZE // 2  # back at the start frame
        assert driver.execute_script("return window.dreamlab.header.step") < step_before
        fps = poll("return window.dreamlab.fps", lambda f: f > 1)
        assert "fps" in driver.find_element(By.ID, "status").text and fps > 1
        assert driver.execute_script("return window.dreamlab.errors.length") == 0
        artifacts.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(artifacts / "play.png"))
        assert (artifacts / "play.png").stat().st_size > 0
    finally:
        driver.quit()
        srv.stop()
    assert srv.errors == []
