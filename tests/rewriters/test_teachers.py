"""Teachers: the offline builtin teacher, and an OpenAI-compatible one against a local server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from types import SimpleNamespace

import httpx
import pytest

from rewriters import teachers
from rewriters.commands import LENGTH_MAX, LENGTH_MIN, count_words
from rewriters.errors import ConfigError, TeacherError
from rewriters.queries import builtin_queries, load_vocab
from rewriters.builtin_teacher import BuiltinTeacher, label_intent
from rewriters.grounding import GroundItem, StaticGrounder
from rewriters.teachers import OpenAITeacher, TeacherReply

ALL_LENGTHS = range(LENGTH_MIN, LENGTH_MAX + 1)
STOP = set(load_vocab()["stopwords"])


def run(coro):
    return asyncio.run(coro)


def words_of(text: str) -> set[str]:
    return {w.strip(",").lower() for w in text.split()}


def overlap(query: str, prompt: str) -> float:
    """Share of the query's content words that appear in the prompt."""
    content = [w for w in query.lower().split() if w not in STOP]
    return sum(w in words_of(prompt) for w in content) / len(content)


# --------------------------------------------------------------------------- BuiltinTeacher

@pytest.mark.parametrize("query", [
    "golden retriever puppy on a beach",  # six words, longer than the shortest prompts
    "yoga",
    "new year's eve party invitation card template",
    "aesthetic skincare launch instagram post",
])
def test_builtin_prompts_have_exactly_the_requested_words(query):
    requests = [(t, n) for t in ("image", "template") for n in ALL_LENGTHS]
    reply = run(BuiltinTeacher().generate(query, "both", requests))
    assert reply.intent == "both"
    assert [t for t, _ in reply.prompts] == [t for t, _ in requests]
    for (task, n), (_, prompt) in zip(requests, reply.prompts):
        assert count_words(prompt) == n, (task, n, prompt)
        assert "\n" not in prompt and "  " not in prompt and ", ," not in prompt
        assert not prompt.startswith(",") and not prompt.endswith(",")


def test_builtin_prompts_are_fluent_enough():
    """No stammer ("cozy cozy"), no dangling preposition, no repeated phrase."""
    teacher = BuiltinTeacher()
    for spec in builtin_queries(60, seed=5):
        for task in ("image", "template"):
            for n in (3, 4, 7, 15, 40):
                prompt = teacher.compose(spec.query, task, n)
                toks = prompt.replace(",", "").split()
                assert all(a != b for a, b in pairwise(toks)), prompt
                assert toks[-1] not in STOP, prompt
                phrases = [p.strip() for p in prompt.split(",")]
                assert len(phrases) == len(set(phrases)), prompt


def test_builtin_is_deterministic_per_seed_query_and_request():
    requests = [("image", 12), ("template", 12), ("image", 12)]
    a = run(BuiltinTeacher(seed=7).generate("snowy mountain cabin at night", None, requests))
    b = run(BuiltinTeacher(seed=7).generate("snowy mountain cabin at night", None, requests))
    c = run(BuiltinTeacher(seed=8).generate("snowy mountain cabin at night", None, requests))
    assert a == b
    assert a.prompts != c.prompts
    # the same (task, length) asked twice in one call gives two different prompts
    assert a.prompts[0] != a.prompts[2]


def test_builtin_prompts_vary():
    """Many queries x lengths: prompts are not near-copies of each other."""
    teacher = BuiltinTeacher()
    prompts = [teacher.compose(s.query, t, 20)
               for s in builtin_queries(100, seed=2) for t in ("image", "template")]
    tails = {p.split(",", 1)[-1] for p in prompts}  # everything after the subject
    assert len(tails) == len(prompts)
    # phrase-level variety: a single modifier phrase shows up in few prompts
    phrases = Counter(ph.strip() for p in prompts for ph in p.split(",")[1:])
    assert phrases.most_common(1)[0][1] < 0.15 * len(prompts)


def test_builtin_focus_controls_relevance():
    teacher = BuiltinTeacher()
    specs = builtin_queries(150, seed=9)
    by_focus = {}
    for focus in (0.95, 0.45, 0.05):
        by_focus[focus] = [overlap(s.query, teacher.compose(s.query, t, n, focus=focus))
                           for s in specs for t in ("image", "template") for n in (12, 25)]
    mean = {f: sum(v) / len(v) for f, v in by_focus.items()}
    # high focus keeps every query word when the prompt is long enough for them
    assert min(by_focus[0.95]) == 1.0
    assert mean[0.95] > mean[0.45] + 0.3 > mean[0.05] + 0.4
    assert mean[0.05] < 0.05  # off-topic: the subject was swapped


def test_builtin_drawn_focus_spreads_relevance():
    teacher = BuiltinTeacher()
    scores = [overlap(s.query, teacher.compose(s.query, t, n))
              for s in builtin_queries(150, seed=4) for t in ("image", "template")
              for n in (10, 30)]
    on_topic = sum(s == 1.0 for s in scores) / len(scores)
    off_topic = sum(s == 0.0 for s in scores) / len(scores)
    assert 0.3 < on_topic < 0.7 and 0.15 < off_topic < 0.55, (on_topic, off_topic)


@pytest.mark.parametrize("query, intent", [
    ("birthday party invitation", "template"),
    ("summer sale instagram post", "template"),
    ("real estate flyers", "template"),  # plural folded
    ("Wedding Menu Card", "template"),
    ("golden retriever puppy photo", "image"),
    ("mountain landscape wallpaper", "image"),
    ("watercolor painting of a fox", "image"),
    ("poster of a cat photo", "template"),  # template words win
    ("christmas", "both"),
    ("coffee shop", "both"),
])
def test_label_intent_keyword_rules(query, intent):
    assert label_intent(query) == intent


def test_builtin_labels_intent_when_none_given():
    reply = run(BuiltinTeacher().generate("halloween party flyer", None, [("image", 5)]))
    assert reply.intent == "template"


@pytest.mark.parametrize("requests, match", [
    ([("image", LENGTH_MIN - 1)], "out of range"),
    ([("image", LENGTH_MAX + 1)], "out of range"),
    ([("video", 10)], "unknown task 'video'"),
    ([("image", 10.0)], "whole number"),
    ([], "empty"),
])
def test_builtin_rejects_bad_requests(requests, match):
    with pytest.raises(ConfigError, match=match):
        run(BuiltinTeacher().generate("yoga", None, requests))


def test_builtin_rejects_unknown_intent():
    with pytest.raises(ConfigError, match="unknown intent 'video'"):
        run(BuiltinTeacher().generate("yoga", "video", [("image", 5)]))


# --------------------------------------------------------------------------- local server

@dataclass
class Reply:
    status: int = 200
    body: str | dict = ""
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None  # answer only once set (or after HOLD_MAX_S)
    sent: threading.Event = field(default_factory=threading.Event)  # set once answered


def chat(content: str) -> dict:
    """An OpenAI chat-completions response wrapping ``content``."""
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


def good(requests, intent="image", fence=False) -> Reply:
    content = json.dumps({"intent": intent, "prompts": [
        {"task": t, "length": n, "prompt": " ".join(["word"] * n)} for t, n in requests]})
    if fence:
        content = f"```json\n{content}\n```"
    return Reply(body=chat(content))


HOLD_MAX_S = 10.0  # a held reply is sent after this long even if the test never releases it


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        srv = self.server
        with srv.lock:
            srv.seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                             "body": json.loads(raw)})
            reply = srv.script.pop(0) if len(srv.script) > 1 else srv.script[0]
        if reply.hold is not None:
            reply.hold.wait(HOLD_MAX_S)
        data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        try:
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data.encode())))
            self.end_headers()
            self.wfile.write(data.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)
        reply.sent.set()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A chat-completions server on 127.0.0.1 replaying ``server.script`` (last reply repeats)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock, srv.seen, srv.script = threading.Lock(), [], [Reply(status=500)]
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


REQUESTS = [("image", 7), ("template", 23), ("image", 31)]


def ask(url, query="cozy cabin", intent=None, requests=REQUESTS, **kw):
    """Run one generate() with tiny backoff on a proxy-free client."""
    kw = {"model": "tiny-llm", "api_key": "sk-test", "backoff_s": 0.001,
          "max_retries": 3, "timeout_s": 5.0, **kw}

    async def go():
        async with httpx.AsyncClient(trust_env=False) as client:
            teacher = OpenAITeacher(url, client=client, **kw)
            return await teacher.generate(query, intent, requests)
    return run(go())


def test_openai_good_reply_and_request_body(server):
    server.script = [good(REQUESTS, intent="both")]
    reply = ask(server.url, query="cozy cabin", intent=None, temperature=0.3)
    assert reply == TeacherReply("both", [(t, " ".join(["word"] * n)) for t, n in REQUESTS])
    (seen,) = server.seen
    assert seen["path"] == "/v1/chat/completions"
    assert seen["auth"] == "Bearer sk-test"
    body = seen["body"]
    assert body["model"] == "tiny-llm" and body["temperature"] == 0.3
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    last = json.loads(body["messages"][-1]["content"])
    assert last == {"query": "cozy cabin", "intent": None, "requests": [
        {"task": "image", "length": 7}, {"task": "template", "length": 23},
        {"task": "image", "length": 31}]}


def test_openai_accepts_fenced_json_and_off_length_prompts(server):
    reply_items = [("image", 7), ("template", 23), ("image", 31)]
    content = json.dumps({"intent": "image", "prompts": [
        {"task": t, "length": n, "prompt": "too short"} for t, n in reply_items]})
    server.script = [Reply(body=chat(f"```json\n{content}\n```"))]
    reply = ask(server.url, api_key=None)
    assert [p for _, p in reply.prompts] == ["too short"] * 3  # length is measured later
    assert server.seen[0]["auth"] is None


def test_openai_given_intent_wins_over_model_label(server):
    server.script = [good(REQUESTS, intent="image")]
    assert ask(server.url, intent="template").intent == "template"


def test_openai_prompts_matched_to_requests_in_any_order(server):
    server.script = [good(list(reversed(REQUESTS)))]
    reply = ask(server.url)
    assert [count_words(p) for _, p in reply.prompts] == [7, 23, 31]


def test_openai_retries_malformed_replies(server):
    server.script = [
        Reply(body=chat("Sure! Here are your prompts: ...")),  # not JSON
        Reply(body=chat(json.dumps({"intent": "image", "prompts": "nope"}))),  # wrong shape
        Reply(body={"choices": []}),  # no message at all
        good(REQUESTS),
    ]
    reply = ask(server.url, max_retries=3)
    assert len(reply.prompts) == 3 and len(server.seen) == 4


@pytest.mark.parametrize("bad, problem", [
    ({"intent": "image", "prompts": [{"task": "image", "length": 7, "prompt": "a b"}]},
     "no prompt for request"),
    ({"intent": "image", "prompts": [
        {"task": t, "length": n, "prompt": "x"} for t, n in REQUESTS + [("image", 5)]]},
     "beyond the 3 requested"),
    ({"intent": "image", "prompts": [
        {"task": "video", "length": 7, "prompt": "x"}]}, "not a known task"),
    ({"intent": "image", "prompts": [
        {"task": "image", "length": "7", "prompt": "x"}]}, "not an integer"),
    ({"intent": "image", "prompts": [
        {"task": "image", "length": 7, "prompt": "two\nlines"}]}, "several lines"),
    ({"intent": "image", "prompts": [
        {"task": "image", "length": 7, "prompt": "  "}]}, "missing or empty"),
    ({"intent": "photo", "prompts": []}, "intent 'photo'"),
])
def test_openai_wrong_shape_is_teacher_error_after_retries(server, bad, problem):
    server.script = [Reply(body=chat(json.dumps(bad)))]
    with pytest.raises(TeacherError, match=problem) as e:
        ask(server.url, query="cozy cabin", max_retries=1)
    assert "'cozy cabin'" in str(e.value) and "after 2 attempts" in str(e.value)
    assert len(server.seen) == 2


def test_openai_retries_5xx(server):
    server.script = [Reply(status=500, body="boom"), Reply(status=503), good(REQUESTS)]
    assert len(ask(server.url).prompts) == 3
    assert len(server.seen) == 3


def test_openai_honours_retry_after_on_429(server, monkeypatch):
    server.script = [Reply(status=429, body="slow down", headers={"Retry-After": "0.4"}),
                     good(REQUESTS)]
    waits = []

    async def sleep(seconds):  # records the wait instead of taking it
        waits.append(seconds)

    monkeypatch.setattr(teachers, "asyncio", SimpleNamespace(sleep=sleep))
    ask(server.url, backoff_s=0.001)
    assert waits == [0.4]  # the server's Retry-After, not the tiny backoff
    assert len(server.seen) == 2


def test_openai_gives_up_after_max_retries(server):
    server.script = [Reply(status=500, body="internal error")]
    with pytest.raises(TeacherError, match=r"'cozy cabin' after 3 attempts.*HTTP 500"):
        ask(server.url, query="cozy cabin", max_retries=2)
    assert len(server.seen) == 3


def test_openai_4xx_fails_at_once(server):
    server.script = [Reply(status=401, body='{"error": "invalid api key"}')]
    with pytest.raises(TeacherError, match=r"HTTP 401.*invalid api key"):
        ask(server.url, max_retries=3)
    assert len(server.seen) == 1


def test_openai_retries_a_slow_reply(server):
    release = threading.Event()
    slow = Reply(hold=release, body=chat("late"))  # answered only once the test releases it
    server.script = [slow, good(REQUESTS)]
    try:
        reply = ask(server.url, timeout_s=0.3)
        answered_first = slow.sent.is_set()
    finally:
        release.set()
    assert len(reply.prompts) == 3 and len(server.seen) == 2
    assert not answered_first  # the teacher gave up on the held reply and took the retry's


def test_openai_connection_refused_is_teacher_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    with pytest.raises(TeacherError, match="connection failed"):
        ask(f"http://127.0.0.1:{port}/v1", max_retries=1)


def test_openai_owns_and_closes_its_client(server):
    server.script = [good([("image", 4)])]

    async def go():
        teacher = OpenAITeacher(server.url + "/", "tiny-llm", backoff_s=0.001)
        assert teacher.name == "openai:tiny-llm"
        reply = await teacher.generate("yoga", "both", [("image", 4)])
        await teacher.aclose()
        return reply, teacher

    reply, teacher = run(go())
    assert reply.prompts == [("image", "word word word word")]
    assert teacher._client.is_closed
    assert server.seen[0]["path"] == "/v1/chat/completions"  # trailing slash tolerated


@pytest.mark.parametrize("kw, match", [
    ({"base_url": "localhost:8000"}, "http"),
    ({"model": ""}, "model"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"max_retries": -1}, "max_retries"),
])
def test_openai_rejects_bad_config(kw, match):
    args = {"base_url": "http://127.0.0.1:9/v1", "model": "m", **kw}
    with pytest.raises(ConfigError, match=match):
        OpenAITeacher(**args)


def test_few_shot_examples_practise_what_they_preach():
    """The few-shot replies must have the word counts they claim, or the model learns to miss."""
    for user, reply in teachers._FEW_SHOT:
        asked = [(r["task"], r["length"]) for r in user["requests"]]
        got = [(p["task"], p["length"]) for p in reply["prompts"]]
        assert asked == got
        for p in reply["prompts"]:
            assert count_words(p["prompt"]) == p["length"], p


# --------------------------------------------------------------------------- grounded OpenAI

class RecordingGrounder(StaticGrounder):
    def __init__(self, mapping):
        super().__init__(mapping)
        self.calls = []

    def ground(self, query, task, k=20):
        self.calls.append((query, task, k))
        return super().ground(query, task, k)


def test_openai_grounding_context_reaches_the_request_body():
    items = [GroundItem("t1", "GitHub brand icon", tags=("logo", "octocat"), category="brands",
                        weight=3.0, source="click"),
             GroundItem("t2", "git branch", tags=("version control",), category="development",
                        weight=2.0),
             GroundItem("t3", "dog", tags=("pet",), category="animals", weight=0.5)]
    grounder = RecordingGrounder({"github logo": items})
    requests = [("template", 5), ("image", 4)]
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=good(requests).body)

    async def go(grounder):
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(transport=transport) as client:
            teacher = OpenAITeacher("http://teacher.test/v1", "tiny-llm", client=client,
                                    grounder=grounder, grounding_k=2)
            return await teacher.generate("github logo", None, requests)

    reply = run(go(grounder))
    assert [t for t, _ in reply.prompts] == ["template", "image"]
    assert grounder.calls == [("github logo", "template", 2)]  # once, for the first task
    messages = bodies[0]["messages"]
    last = json.loads(messages[-1]["content"])
    assert last["query"] == "github logo"
    assert last["context"] == [  # the top grounding_k items, strongest first
        {"title": "GitHub brand icon", "tags": ["logo", "octocat"], "category": "brands"},
        {"title": "git branch", "tags": ["version control"], "category": "development"}]
    assert "catalogue's vocabulary" in messages[0]["content"]
    # the few-shot turns carry no context, so the model sees it for the real query only
    assert all("context" not in json.loads(m["content"]) for m in messages[1:-1])

    # a query the catalogue knows nothing about goes without context
    bodies.clear()
    run(go(RecordingGrounder({})))
    assert "context" not in json.loads(bodies[0]["messages"][-1]["content"])
    # and a teacher without a grounder keeps the plain system prompt
    bodies.clear()
    run(go(None))
    assert "catalogue" not in bodies[0]["messages"][0]["content"]


def test_openai_rejects_bad_grounding_k():
    with pytest.raises(ConfigError, match="grounding_k 0"):
        OpenAITeacher("http://127.0.0.1:9/v1", "m", grounding_k=0)
