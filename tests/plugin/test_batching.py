"""The micro-batcher's bounds and isolation: a failing job fails alone, jobs whose caller gave up
are dropped unrun, the queue holds at most max_queue jobs, identical jobs share one future."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from plugin.batching import MicroBatcher
from plugin.errors import QueueFullError

from .fakes import FakeRewriter, command


class Gate:
    """A ``rewrite_batch`` that holds each call until ``release`` (so jobs pile up behind it)."""

    def __init__(self):
        self.fake = FakeRewriter()
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, items, **options):
        self.running.set()
        assert self.release.wait(10)
        return self.fake.rewrite_batch(items, **options)

    def queries(self) -> list[str]:
        return [q for items, _ in self.fake.calls for q, _ in items]


@pytest.fixture
def gated():
    """(gate, batcher) with the worker busy on a first job ("busy") until gate.release."""
    made = []

    def make(**kw):
        gate = Gate()
        batcher = MicroBatcher(gate, wait_ms=0, **kw)
        busy = batcher.submit([("busy", command())])
        assert gate.running.wait(5)
        made.append((gate, batcher))
        return gate, batcher, busy

    yield make
    for gate, batcher in made:
        gate.release.set()
        batcher.close()


def test_a_failing_job_fails_alone_and_its_neighbours_get_their_answers():
    def generate(items, **kw):  # like an engine refusing a batch with one bad input in it
        calls.append([q for q, _ in items])
        if any(q == "bad" for q, _ in items):
            raise ValueError("query 'bad' does not fit")
        return FakeRewriter().rewrite_batch(items, **kw)

    calls: list[list[str]] = []
    batcher = MicroBatcher(generate, max_batch=8, wait_ms=200)
    futures = {q: batcher.submit([(q, command())]) for q in ("a", "bad", "c")}
    assert futures["a"].result(5)[0][0].prompt.startswith("a")
    assert futures["c"].result(5)[0][0].prompt.startswith("c")
    with pytest.raises(ValueError, match="'bad' does not fit"):
        futures["bad"].result(5)
    batcher.close()
    assert calls[0] == ["a", "bad", "c"]  # they did share the batch that failed
    assert sorted(calls[1:]) == [["a"], ["bad"], ["c"]]  # then each ran alone
    assert batcher.stats.isolated == 1 and batcher.stats.items == 2  # a and c answered


def test_a_job_whose_caller_gave_up_is_dropped_unrun(gated):
    gate, batcher, busy = gated()
    late = batcher.submit([("late", command())], deadline_at=time.monotonic() + 0.05)
    patient = batcher.submit([("patient", command())])  # no deadline: waits as long as it takes
    time.sleep(0.1)  # late's caller has given up by now
    gate.release.set()
    assert busy.result(5) and patient.result(5)[0][0].prompt.startswith("patient")
    with pytest.raises(CancelledError):
        late.result(5)
    assert "late" not in gate.queries()
    assert batcher.stats.expired == 1


def test_the_queue_is_bounded_and_expired_jobs_make_room(gated):
    gate, batcher, _ = gated(max_queue=2)
    soon = batcher.submit([("soon", command())], deadline_at=time.monotonic() + 0.05)
    batcher.submit([("b", command())])
    assert batcher.depth == 2
    with pytest.raises(QueueFullError, match=r"service\.max_queue \(2\) jobs are waiting"):
        batcher.submit([("c", command())])
    assert batcher.stats.refused == 1
    time.sleep(0.1)  # "soon" expires: its slot is freed for the next job
    d = batcher.submit([("d", command())])
    assert soon.cancelled() and batcher.stats.expired == 1 and batcher.depth == 2
    gate.release.set()
    assert d.result(5)[0][0].prompt.startswith("d")
    assert "c" not in gate.queries() and "soon" not in gate.queries()


def test_identical_jobs_share_one_future(gated):
    gate, batcher, _ = gated()
    items = [("same", command()), ("same", command("template"))]
    first = batcher.submit(items, decoding="greedy", deadline_at=time.monotonic() + 0.05)
    again = batcher.submit(items, decoding="greedy")  # waits longer: the shared job is kept
    other = batcher.submit(items, decoding="sample")  # other options: its own job
    assert again is first and other is not first
    assert batcher.stats.shared == 1
    time.sleep(0.1)  # past the first caller's deadline, not the second's
    gate.release.set()
    assert len(first.result(5)) == 2 and other.result(5)
    assert gate.queries().count("same") == 4  # two jobs of two items, not three
    assert batcher.stats.expired == 0
    # once answered, the job is no longer in flight: the same items are generated anew
    fresh = batcher.submit(items, decoding="greedy")
    assert fresh is not first and fresh.result(5)


def test_close_answers_the_jobs_already_queued(gated):
    gate, batcher, _ = gated()
    queued = batcher.submit([("queued", command())])
    threading.Timer(0.05, gate.release.set).start()
    batcher.close()
    assert queued.done() and queued.result()[0][0].prompt.startswith("queued")
