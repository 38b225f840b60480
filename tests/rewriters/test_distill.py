"""Distillation: examples written per query, resume without duplicates, failures counted."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

import pytest

from rewriters.commands import LENGTH_MAX, LENGTH_MIN
from rewriters.data import Example, read_examples
from rewriters.distill import DistillConfig, distill, plan_lengths, run_distill
from rewriters.errors import ConfigError, TeacherError
from rewriters.queries import QuerySpec, builtin_queries
from rewriters.builtin_teacher import BuiltinTeacher
from rewriters.teachers import TeacherReply

CFG = DistillConfig(prompts_per_task=2, concurrency=3, seed=1)  # 2 tasks x 2 = 4 per query


class FlakyTeacher:
    """Builtin prompts, but raises TeacherError for the queries in ``fail``."""

    def __init__(self, fail=(), name="flaky"):
        self.name, self.fail, self.inner = name, set(fail), BuiltinTeacher()
        self.asked: list[str] = []
        self.closed = False

    async def generate(self, query, intent, requests):
        self.asked.append(query)
        await asyncio.sleep(0)  # let other queries interleave, as a real endpoint would
        if query in self.fail:
            raise TeacherError(f"endpoint choked on {query!r}")
        return await self.inner.generate(query, intent, requests)

    async def aclose(self):
        self.closed = True


def test_distill_writes_every_prompt_with_teacher_and_intent(tmp_path):
    specs = builtin_queries(12, seed=2) + [QuerySpec("halloween party flyer", None)]
    out = tmp_path / "distilled.jsonl"
    report = asyncio.run(distill(specs, BuiltinTeacher(), out, CFG, progress=False))

    loaded = read_examples(out)
    assert loaded.rejects == []
    assert report.queries_total == report.queries_done == 13
    assert report.examples_written == len(loaded.examples) == 13 * 4
    assert report.queries_failed == report.examples_rejected == 0
    per_query = Counter((e.query, e.task) for e in loaded.examples)
    assert set(per_query.values()) == {2}
    want_intent = {s.query: s.intent or "template" for s in specs}  # unlabeled -> keyword rule
    for e in loaded.examples:
        assert e.teacher == "builtin"
        assert e.intent == want_intent[e.query]
        assert LENGTH_MIN <= e.words <= LENGTH_MAX


def test_lengths_are_stratified_over_the_run():
    cfg = DistillConfig(prompts_per_task=2, seed=3)
    span = LENGTH_MAX - LENGTH_MIN + 1  # 38 lengths
    plan = plan_lengths(span, cfg)  # 38 queries x 2 prompts = each length exactly twice
    for task in ("image", "template"):
        counts = Counter(n for lengths in plan[task] for n in lengths)
        assert counts == {n: 2 for n in range(LENGTH_MIN, LENGTH_MAX + 1)}
    assert plan == plan_lengths(span, cfg)
    assert plan != plan_lengths(span, DistillConfig(prompts_per_task=2, seed=4))
    narrow = plan_lengths(5, DistillConfig(length_min=5, length_max=6))
    assert {n for q in narrow["image"] for n in q} == {5, 6}


def test_stop_and_resume_gives_the_same_file_as_one_run(tmp_path):
    specs = builtin_queries(10, seed=5)
    once = tmp_path / "once.jsonl"
    run_distill(specs, BuiltinTeacher(), once, CFG, progress=False)

    resumed = tmp_path / "resumed.jsonl"
    first = run_distill(specs[:5], BuiltinTeacher(), resumed, CFG, progress=False)  # "stopped"
    second = run_distill(specs, BuiltinTeacher(), resumed, CFG, progress=False)
    third = run_distill(specs, BuiltinTeacher(), resumed, CFG, progress=False)

    assert (first.queries_done, second.queries_skipped_existing, second.queries_done) == (5, 5, 5)
    assert third.queries_done == third.examples_written == 0
    assert third.queries_skipped_existing == 10
    keys = [e.key() for e in read_examples(resumed).examples]
    assert len(keys) == len(set(keys)) == 40  # no duplicates
    # the length plan is made over all queries, so resuming changes nothing
    assert sorted(keys) == sorted(e.key() for e in read_examples(once).examples)


def test_resume_skips_per_teacher_and_case_insensitively(tmp_path):
    out = tmp_path / "d.jsonl"
    run_distill([QuerySpec("Coffee Shop", "both")], FlakyTeacher(name="other"), out, CFG,
                progress=False)
    report = run_distill([QuerySpec("coffee shop", "both"), QuerySpec("COFFEE shop", "both")],
                         BuiltinTeacher(), out, CFG, progress=False)
    assert report.queries_total == 1  # the repeat is asked once
    assert report.queries_done == 1  # another teacher's examples do not count as done
    again = run_distill([QuerySpec("coffee SHOP", "both")], BuiltinTeacher(), out, CFG,
                        progress=False)
    assert again.queries_skipped_existing == 1


def test_failing_queries_are_counted_and_the_rest_written(tmp_path, caplog):
    specs = builtin_queries(8, seed=6)
    bad = {specs[1].query, specs[4].query}
    out = tmp_path / "d.jsonl"
    with caplog.at_level(logging.WARNING, logger="rewriters.distill"):
        report = asyncio.run(distill(specs, FlakyTeacher(bad), out, CFG, progress=False))
    assert (report.queries_done, report.queries_failed) == (6, 2)
    assert {q for q, _ in report.failures} == bad
    assert all("endpoint choked" in reason for _, reason in report.failures)
    written = {e.query for e in read_examples(out).examples}
    assert written == {s.query for s in specs} - bad
    assert report.examples_written == 6 * 4
    assert specs[1].query in caplog.text
    # a re-run retries only the failed ones
    retry = asyncio.run(distill(specs, FlakyTeacher(), out, CFG, progress=False))
    assert (retry.queries_skipped_existing, retry.queries_done) == (6, 2)


def test_every_query_failing_raises(tmp_path):
    specs = builtin_queries(4, seed=7)
    out = tmp_path / "d.jsonl"
    with pytest.raises(TeacherError, match="all 4 queries failed"):
        asyncio.run(distill(specs, FlakyTeacher({s.query for s in specs}), out, CFG,
                            progress=False))
    assert not out.exists() or read_examples(out).examples == []


def test_a_dead_teacher_stops_early(tmp_path):
    specs = builtin_queries(20, seed=8)
    teacher = FlakyTeacher({s.query for s in specs})
    cfg = DistillConfig(prompts_per_task=1, concurrency=1, abort_after_failures=3)
    with pytest.raises(TeacherError, match="3 consecutive teacher failures"):
        asyncio.run(distill(specs, teacher, tmp_path / "d.jsonl", cfg, progress=False))
    assert len(teacher.asked) < 20


def test_corrupt_existing_line_is_reported_and_the_run_continues(tmp_path, caplog):
    out = tmp_path / "d.jsonl"
    kept = Example.make("yoga", "image", "serene yoga at sunrise", "builtin", "both")
    # line 1 valid, line 2 a write cut short by a crash (no newline at the end)
    out.write_text(json.dumps(kept.model_dump()) + '\n{"query": "cof', encoding="utf-8")
    specs = [QuerySpec("yoga", "both"), QuerySpec("coffee shop", "both"),
             QuerySpec("wedding menu card", "template")]
    with caplog.at_level(logging.WARNING):
        report = asyncio.run(distill(specs, BuiltinTeacher(), out, CFG, progress=False))
    assert report.existing_rejects == 1
    assert "d.jsonl:2" in caplog.text
    assert (report.queries_skipped_existing, report.queries_done) == (1, 2)
    loaded = read_examples(out)
    assert len(loaded.rejects) == 1 and loaded.rejects[0].line == 2  # nothing glued to it
    assert len(loaded.examples) == 1 + 2 * 4


def test_bad_prompts_are_rejected_with_a_reason(tmp_path):
    class Sloppy:
        name = "sloppy"

        async def generate(self, query, intent, requests):
            prompts = ["", "fine prompt here", "  ", "another fine prompt"]
            return TeacherReply(intent, list(zip([t for t, _ in requests], prompts)))

    out = tmp_path / "d.jsonl"
    report = asyncio.run(distill([QuerySpec("yoga", "both")], Sloppy(), out, CFG,
                                 progress=False))
    assert (report.examples_written, report.examples_rejected) == (2, 2)
    assert all("empty" in reason for _, reason in report.rejections)
    assert report.queries_done == 1


def test_run_distill_closes_the_teacher(tmp_path):
    teacher = FlakyTeacher()
    run_distill([QuerySpec("yoga", "both")], teacher, tmp_path / "d.jsonl", CFG, progress=False)
    assert teacher.closed


@pytest.mark.parametrize("kw, match", [
    ({"prompts_per_task": 0}, "prompts_per_task"),
    ({"tasks": ("image", "video")}, "unknown task 'video'"),
    ({"tasks": ()}, "non-empty"),
    ({"length_min": 2}, "length range"),
    ({"length_min": 20, "length_max": 10}, "length range"),
    ({"concurrency": 0}, "concurrency"),
])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        DistillConfig(**kw)
