"""HTTP load for the service bench: server processes and a light keep-alive load generator.

The server under test runs in a process of its own (``python -m bench.http_load``), so the load
generator's work is never counted as the server's (a server thread beside client threads in one
process shares their GIL). The generator is one thread driving every client's connection from
one ``selectors`` loop over raw sockets: each client sends a prebuilt HTTP/1.1 request on its
own keep-alive connection, waits for the whole response, and sends the next.

Servers (one per process, on 127.0.0.1, uvicorn with the installation's default loop and HTTP
parser, no access log):

    python -m bench.http_load ceiling PORT               a bare ASGI app answering one
                                                         constant JSON: what this machine's
                                                         Python HTTP stack can do at most
    python -m bench.http_load service PORT SETTINGS.json the real app (create_app over a
                                                         Pipeline) with these settings
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CEILING_BODY", "free_port", "get", "load", "request_bytes", "start_server",
           "stop_server"]

CEILING_BODY = json.dumps({"query": "summer sale poster", "intent": "image", "path": "cache",
                           "prompts": [{"task": "image", "prompt": "bright summer sale poster "
                                        "with bold type palm leaves and sunny beach"}]}).encode()


def request_bytes(path: str, body: dict[str, Any], port: int) -> bytes:
    """One ``POST path`` with a JSON body, as HTTP/1.1 keep-alive bytes."""
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
    return head.encode("latin-1") + data


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _response_end(buf: bytearray) -> int:
    """Length of the first complete response in ``buf``, or 0 while it is incomplete."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return 0
    size = 0
    for line in bytes(buf[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            size = int(value)
    end = head_end + 4 + size
    return end if len(buf) >= end else 0


def _status(buf: bytearray) -> int:
    return int(buf[9:12])


def get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of one ``GET path`` on a fresh connection."""
    with _connect(port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        buf = bytearray()
        while not (end := _response_end(buf)):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"GET {path}: connection closed mid-response")
            buf += chunk
        return _status(buf), bytes(buf[buf.find(b"\r\n\r\n") + 4:end])


def load(port: int, clients: int, per_client: int,
         request_for: Callable[[int, int], bytes]) -> dict[str, Any]:
    """Run ``clients`` concurrent keep-alive clients, ``per_client`` requests each.

    Args:
        port: the server's port on 127.0.0.1.
        request_for: (client, i) -> the request's bytes (``request_bytes``).
    Returns:
        requests, rps (completed over wall time), p50_ms and p99_ms of the latencies.
    Raises:
        RuntimeError: a response other than 200.
    """
    sel = selectors.DefaultSelector()
    socks = [_connect(port) for _ in range(clients)]
    state = {}  # fd -> [client, sent, started, buffer]
    lat: list[float] = []
    t0 = time.perf_counter()
    try:
        for c, sock in enumerate(socks):
            state[sock.fileno()] = [c, 1, time.perf_counter(), bytearray()]
            sock.sendall(request_for(c, 0))
            sel.register(sock, selectors.EVENT_READ)
        open_clients = clients
        while open_clients:
            for key, _ in sel.select():
                sock = key.fileobj
                st = state[sock.fileno()]
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed a keep-alive connection")
                st[3] += chunk
                end = _response_end(st[3])
                if not end:
                    continue
                lat.append(time.perf_counter() - st[2])
                if _status(st[3]) != 200:
                    raise RuntimeError(f"HTTP {_status(st[3])}: {bytes(st[3][:300])!r}")
                del st[3][:end]
                if st[1] == per_client:
                    sel.unregister(sock)
                    open_clients -= 1
                    continue
                st[2] = time.perf_counter()
                sock.sendall(request_for(st[0], st[1]))
                st[1] += 1
        wall = time.perf_counter() - t0
    finally:
        sel.close()
        for sock in socks:
            sock.close()
    lat.sort()
    return {"requests": len(lat), "rps": round(len(lat) / wall, 1),
            "p50_ms": round(1000 * statistics.median(lat), 2),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, settings: dict[str, Any] | None = None, timeout: float = 120.0,
                 cwd: Path | None = None) -> tuple[subprocess.Popen, int]:
    """Start ``python -m bench.http_load KIND PORT [SETTINGS.json]``; wait until it answers.

    Returns:
        (the process, its port). Raises RuntimeError when it exits or stays silent.
    """
    port = free_port()
    argv = [sys.executable, "-m", "bench.http_load", kind, str(port)]
    if settings is not None:
        path = Path(settings["workspace"]) / "bench_settings.json"
        path.write_text(json.dumps(settings, default=str))
        argv.append(str(path))
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(argv, cwd=cwd or root, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the {kind} server exited with {proc.returncode}")
        try:
            if get(port, "/healthz")[0] == 200:
                return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"the {kind} server did not answer within {timeout:.0f} s")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server from ``start_server`` (SIGTERM: uvicorn shuts down and the app closes)."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def ceiling_app(scope, receive, send) -> None:
    """A bare ASGI app: reads the request body, answers ``CEILING_BODY`` (200, JSON)."""
    if scope["type"] != "http":
        while scope["type"] == "lifespan":
            kind = (await receive())["type"]  # lifespan.startup, then lifespan.shutdown
            await send({"type": kind + ".complete"})
            if kind == "lifespan.shutdown":
                return
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(CEILING_BODY)).encode())]})
    await send({"type": "http.response.body", "body": CEILING_BODY})


def _service_app(settings_file: str):
    from plugin.config import Settings
    from plugin.hook import load_engine
    from plugin.pipeline import Pipeline
    from plugin.service import create_app

    settings = Settings.model_validate(json.loads(Path(settings_file).read_text()))
    return create_app(Pipeline(load_engine(settings), None, settings), own=True)


def _serve(argv: list[str]) -> None:
    import uvicorn

    kind, port = argv[0], int(argv[1])
    app = ceiling_app if kind == "ceiling" else _service_app(argv[2])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    _serve(sys.argv[1:])
