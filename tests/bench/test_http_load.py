"""The service bench's load generator: response framing, counts, and refusals."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.http_load import (
    CEILING_BODY,
    _response_end,
    get,
    load,
    request_bytes,
    start_server,
    stop_server,
)


def test_a_response_ends_after_its_content_length():
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx: y\r\n\r\n"  # 44 bytes of head
    assert _response_end(bytearray(head[:-2])) == 0  # head not finished
    assert _response_end(bytearray(head + b"abc")) == 0  # 3 of 5 body bytes
    assert _response_end(bytearray(head + b"abcde")) == len(head) + 5
    # the next response already behind it: only the first counts
    assert _response_end(bytearray(head + b"abcde" + head)) == len(head) + 5
    assert _response_end(bytearray(b"HTTP/1.1 204 No Content\r\n\r\n")) == 27  # no length: none


def test_load_counts_every_request_of_every_client():
    """Three keep-alive clients against the bare ASGI ceiling server in its own process."""
    proc, port = start_server("ceiling", timeout=60)
    try:
        req = request_bytes("/v1/rewrite", {"query": "q"}, port)
        out = load(port, 3, 20, lambda c, i: req)
        status, body = get(port, "/anything")
    finally:
        stop_server(proc)
    assert out["requests"] == 60
    assert 0 < out["p50_ms"] <= out["p99_ms"] and out["rps"] > 0
    assert (status, body) == (200, CEILING_BODY)


class _Refuses(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator expects

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"error": "busy"}'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_refused_request_stops_the_load():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with pytest.raises(RuntimeError, match="HTTP 503"):
            load(port, 2, 5, lambda c, i: request_bytes("/v1/rewrite", {"query": "q"}, port))
    finally:
        server.shutdown()
        server.server_close()
