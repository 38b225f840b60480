import threading

import pytest

from plugin.batching import MicroBatcher
from plugin.query import Query
from plugin.rewrite import (RewriteCache, check_prompt, read_precomputed, write_precomputed)
from rewriters.errors import ConfigError, DataError
from rewriters.engines import Rewrite

from .fakes import FakeRewriter, command


def rw(text, length=5, problems=()):
    return Rewrite(text, len(text.split()), command(length=length), not problems, problems)


def test_check_prompt_accepts_a_good_prompt():
    assert check_prompt(rw("cozy cabin in snow, warm light")) == []


@pytest.mark.parametrize("text,length,blocklist,expect", [
    ("", 5, (), "empty output"),
    ("sauce sauce pasta", 5, (), "repeated words"),
    ("art deco, Art deco poster", 5, (), None),  # same words, not back to back: fine
    ("one two three four five six seven eight nine", 5, (), "over length (9 words for 5)"),
    ("cabin <|len=12|> snow", 5, (), "leaked command token"),
    ("a cheap Knock-Off bag", 5, ("knock-off",), "blocklisted term 'knock-off'"),
    ("knockoffs are fine", 5, ("knock-off",), None),
])
def test_check_prompt_rejects(text, length, blocklist, expect):
    problems = check_prompt(rw(text, length), blocklist, max_over=3)
    assert (expect in problems) if expect else problems == []


def test_check_prompt_keeps_rewriter_problems_but_not_truncation():
    assert check_prompt(rw("a b c", problems=("no end token within the token budget",))) == [
        "no end token within the token budget"]
    assert check_prompt(rw("a b c", problems=("truncated to CLIP's 77-token window",))) == []


def test_cache_lru_and_counters():
    cache = RewriteCache(max_entries=2)
    c = command()
    assert cache.get(Query("Cozy  Cabin"), c, "v1") is None
    cache.put(Query("cozy cabin"), c, "v1", ["p1"])
    assert cache.get(Query("  COZY cabin "), c, "v1") == (["p1"], "model")  # Query.key
    assert cache.get(Query("cozy cabin"), c, "v2") is None  # another model version
    assert cache.get(Query("cozy cabin"), command(length=6), "v1") is None  # another command
    cache.put(Query("b"), c, "v1", ["p2"])
    cache.get(Query("cozy cabin"), c, "v1")  # touch: "b" is now the oldest
    cache.put(Query("c"), c, "v1", ["p3"])
    assert cache.get(Query("b"), c, "v1") is None and cache.get(Query("c"), c, "v1") is not None
    assert cache.stats() == {"entries": 2, "max_entries": 2, "hits": 3, "misses": 4}
    with pytest.raises(ConfigError):
        RewriteCache(-1)


def test_precomputed_round_trip_and_bad_lines(tmp_path):
    path = tmp_path / "pre.jsonl"
    rows = [{"query": "q", "task": "image", "length": 5, "relevance": 4,
             "model_version": "v", "prompts": ["a b c d e"]}]
    assert write_precomputed(path, rows) == 1
    with path.open("a") as f:
        f.write('{"query": "q", "task": "video", "length": 5, "relevance": 4, '
                '"model_version": "v", "prompts": ["x"]}\nnot json\n')
    got, rejects = read_precomputed(path)
    assert got == rows
    assert len(rejects) == 2 and rejects[0].startswith(f"{path}:2:") and ":3:" in rejects[1]
    with pytest.raises(DataError, match="cannot read"):
        read_precomputed(tmp_path / "missing.jsonl")


def test_micro_batcher_groups_concurrent_requests():
    fake = FakeRewriter(delay_s=0.05)
    batcher = MicroBatcher(fake.rewrite_batch, max_batch=32, wait_ms=30)
    results = {}

    def ask(i):
        results[i] = batcher(( (f"query {i}", command()), ), decoding="greedy")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert sorted(results) == list(range(8))
    for i, out in results.items():  # every caller gets its own answer back
        assert out[0][0].prompt.startswith(f"query {i}")
    assert batcher.stats.items == 8
    assert batcher.stats.batches < 8 and batcher.stats.largest >= 2


def test_micro_batcher_separates_options_and_propagates_errors():
    fake = FakeRewriter()
    batcher = MicroBatcher(fake.rewrite_batch, max_batch=8, wait_ms=20)
    f1 = batcher.submit([("a", command())], decoding="greedy")
    f2 = batcher.submit([("b", command())], decoding="sample")
    assert f1.result()[0][0].prompt.startswith("a") and f2.result()[0][0].prompt.startswith("b")
    assert {c[1]["decoding"] for c in fake.calls} == {"greedy", "sample"}
    assert all(len(c[0]) == 1 for c in fake.calls)

    def boom(items, **kw):
        raise RuntimeError("model crashed")

    bad = MicroBatcher(boom, wait_ms=0)
    with pytest.raises(RuntimeError, match="model crashed"):
        bad.submit([("a", command())]).result(timeout=5)
    bad.close()
    batcher.close()
    with pytest.raises(ConfigError, match="closed"):
        batcher.submit([("a", command())])
    idle = MicroBatcher(fake.rewrite_batch, wait_ms=0)
    idle.close()  # the idle worker wakes on close and ends (else close waits out its timeout)
    assert not idle._worker.is_alive()


def test_check_prompt_rejects_punctuation_and_short_prompts():
    assert "no letters or digits" in check_prompt(rw(",,, ..", length=3))
    assert "under length (2 words for 12)" in check_prompt(rw("cozy cabin", length=12))
