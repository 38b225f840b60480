"""Hot reload under load (``pytest -m reliability``).

A real uvicorn server over the app and 6 client threads sending ``/v1/search`` and
``/v1/rewrite`` without pause (every query unique, so every request waits on the model). Meanwhile
the real ``udrl index templates`` publishes two new versions and ``udrl index rollback
templates`` goes back one, each taken up by ``POST /admin/reload`` (one run) or by the watch
(the other, ``service.reload_interval_s`` = 0.25). Checked: no request fails; every search that
starts after a reload is done answers from the new ``index_version``, every one that ends before
it from the old; each replaced pipeline's template index is closed once its requests are done.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import httpx
import pytest
import uvicorn

from indexers.errors import IndexStoreError
from indexers.template_backends import open_template_index
from plugin.pipeline import Pipeline
from plugin.service import create_app

from ..indexers.bad_catalogues import write_jsonl
from ..indexers.template_fixtures import make_templates
from .conftest import settings_for
from .fakes import FakeRewriter

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
N_CLIENTS = 6
SETTLE_S = 1.0  # load on each version before the next step


def udrl(ws: Path, *args: str) -> str:
    """Run the ``udrl`` command line in its own process; the live version it leaves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDRL_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "plugin.cli", "--config", str(ws / "udrl.toml"),
           "--workspace", str(ws), *args]
    done = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return (ws / "indexes" / "templates" / "CURRENT").read_text().strip()


class Server:
    """uvicorn serving ``app`` on a free loopback port in a thread (lifespan included)."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class Load:
    """Client threads posting searches and rewrites until stopped; what each search saw."""

    def __init__(self, url: str, clients: int):
        self.url, self.stop = url, threading.Event()
        self.searches: list[tuple[float, float, str]] = []  # (sent, answered, index_version)
        self.rewrites = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def seen_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for sent, _, _ in self.searches if sent > t)

    def _client(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                path = "/v1/rewrite" if n % 3 == 0 else "/v1/search"
                body = {"query": f"modern poster {i} {n}", "task": "template"}
                if path == "/v1/search":
                    body["k"] = 5
                sent = time.monotonic()
                try:
                    r = client.post(path, json=body)
                except httpx.HTTPError as e:
                    self._fail(f"{path}: {e!r}")
                    continue
                answered = time.monotonic()
                if r.status_code != 200:
                    self._fail(f"{path}: {r.status_code} {r.text[:200]}")
                elif path == "/v1/rewrite":
                    with self.lock:
                        self.rewrites += 1
                else:
                    m = r.json()["modalities"][0]
                    if m["error"] or not m["results"]:
                        self._fail(f"search: {m['error']!r}, {len(m['results'])} results")
                    with self.lock:
                        self.searches.append((sent, answered, m["index_version"]))

    def _fail(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


def wait_for(check, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def closed(index) -> bool:
    try:
        index.search("modern", k=1)
    except IndexStoreError:
        return True
    return False


@pytest.mark.parametrize("trigger", ["api", "watch"])
def test_publishes_under_load_switch_versions_without_a_failed_request(tmp_path, trigger,
                                                                      intent_detector):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "udrl.toml").write_text("[index]\ndense = false\n")
    sources = [write_jsonl(tmp_path / f"t{i}.jsonl", make_templates(300, seed=i).records)
               for i in range(3)]
    first = udrl(ws, "index", "templates", str(sources[0]))
    settings = settings_for(ws, index={"dense": False}, service={
        "reload_interval_s": 0.25 if trigger == "watch" else 0,
        "require_indexes": ["template"]})
    pipe = Pipeline(FakeRewriter(delay_s=0.005), intent_detector, settings,
                    template_index=open_template_index("tantivy",
                                                       root=settings.template_index_dir))
    app = create_app(pipe, own=True)
    steps = [("index", "templates", str(sources[1])), ("index", "templates", str(sources[2])),
             ("index", "rollback", "templates")]
    switches: list[tuple[float, float, str]] = []  # (published from, served from, version)
    with Server(app) as url, Load(url, N_CLIENTS) as load:
        wait_for(lambda: load.seen_since(0) >= 20)
        for step in steps:
            replaced = app.state.pipeline
            start = time.monotonic()
            version = udrl(ws, *step)
            if trigger == "api":
                r = httpx.post(f"{url}/admin/reload", timeout=60)
                assert r.status_code == 200, r.text
                assert r.json()["components"]["template_index"]["new"] == version
            else:
                wait_for(lambda v=version: httpx.get(f"{url}/readyz").json()["components"]
                         ["template_index"]["version"] == v)
            served_from = time.monotonic()
            switches.append((start, served_from, version))
            wait_for(lambda t=served_from: load.seen_since(t) >= 20)  # load on the new one
            time.sleep(SETTLE_S)
            # retired: closed once its requests were done
            wait_for(lambda p=replaced: closed(p.template_index))
        last = httpx.get(f"{url}/readyz").json()["reload"]["last"]
    assert load.errors == []
    assert last["trigger"] == trigger and last["result"] == "ok"
    assert [v for _, _, v in switches][2] == switches[0][2]  # the rollback went back one

    # version j may be current from step j's start until step j+1 is served, and is the only
    # one between step j being served and step j+1's start
    epochs = [(float("-inf"), first)] + [(start, v) for start, _, v in switches]
    ends = [served_from for _, served_from, _ in switches] + [float("inf")]
    strict = 0
    for sent, answered, version in load.searches:
        allowed = {v for (begin, v), end in zip(epochs, ends) if sent < end and answered > begin}
        assert version in allowed, (sent, answered, version, switches)
        strict += len(allowed) == 1
    assert {v for _, _, v in load.searches} == {first, *(v for _, _, v in switches)}
    assert strict > 100 and load.rewrites > 50
