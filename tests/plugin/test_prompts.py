"""The pipeline's rewrite stage under limits: queries too long for the model's window are refused
before queueing, one deadline covers the whole search, a full queue fails open (or raises), a
spent deadline queues nothing, identical misses share one generation, cache bypass."""

from __future__ import annotations

import threading
import time

import pytest

from plugin.errors import QueueFullError
from plugin.pipeline import Pipeline
from rewriters.errors import QueryTooLongError

from .conftest import settings_for
from .fakes import FakeRewriter, HashEncoder


class Held(FakeRewriter):
    """A rewriter whose calls wait for ``release`` (the queue fills up behind them)."""

    def __init__(self):
        super().__init__()
        self.running, self.release = threading.Event(), threading.Event()

    def rewrite_batch(self, items, **kw):
        self.running.set()
        assert self.release.wait(10)
        return super().rewrite_batch(items, **kw)


def test_a_query_too_long_for_the_window_is_refused_before_queueing(make_pipeline):
    pipe = make_pipeline(FakeRewriter(window=128))
    with pytest.raises(QueryTooLongError, match="128-token window") as e:
        pipe.rewrite("x " * 200, task="image", length=12)
    # 200 words + 4 command tokens leave nothing of 128; a 12-word prompt needs 2 x 12 + 1
    assert "its 200 tokens leave 0" in str(e.value) and "at most 99 tokens" in str(e.value)
    assert pipe.rewriter.calls == [] and pipe.batcher.stats.items == 0
    fits = " ".join(f"q{i}" for i in range(99))  # 99 + 4 + 25 = 128: the longest that fits
    assert pipe.rewrite(fits, task="image", length=12).path == "rewrite"


def test_the_deadline_covers_the_searches_after_the_model(tmp_path, intent_detector,
                                                          image_index):
    class SlowIndex:  # an index whose searches take 0.2 s
        def __getattr__(self, name):
            return getattr(image_index, name)

        def search(self, *a, **kw):
            time.sleep(0.2)
            return image_index.search(*a, **kw)

    pipe = Pipeline(FakeRewriter(delay_s=0.3), intent_detector, settings_for(tmp_path),
                    image_index=SlowIndex(), image_encoder=HashEncoder())
    try:
        pipe.search("red dog", task="image", k=3, fusion=False, deadline_ms=5000)  # measures
        t0 = time.monotonic()
        res = pipe.search("blue lake", task="image", k=3, fusion=False, deadline_ms=450)
        took = time.monotonic() - t0
        # the model (0.3 s) would fit 450 ms alone, but not with the 0.2 s search after it
        assert res.rewrite.prompts[0].reason == "deadline" and took < 0.45 + 0.15
        alone = pipe.rewrite("green cat", task="image", deadline_ms=450)
        assert alone.path == "rewrite"  # no search follows: the model gets all 450 ms
    finally:
        pipe.close()


def test_a_spent_deadline_queues_nothing(make_pipeline):
    pipe = make_pipeline()
    res = pipe.rewrite("red dog", task="image", deadline_ms=0.001)
    assert res.prompts[0].reason == "deadline" and res.prompts[0].attempts == 0
    assert pipe.batcher.stats.items == 0 and pipe.batcher.depth == 0


@pytest.mark.parametrize("policy", ["raw", "503"])
def test_a_full_queue_fails_open_or_raises(make_pipeline, policy):
    held = Held()
    pipe = make_pipeline(held, service={"max_queue": 1, "queue_full": policy})
    first = threading.Thread(target=pipe.rewrite, args=("running query",), kwargs={"task": "image"})
    first.start()
    assert held.running.wait(5)
    waiting = threading.Thread(target=pipe.rewrite, args=("waiting query",),
                               kwargs={"task": "image"})
    waiting.start()
    while pipe.batcher.depth < 1:
        time.sleep(0.005)
    try:
        if policy == "raw":
            res = pipe.rewrite("one more", task="image")
            p = res.prompts[0]
            assert (res.path, p.reason, p.prompt, p.attempts) == ("raw", "queue_full",
                                                                  "one more", 0)
            assert pipe.counters["fallback:queue_full"] == 1
        else:
            with pytest.raises(QueueFullError, match="service.max_queue"):
                pipe.rewrite("one more", task="image")
        assert pipe.batcher.stats.refused == 1
    finally:
        held.release.set()
        first.join(5)
        waiting.join(5)


def test_identical_misses_share_one_generation(make_pipeline):
    pipe = make_pipeline(FakeRewriter(delay_s=0.3))
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        pipe.rewrite("cozy cabin", task="image", length=3))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert [r.prompts[0].prompt for r in results] == ["cozy cabin w0"] * 3
    assert all(r.prompts[0].source == "model" for r in results)
    assert len(pipe.rewriter.calls) == 1 and pipe.batcher.stats.shared == 2


def test_cache_false_asks_the_model(make_pipeline):
    pipe = make_pipeline()
    assert pipe.rewrite("red dog", task="image").prompts[0].source == "model"
    assert pipe.rewrite("red dog", task="image").prompts[0].source == "cache"
    fresh = pipe.rewrite("red dog", task="image", cache=False)
    assert fresh.prompts[0].source == "model" and len(pipe.rewriter.calls) == 2
    res = pipe.search("red dog", task="image", k=2, cache=False)
    assert res.rewrite.prompts[0].source == "model" and len(pipe.rewriter.calls) == 3
