"""Deterministic stand-ins for the model and the text encoder, so pipeline and service tests can
check paths, fallbacks and fusion exactly. The indexes and the intent model in these tests are
the real ones (FAISS, tantivy, IntentDetector)."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np

from plugin.rewrite import PromptOutcome
from rewriters.commands import Command, count_words
from rewriters.engines import Rewrite
from rewriters.engines.budget import check_fit


class FakeRewriter:
    """``rewrite_batch`` like the real engine; the prompt is ``script(query, command, call)``.

    Default script: the query followed by filler words up to the asked length (always valid).
    ``delay_s`` sleeps per call (a deliberately slow model). ``window``: a context window in
    tokens, one token per word plus 4 for the command and ``<|prompt|>``; like the real engines,
    ``check_query`` refuses a query that leaves too little of it (``budget.check_fit``) and
    ``rewrite_batch`` refuses the whole batch when one of its queries does.
    """

    version = "fake-v1"

    def __init__(self, script=None, delay_s: float = 0.0, window: int | None = None):
        self.script = script or (lambda q, c, call: " ".join(
            (q.split() + [f"w{i}" for i in range(40)])[: c.length]))
        self.delay_s = delay_s
        self.window = window
        self.calls: list[tuple[list, dict]] = []
        self.lock = threading.Lock()

    def check_query(self, query: str, command: Command) -> None:
        if self.window is not None:
            words = len(query.split())
            check_fit(self.window, words + 4, words, command, 0)

    def close(self) -> None:
        self.closed = True

    def rewrite_batch(self, items, n=1, **options):
        for q, c in items:
            self.check_query(q, c)
        with self.lock:
            call = len(self.calls)
            self.calls.append((list(items), dict(n=n, **options)))
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for q, c in items:
            texts = [self.script(q, c, call) for _ in range(n)]
            out.append([Rewrite(t, count_words(t), c, bool(t.strip()),
                                () if t.strip() else ("empty output",)) for t in texts])
        return out


class HashEncoder:
    """Maps a text to a unit vector from the hashes of its words (bag of words)."""

    name = "hash-encoder"
    dim = 64

    def encode_texts(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(",", " ").split():
                h = int(hashlib.md5(w.encode()).hexdigest(), 16)
                out[i, h % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


def command(task="image", length=5, relevance=4) -> Command:
    return Command(task, length, relevance)


def outcome(prompt: str, path: str = "rewrite", task: str = "template") -> PromptOutcome:
    """A prompt outcome for ``task`` as the model wrote it (command length 5, relevance 4)."""
    return PromptOutcome(task=task, command={"task": task, "length": 5, "relevance": 4},
                         prompt=prompt, words=len(prompt.split()), path=path, source="model",
                         attempts=1, rejected=[], reason=None, alternatives=[])
