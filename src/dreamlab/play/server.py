"""``dreamlab play``: a small local web server that streams a dream while a person acts in it.

One ``websockets`` server does both jobs: plain HTTP ``GET /`` returns the single static page
(``static/index.html``, no build step, no network access), and ``/ws`` is the WebSocket the page
talks over. Protocol (all client messages are JSON text; see docs/play.md):

- client -> server: ``{"type": "keys", "keys": ["ArrowLeft", ...]}`` (the keys held now),
  ``{"type": "reset", "seed": 3}`` (seed optional), ``{"type": "temperature", "value": 1.2}``,
  ``{"type": "real", "on": true}``, ``{"type": "pause", "on": true}``.
- server -> client: one ``hello`` JSON text (model, action space, key help, settings), then a
  binary message per frame: 4-byte big-endian header length, the JSON header (step, action,
  rewards, done flags, compute time, frame size), the dream frame (H*W*3 RGB bytes) and, when
  the real env is shown, the real frame. Bad messages get ``{"type": "error", ...}`` back.

Every connection has its own :class:`~dreamlab.play.session.PlaySession` (its own dream state and
real env). All model and env calls run on one compute thread, so sessions never run the model
at once, and the event loop stays free to read keys and notice closed tabs. Nothing is written:
the run directory is only read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import struct
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from dreamlab.play.model import PlayModel, load_play_model
from dreamlab.play.session import ARROWS, PlaySession, Tick

__all__ = ["PlayArgs", "PlayServer", "pack_tick", "play", "unpack_tick"]

_ALLOWED_KEYS = frozenset(ARROWS) | frozenset(str(d) for d in range(10))
_MAX_MESSAGE_BYTES = 4096
"""longer client messages get an error reply (the stream goes on)"""
_MAX_FRAME_BYTES = 65536
"""longer ones close the connection (1009, message too big) before they are read into memory"""
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def page_html() -> bytes:
    """The player page shipped as package data."""
    return (resources.files("dreamlab.play") / "static" / "index.html").read_bytes()


def pack_tick(tick: Tick) -> bytes:
    """One binary frame message: header length (4 bytes, big-endian), JSON header, frames."""
    head = json.dumps(tick.header, allow_nan=False).encode("utf-8")
    parts = [struct.pack(">I", len(head)), head, tick.dream.tobytes()]
    if tick.real is not None:
        parts.append(tick.real.tobytes())
    return b"".join(parts)


def unpack_tick(data: bytes) -> tuple[dict[str, Any], bytes, bytes | None]:
    """Inverse of :func:`pack_tick` (for tests and Python clients): header, dream, real bytes."""
    (size,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4 : 4 + size])
    frame_bytes = int(header["height"]) * int(header["width"]) * 3
    body = data[4 + size :]
    real = body[frame_bytes : 2 * frame_bytes] if header.get("real") is not None else None
    return header, body[:frame_bytes], real


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Client:
    """What the event loop knows about one connection."""

    keys: frozenset[str] = frozenset()
    reset_seed: int | None = None
    reset_requested: bool = True
    paused: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class PlayServer:
    """Serve the player page and one dream session per WebSocket connection.

    Args:
        model: what to dream with.
        host: interface to bind (127.0.0.1 by default; anything else is reachable by others).
        port: TCP port (0 picks a free one; see :attr:`port` once started).
        fps: frames per second sent to each client (0 = as fast as the model steps).
        temperature: initial dream temperature.
        real: show the real env beside the dream at the start.
        max_clients: connections beyond this are refused (each holds a session and an env).
    """

    def __init__(
        self,
        model: PlayModel,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        fps: float = 15.0,
        temperature: float = 1.0,
        real: bool = False,
        max_clients: int = 8,
    ) -> None:
        if not math.isfinite(fps) or fps < 0:
            raise ValueError(f"play: fps must be >= 0, got {fps}")
        if real and model.env_id is None:
            raise ValueError("play: --real needs a run that names its env")
        self.model = model
        self.host = host
        self.port = port
        self.fps = fps
        self.temperature = temperature
        self.real = real
        self.max_clients = max_clients
        self.page = page_html()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dreamlab-play")
        self.num_clients = 0
        self.errors: list[str] = []
        """one line per session that failed (the server itself went on)"""
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ http
    def _origin_ok(self, request: Request) -> bool:
        """A browser page from another site must not drive the dream (cross-site WebSocket)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser (scripts, tests)
        parts = urlsplit(origin)
        if parts.port != self.port:
            return False
        return not is_loopback(self.host) or is_loopback(parts.hostname or "")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/ws":
            if not self._origin_ok(request):
                return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")
            return None  # go on with the WebSocket handshake
        if path in ("/", "/index.html"):
            headers = Headers(
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Length", str(len(self.page))),
                    ("Cache-Control", "no-store"),
                    ("X-Content-Type-Options", "nosniff"),
                ]
            )
            return Response(200, "OK", headers, self.page)
        if path == "/favicon.ico":
            return Response(204, "No Content", Headers([("Content-Length", "0")]))
        return connection.respond(HTTPStatus.NOT_FOUND, f"not found: {path}\n")

    # ------------------------------------------------------------------ websocket
    async def _call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    def _hello(self, session: PlaySession) -> dict[str, Any]:
        space = self.model.action_space
        return {
            "type": "hello",
            "model": self.model.name,
            "action_space": str(space),
            "keys": session.keymap.describe(),
            "real_available": session.real_available,
            "real": session.real_enabled,
            "temperature": session.temperature,
            "fps": self.fps,
            "height": session.frame_shape[0],
            "width": session.frame_shape[1],
        }

    async def _handle(self, ws: ServerConnection) -> None:
        if self.num_clients >= self.max_clients:
            await ws.close(1013, f"too many players (max {self.max_clients})")
            return
        self.num_clients += 1
        session: PlaySession | None = None
        producer: asyncio.Task[None] | None = None
        try:
            session = await self._call(
                lambda: PlaySession(self.model, temperature=self.temperature, real=self.real)
            )
            await ws.send(json.dumps(self._hello(session)))
            client = _Client()
            producer = asyncio.create_task(self._produce(ws, session, client))
            async for message in ws:
                reply = await self._on_message(message, session, client)
                if reply is not None:
                    await ws.send(json.dumps(reply))
        except ConnectionClosed:
            pass  # a closed tab ends its session, nothing else
        except Exception as e:  # a broken session must never take the server down
            self._session_failed(e)
            with contextlib.suppress(Exception):
                await ws.close(1011, "session failed")
        finally:
            if producer is not None:
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer
            if session is not None:
                with contextlib.suppress(Exception):
                    await self._call(session.close)
            self.num_clients -= 1

    def _session_failed(self, error: BaseException) -> None:
        line = f"{type(error).__name__}: {error}"
        self.errors.append(line)
        print(f"dreamlab play: a session failed ({line})", file=sys.stderr)
        traceback.print_exception(error, file=sys.stderr)

    async def _produce(self, ws: ServerConnection, session: PlaySession, client: _Client) -> None:
        """Step the session and send frames, at most ``fps`` per second."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.fps if self.fps > 0 else 0.0
        next_time = loop.time()
        try:
            while True:
                if client.reset_requested:
                    client.reset_requested = False
                    tick = await self._call(session.reset, client.reset_seed)
                    client.reset_seed = None
                elif client.paused or session.finished:
                    client.wake.clear()
                    await client.wake.wait()
                    next_time = loop.time()
                    continue
                else:
                    tick = await self._call(session.step, client.keys)
                await ws.send(pack_tick(tick))
                next_time += interval
                delay = next_time - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    next_time = loop.time()
                    await asyncio.sleep(0)  # let the reader run even at full speed
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._session_failed(e)
            with contextlib.suppress(Exception):
                await ws.send(json.dumps({"type": "error", "message": f"session failed: {e}"}))
                await ws.close(1011, "session failed")

    async def _on_message(
        self, message: str | bytes, session: PlaySession, client: _Client
    ) -> dict[str, Any] | None:
        """Apply one client message; returns an error reply for anything malformed."""

        def error(text: str) -> dict[str, Any]:
            return {"type": "error", "message": text}

        if isinstance(message, bytes):
            return error("binary messages are not understood; send JSON text")
        if len(message) > _MAX_MESSAGE_BYTES:
            return error(f"message longer than {_MAX_MESSAGE_BYTES} bytes")
        try:
            msg = json.loads(message)
        except (json.JSONDecodeError, RecursionError):
            return error("not JSON")
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            return error('expected an object with a "type"')
        kind = msg["type"]
        if kind == "keys":
            keys = msg.get("keys")
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                return error('"keys" must be a list of key names')
            client.keys = frozenset(k for k in keys[:16] if k in _ALLOWED_KEYS)
            return None
        if kind == "reset":
            seed = msg.get("seed")
            if seed is not None and (
                isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
            ):
                return error('"seed" must be a non-negative integer')
            client.reset_seed = seed
            client.reset_requested = True
            client.wake.set()
            return None
        if kind == "temperature":
            value = msg.get("value")
            if isinstance(value, bool) or not isinstance(value, int | float):
                return error('"value" must be a number')
            try:
                session.temperature = float(value)
            except ValueError as e:
                return error(str(e))
            return None
        if kind == "real":
            on = msg.get("on")
            if not isinstance(on, bool):
                return error('"on" must be true or false')
            if on and not session.real_available:
                return error("this run names no env to show beside the dream")
            await self._call(session.set_real, on)
            client.reset_requested = True
            client.wake.set()
            return None
        if kind == "pause":
            on = msg.get("on")
            if not isinstance(on, bool):
                return error('"on" must be true or false')
            client.paused = on
            client.wake.set()
            return None
        return error(f"unknown message type {kind!r}")

    # ------------------------------------------------------------------ running
    @property
    def url(self) -> str:
        """The page's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def _start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=_MAX_FRAME_BYTES,
            max_queue=64,
        )
        sockets = list(self._server.sockets)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def serve_forever(self, on_ready: Any = None) -> None:
        """Serve until cancelled; ``on_ready(url)`` is called once the port is open."""
        await self._start()
        assert self._server is not None
        if on_ready is not None:
            on_ready(self.url)
        await self._server.serve_forever()

    def start(self) -> str:
        """Serve on a background thread (for tests and notebooks); returns the URL."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="dreamlab-play-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self.url

    def stop(self) -> None:
        """Stop a server started with :meth:`start`; close every session."""
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            # A client that keeps an HTTP socket open must not hold the shutdown up for long.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=3)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.executor.shutdown(wait=True)
        self._loop = self._server = None


@dataclass
class PlayArgs:
    """Play the dream in a browser: a local page streams the world model's frames as you act."""

    run: Path
    """run directory with a trained world model (V+M, or a Dreamer run's RSSM)"""
    host: str = "127.0.0.1"
    """interface to bind; anything but a loopback address lets other machines in (no password)"""
    port: int = 8765
    """TCP port (0 = any free port)"""
    fps: float = 15.0
    """frames per second sent to the page (0 = as fast as the model steps)"""
    temperature: float = 1.0
    """initial dream temperature (the page has a slider)"""
    real: bool = False
    """show the real env beside the dream from the start (the page has a switch)"""
    device: str = "cpu"
    """torch device of the world model"""
    max_clients: int = 8
    """most browser tabs served at once"""


def play(args: PlayArgs) -> None:
    """Load the run's world model, print the URL, serve until Ctrl-C."""
    model = load_play_model(args.run, device=args.device)
    server = PlayServer(
        model,
        host=args.host,
        port=args.port,
        fps=args.fps,
        temperature=args.temperature,
        real=args.real,
        max_clients=args.max_clients,
    )
    if not is_loopback(args.host):
        print(
            f"dreamlab play: WARNING: binding to {args.host!r} makes the player reachable from "
            "other machines, with no authentication; use --host 127.0.0.1 unless you mean it",
            file=sys.stderr,
        )

    def ready(url: str) -> None:
        print(f"dreamlab play: {model.name} at {url} (Ctrl-C to stop)", flush=True)

    try:
        asyncio.run(server.serve_forever(ready))
    except OSError as e:
        raise ValueError(f"play: cannot listen on {args.host}:{args.port} ({e})") from None
    except KeyboardInterrupt:
        print("dreamlab play: stopped", file=sys.stderr)
    finally:
        server.executor.shutdown(wait=False, cancel_futures=True)
