import threading
import time

import pytest

from plugin.pipeline import Pipeline
from plugin.rewrite import write_precomputed
from rewriters.errors import ConfigError

from .fakes import FakeRewriter


def test_rewrite_routes_by_intent_and_caches(make_pipeline):
    pipe = make_pipeline()
    res = pipe.rewrite("red dog sunset photo", length=4)
    # the fixture's intent model learnt: no flyer/poster/menu/sale word -> an image search
    assert res.intent == "image" and res.tasks == ["image"]
    assert max(res.probs, key=res.probs.get) == "image"
    assert abs(sum(res.probs.values()) - 1) < 1e-6
    assert [p.task for p in res.prompts] == res.tasks
    first = res.prompts[0]
    assert first.path == "rewrite" and first.source == "model" and first.attempts == 1
    assert first.prompt == "red dog sunset photo" and first.words == 4
    assert res.path == "rewrite" and res.model_version == "fake-v1"
    again = pipe.rewrite("  RED dog   sunset photo", length=4)
    assert all(p.source == "cache" and p.attempts == 0 for p in again.prompts)
    assert pipe.cache.hits == len(res.tasks) and pipe.cache.misses == len(res.tasks)


def test_cached_only_answers_hits_and_leaves_misses_untouched(make_pipeline):
    # the service's event-loop path: a miss queues nothing and counts nothing, a hit answers
    pipe = make_pipeline()
    assert pipe.rewrite("blue cat", "image", length=4, cached_only=True) is None
    assert pipe.batcher.stats.batches == 0
    assert (pipe.cache.hits, pipe.cache.misses) == (0, 0)
    pipe.rewrite("blue cat", "image", length=4)
    hit = pipe.rewrite("blue cat", "image", length=4, cached_only=True)
    assert hit.prompts[0].source == "cache" and pipe.batcher.stats.batches == 1
    assert (pipe.cache.hits, pipe.cache.misses) == (1, 1)
    assert pipe.rewrite("blue cat", "image", length=4, n=2, cached_only=True) is None


def test_task_override_and_commands(make_pipeline):
    pipe = make_pipeline(generation={"image_length": 7, "relevance": 2})
    res = pipe.rewrite("summer sale flyer", task="image")
    assert res.tasks == ["image"]
    assert res.prompts[0].command == {"task": "image", "length": 7, "relevance": 2}
    with pytest.raises(ConfigError, match="unknown task"):
        pipe.rewrite("x", task="video")
    with pytest.raises(ConfigError, match="out of range"):
        pipe.rewrite("x", length=80)
    with pytest.raises(ConfigError, match="empty"):
        pipe.rewrite("   ")


def test_fallback_chain_retry_then_raw(make_pipeline):
    # first call (greedy) gives a repeated word, the sampled retry a good prompt
    script = lambda q, c, call: "sauce sauce pasta" if call == 0 else "fresh pasta with basil"
    pipe = make_pipeline(FakeRewriter(script), pipeline={"retries": 1, "decoding": "greedy"})
    res = pipe.rewrite("pasta", task="image", length=4)
    p = res.prompts[0]
    assert p.path == "retry" and p.attempts == 2 and p.prompt == "fresh pasta with basil"
    assert p.rejected == ["repeated words"]
    assert pipe.rewriter.calls[0][1]["decoding"] == "greedy"
    assert pipe.rewriter.calls[1][1]["decoding"] == "sample"

    always_bad = make_pipeline(FakeRewriter(lambda q, c, call: "buy a knock-off now"),
                               pipeline={"retries": 2, "blocklist": ["knock-off"]})
    res = always_bad.rewrite("handbag", task="template", length=5)
    p = res.prompts[0]
    assert p.path == "raw" and p.prompt == "handbag" and p.reason == "rejected"
    assert p.attempts == 3 and len(p.rejected) == 3
    assert always_bad.counters["path:raw"] == 1 and always_bad.counters["fallback:rejected"] == 1


class HeldRewriter(FakeRewriter):
    """A model that answers only once the test lets it (``release``); ``answered`` is set when
    it has."""

    def __init__(self):
        super().__init__()
        self.started, self.release, self.answered = (threading.Event(), threading.Event(),
                                                     threading.Event())

    def rewrite_batch(self, items, n=1, **options):
        self.started.set()
        assert self.release.wait(10), "the test never released the model"
        out = super().rewrite_batch(items, n, **options)
        self.answered.set()
        return out


def test_deadline_fails_open_and_caches_the_late_answer(make_pipeline):
    model = HeldRewriter()
    pipe = make_pipeline(model)
    try:
        res = pipe.rewrite("cozy cabin", task="image", length=3, deadline_ms=200)
        # answered while the model was still held: the pipeline gave up at the deadline
        # instead of waiting for the model
        assert model.started.is_set() and not model.answered.is_set()
        assert res.path == "raw" and res.prompts[0].reason == "deadline"
        assert res.prompts[0].prompt == "cozy cabin"
    finally:
        model.release.set()  # the model finishes late: its prompt is kept for the next call
    assert model.answered.wait(10)
    give_up = time.monotonic() + 10  # the cache is filled just after the answer
    while not len(pipe.cache) and time.monotonic() < give_up:
        time.sleep(0.01)
    res = pipe.rewrite("cozy cabin", task="image", length=3, deadline_ms=200)
    assert res.path == "rewrite" and res.prompts[0].source == "cache"


def test_model_error_fails_open(make_pipeline):
    from rewriters.errors import ModelError

    class Broken(FakeRewriter):
        def rewrite_batch(self, items, **kw):
            raise ModelError("weights are gone")

    res = make_pipeline(Broken()).rewrite("x y", task="image")
    assert res.path == "raw" and res.prompts[0].reason == "model error: weights are gone"


def test_precomputed_rewrites_fill_the_cache(make_pipeline, tmp_path):
    pre = tmp_path / "pre.jsonl"
    write_precomputed(pre, [
        {"query": "Cozy Cabin", "task": "image", "length": 12, "relevance": 4,
         "model_version": "fake-v1", "prompts": ["a precomputed cabin prompt with snow pine smoke warm light and stars"]},
        {"query": "handbag", "task": "image", "length": 12, "relevance": 4,
         "model_version": "fake-v1", "prompts": ["a cheap knock-off bag in red leather with gold chain and big logo"]},
        {"query": "old", "task": "image", "length": 12, "relevance": 4,
         "model_version": "older-model", "prompts": ["stale"]},
    ])
    pipe = make_pipeline(pipeline={"precomputed": str(pre), "blocklist": ["knock-off"]})
    assert pipe.precomputed == {"loaded": 1, "stale": 1, "refused": 1, "rejected": 0}
    res = pipe.rewrite("cozy cabin", task="image")
    assert res.prompts[0].source == "precomputed"
    assert res.prompts[0].prompt.startswith("a precomputed cabin prompt")
    assert pipe.rewriter.calls == []
    assert len(pipe.cache) == 1  # the stale and the blocklisted rows were skipped


def test_search_fuses_raw_and_rewrite(make_pipeline):
    # the rewrite of "red thing" is "green beach photo": raw finds red images, rewrite green
    # beaches; fusion keeps both, with their ranks
    pipe = make_pipeline(FakeRewriter(lambda q, c, call: "green beach photo"))
    res = pipe.search("red thing", k=5, task="image", length=3)
    img = res.modality("image")
    assert img.fused and img.path == "rewrite" and img.prompt == "green beach photo"
    assert len(img.results) == 5
    assert any("raw" in r.ranks for r in img.results)
    assert any("rewrite" in r.ranks for r in img.results)
    top_rewrite = [r for r in img.results if r.ranks.get("rewrite") == 1]
    assert top_rewrite and top_rewrite[0].fields["title"] == "green beach photo"
    scores = [r.score for r in img.results]
    assert scores == sorted(scores, reverse=True)
    again = pipe.search("red thing", k=5, task="image", length=3)
    assert [r.id for r in again.modality("image").results] == [r.id for r in img.results]
    assert {"rewrite.intent", "rewrite.rewrite", "image.encode", "image.search",
            "total"} <= set(res.timings_ms)


def test_search_without_fusion_and_with_filters(make_pipeline):
    pipe = make_pipeline(FakeRewriter(lambda q, c, call: "green beach photo"))
    res = pipe.search("red thing", k=3, task="image", length=3, fusion=False,
                      filters={"image": {"colour": "blue"}})
    img = res.modality("image")
    assert not img.fused and all(set(r.ranks) == {"rewrite"} for r in img.results)
    assert all(r.fields["colour"] == "blue" for r in img.results)
    with pytest.raises(ConfigError, match="unknown filter section"):
        pipe.search("x", filters={"video": {}})


def test_search_templates_and_raw_path(make_pipeline, template_index):
    pipe = make_pipeline(FakeRewriter(lambda q, c, call: ""), pipeline={"retries": 0})
    res = pipe.search("modern poster", task="template", k=4)
    tpl = res.modality("template")
    assert tpl.path == "raw" and not tpl.fused  # only the raw list exists
    assert tpl.index_version == template_index.version
    assert tpl.results and all(set(r.ranks) == {"raw"} for r in tpl.results)
    assert all("title" in r.fields for r in tpl.results)


def test_missing_index_is_reported_not_raised(tmp_path, intent_detector):
    from .conftest import settings_for

    pipe = Pipeline(FakeRewriter(), intent_detector, settings_for(tmp_path))
    res = pipe.search("red dog", task="image")
    assert res.modality("image").error == "image index is not loaded"
    assert pipe.components()["image_index"]["loaded"] is False
    pipe.close()
