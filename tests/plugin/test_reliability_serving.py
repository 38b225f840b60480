"""Serving failures reproduced against a real server (``pytest -m reliability``).

The app runs as ``udrl serve`` runs it (``create_app`` over a loaded pipeline, uvicorn on a
socket, here in a thread of the test process) over the real intent model and indexes of the
plugin fixtures, with a fake model that has the real engines' 128-token window (``check_fit``;
a batch holding a query that does not fit is refused whole) and costs time per generated word.

1. Eight ordinary rewrites sent together with one 200-word query: the eight are answered by the
   model, the long one is a 400 naming the window (it used to sink the batch it landed in).
2. Sixteen clients flood the service for 3 s with unique ``n=8, length=40`` requests that give
   up after 1 ms; then ordinary requests are answered by the model within their deadline (the
   abandoned jobs used to be generated anyway, one after another, long after their callers had
   gone).
3. A 1 GB chunked POST, produced lazily: refused with 413 after at most a few MB, and the
   server's memory grows by less than 50 MB (the body used to be read whole before the check).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from plugin.config import get_settings
from plugin.service import create_app

from .fakes import FakeRewriter

pytestmark = pytest.mark.reliability

WINDOW = 128  # tokens, as the shipped models


class CostlyRewriter(FakeRewriter):
    """The fake model with the real window, taking 5 ms per call + 0.1 ms per word generated."""

    def __init__(self):
        super().__init__(window=WINDOW)

    def rewrite_batch(self, items, n=1, **options):
        for q, c in items:
            self.check_query(q, c)  # like the real engines: one bad input fails the call
        time.sleep(0.005 + 1e-4 * n * sum(c.length for _, c in items))
        return super().rewrite_batch(items, n=n, **options)


@contextmanager
def serving(pipe):
    """The service as ``udrl serve`` runs it, on a free port; yields its base URL."""
    app = create_app(pipe)
    app.dependency_overrides[get_settings] = lambda: pipe.settings
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield "http://127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def concurrently(fn, args: list) -> list:
    """``fn(arg)`` for every arg, each in its own thread, released together."""
    out: list = [None] * len(args)
    start = threading.Barrier(len(args))

    def run(i):
        start.wait()
        out[i] = fn(args[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_a_too_long_query_is_a_400_and_its_neighbours_are_answered(make_pipeline):
    pipe = make_pipeline(CostlyRewriter())
    queries = [f"red cabin photo {i}" for i in range(8)] + ["x " * 200]
    with serving(pipe) as url, httpx.Client(base_url=url, timeout=30) as client:
        answers = concurrently(lambda q: client.post("/v1/rewrite", json={"query": q}), queries)
    *normal, long = answers
    for r in normal:
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["path"] == "rewrite", data
        assert {p["source"] for p in data["prompts"]} == {"model"}
    assert long.status_code == 400
    err = long.json()["error"]
    assert err["code"] == "query_too_long"
    assert f"of the model's {WINDOW}-token window" in err["message"]
    assert pipe.batcher.stats.isolated == 0  # refused before queueing: no batch failed


def test_after_a_flood_of_abandoned_requests_the_model_answers_in_time(make_pipeline):
    pipe = make_pipeline(CostlyRewriter())
    deadline_s = pipe.settings.service.deadline_ms / 1000.0
    stop = time.monotonic() + 3.0
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def flood(c: int) -> int:
        sent = 0
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < stop:
                body = {"query": f"flood client{c} request{sent}", "n": 8, "length": 40,
                        "deadline_ms": 1}
                r = client.post("/v1/rewrite", json=body)
                assert r.status_code == 200, r.text
                with lock:
                    for p in r.json()["prompts"]:
                        seen[p["reason"] or p["path"]] = seen.get(p["reason"] or p["path"], 0) + 1
                sent += 1
        return sent

    with serving(pipe) as url:
        flooded = sum(concurrently(flood, list(range(16))))
        depth_after = pipe.batcher.depth
        with httpx.Client(base_url=url, timeout=30) as client:
            def ordinary(i: int) -> tuple[float, dict]:
                t0 = time.monotonic()
                r = client.post("/v1/rewrite", json={"query": f"blue lake photo {i}"})
                assert r.status_code == 200, r.text
                return time.monotonic() - t0, r.json()

            after = concurrently(ordinary, list(range(8)))
            metrics = client.get("/metrics").text
    stats = pipe.batcher.stats
    print(f"flood: {flooded} requests, outcomes {seen}, items generated {stats.items}, "
          f"expired {stats.expired}, refused {stats.refused}; queue after the flood "
          f"{depth_after}")
    assert flooded > 50 and depth_after <= pipe.settings.service.max_queue
    for took, data in after:
        assert data["path"] == "rewrite", data  # no deadline fallback once the flood stopped
        assert took < deadline_s
    # the model did a small part of the abandoned work: most of it was never queued or
    # was dropped unrun (each flood request is 1-2 items)
    assert stats.items < 0.25 * flooded
    assert "udrl_queue_jobs_total" in metrics


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def post_chunked(url: str, path: str, total: int, chunk: int = 64 * 1024) -> tuple[bytes, int]:
    """POST ``total`` bytes chunked, made lazily, until the server answers; returns (the
    server's answer, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    sock.setblocking(False)
    piece = b"%x\r\n" % chunk + b"a" * chunk + b"\r\n"
    sent, pending, answer = 0, b"", b""
    try:
        while sent < total or pending:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:  # the server has answered (or closed): stop sending
                break
            if writable:
                if not pending:
                    pending = piece
                    sent += chunk
                    if sent >= total:
                        pending += b"0\r\n\r\n"  # the last chunk
                try:
                    pending = pending[sock.send(pending):]
                except (BrokenPipeError, ConnectionResetError):
                    break
        sock.setblocking(True)
        sock.settimeout(10)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    return answer, sent


def test_a_1gb_chunked_post_is_refused_early_without_growing_memory(make_pipeline):
    pipe = make_pipeline(CostlyRewriter())
    with serving(pipe) as url:
        before = _rss_bytes()
        t0 = time.monotonic()
        answer, sent = post_chunked(url, "/v1/search", 1 << 30)
        took = time.monotonic() - t0
        grew = _rss_bytes() - before
    head, _, body = answer.partition(b"\r\n\r\n")
    print(f"sent {sent / 1e6:.1f} MB before the answer, in {took:.2f} s; RSS grew "
          f"{grew / 1e6:.1f} MB")
    assert head.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "body_too_large"
    assert sent < 64 << 20  # refused after at most a few socket buffers, not 1 GB
    assert grew < 50 << 20
