"""Micro-batching: concurrent rewrite requests share one forward batch.

Callers (request threads of the service, or the Python hook) ``submit`` their (query, command)
items and get a ``Future``. One worker thread owns the model: it takes the first waiting
request, keeps collecting for at most ``wait_ms`` or until ``max_batch`` items are queued, runs
the whole group in one ``rewrite_batch`` call, and resolves every future. Under load, batches
grow and throughput with them; an idle service answers after at most ``wait_ms``.

Requests with different generation options (decoding, n, strict length) cannot share a batch;
the worker groups what it collected by options.

The work is bounded and requests are isolated from each other:

- at most ``max_queue`` jobs wait; ``submit`` raises :class:`~plugin.errors.QueueFullError`
  beyond that (after dropping the expired ones);
- a job whose callers have all given up (its ``deadline_at`` has passed) is dropped unrun:
  its future is cancelled and ``stats.expired`` counts it;
- a job identical to one queued or running (same items, same options) shares that job's future
  (``stats.shared``) instead of being generated twice;
- when a batch call raises, each job of the batch is run again alone, so only the job that
  fails gets the exception.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from rewriters.commands import Command
from rewriters.errors import ConfigError
from rewriters.engines import Rewrite

from .errors import UDRL_ERRORS, QueueFullError

__all__ = ["BatchStats", "MicroBatcher"]

log = logging.getLogger(__name__)

Generate = Callable[..., list[list[Rewrite]]]  # rewrite_batch(items, **options)


@dataclass
class _Job:
    items: list[tuple[str, Command]]
    options: tuple[tuple[str, Any], ...]
    deadline_at: float | None = None  # time.monotonic() after which no caller waits; None: never
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        return tuple(self.items), self.options

    def expired(self, now: float) -> bool:
        return self.deadline_at is not None and now >= self.deadline_at


@dataclass
class BatchStats:
    """Counters of what the worker did (read without locking; approximate under load)."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)  # last 1,000 batch sizes
    expired: int = 0  # jobs dropped unrun: their callers' deadline had passed
    refused: int = 0  # submits refused because max_queue jobs were waiting
    shared: int = 0  # submits that joined an identical job queued or running
    isolated: int = 0  # failed batches whose jobs were re-run one by one

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.sizes.append(size)
        del self.sizes[:-1000]


class MicroBatcher:
    """Collects concurrent generation requests into batches for one model.

    Args:
        generate: the engine's ``rewrite_batch(items, **options)``.
        max_batch: most (query, command) items per model call (>= 1).
        wait_ms: how long the worker waits for more requests after the first (>= 0).
        max_queue: most jobs waiting for the worker (>= 1); more are refused.
    """

    def __init__(self, generate: Generate, max_batch: int = 16, wait_ms: float = 5.0,
                 max_queue: int = 64):
        if max_batch < 1:
            raise ConfigError(f"max_batch {max_batch} must be >= 1")
        if wait_ms < 0:
            raise ConfigError(f"wait_ms {wait_ms} must be >= 0")
        if max_queue < 1:
            raise ConfigError(f"max_queue {max_queue} must be >= 1")
        self.generate, self.max_batch, self.wait_s = generate, max_batch, wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._waiting: deque[_Job] = deque()
        self._inflight: dict[tuple, _Job] = {}  # key -> job queued or running
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="udrl-batcher", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Jobs waiting for the worker now."""
        return len(self._waiting)

    def submit(self, items: Sequence[tuple[str, Command]], *, deadline_at: float | None = None,
               **options: Any) -> Future:
        """Queue items; the future resolves to one list of Rewrites per item.

        Args:
            items: (query, command) pairs.
            deadline_at: ``time.monotonic()`` after which the caller no longer waits; the job
                is dropped unrun (future cancelled) when the worker reaches it later. None:
                the caller waits as long as it takes.
            options: generation options for ``generate``.
        Raises:
            QueueFullError: ``max_queue`` jobs are waiting.
        """
        job = _Job(list(items), tuple(sorted(options.items())), deadline_at)
        dropped: list[_Job] = []
        try:
            with self._cond:
                if self._closed:
                    raise ConfigError("the micro-batcher is closed")
                same = self._inflight.get(job.key)
                if same is not None:  # the same work is queued or running: wait for it
                    if same.deadline_at is not None:
                        same.deadline_at = (None if deadline_at is None
                                            else max(same.deadline_at, deadline_at))
                    self.stats.shared += 1
                    return same.future
                if len(self._waiting) >= self.max_queue:
                    dropped = self._drop_expired(time.monotonic())
                if len(self._waiting) >= self.max_queue:
                    self.stats.refused += 1
                    raise QueueFullError(
                        f"the rewrite queue is full: service.max_queue ({self.max_queue}) jobs "
                        "are waiting for the model; try again shortly")
                self._inflight[job.key] = job
                self._waiting.append(job)
                self._cond.notify()
            return job.future
        finally:
            self._cancel(dropped)

    def __call__(self, items: Sequence[tuple[str, Command]], **options: Any) -> list[list[Rewrite]]:
        """Submit and wait (no deadline)."""
        return self.submit(items, **options).result()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the queued work is done."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout)

    # -- worker --------------------------------------------------------------------------------

    def _drop_expired(self, now: float) -> list[_Job]:
        """Take the expired jobs out of the queue (call with the lock held; cancel them after)."""
        live, dropped = deque(), []
        for job in self._waiting:
            (dropped if job.expired(now) else live).append(job)
        self._waiting = live
        for job in dropped:
            self._forget(job)
        return dropped

    def _cancel(self, dropped: list[_Job]) -> None:
        for job in dropped:
            job.future.cancel()  # the caller already fell back; its late-answer hook sees this
        self.stats.expired += len(dropped)

    def _forget(self, job: _Job) -> None:
        if self._inflight.get(job.key) is job:
            del self._inflight[job.key]

    def _pop(self, until: float | None) -> _Job | None:
        """The next live job; None when none comes before ``until`` (monotonic; None: as long
        as it takes) or when closed with nothing waiting. Expired jobs on the way are dropped."""
        dropped: list[_Job] = []
        try:
            with self._cond:
                while True:
                    while self._waiting:
                        job = self._waiting.popleft()
                        if not job.expired(time.monotonic()):
                            return job
                        self._forget(job)
                        dropped.append(job)
                    left = None if until is None else until - time.monotonic()
                    if self._closed or (left is not None and left <= 0):
                        return None
                    self._cond.wait(left)
        finally:
            self._cancel(dropped)

    def _collect(self, first: _Job) -> list[_Job]:
        jobs, size = [first], len(first.items)
        until = time.monotonic() + self.wait_s
        while size < self.max_batch:
            job = self._pop(until)
            if job is None:
                break
            jobs.append(job)
            size += len(job.items)
        return jobs

    def _run(self) -> None:
        while True:
            first = self._pop(None)
            if first is None:  # closed and drained
                break
            groups: dict[tuple, list[_Job]] = {}
            for job in self._collect(first):
                if job.future.set_running_or_notify_cancel():
                    groups.setdefault(job.options, []).append(job)
                else:
                    self._done(job)
            for options, group in groups.items():
                self._run_group(options, group)

    def _run_group(self, options: tuple, group: list[_Job]) -> None:
        try:
            outs = self._generate(group, options)
        except Exception as e:
            if len(group) == 1:
                self._fail(group[0], e)
                return
            # one bad item must not fail its neighbours: run each job alone
            self.stats.isolated += 1
            log.warning("generation failed for a batch of %d jobs (%s); running each alone",
                        len(group), e)
            for job in group:
                try:
                    out = self._generate([job], options)[0]
                except Exception as e1:
                    self._fail(job, e1)
                else:
                    self._done(job, out)
            return
        for job, out in zip(group, outs):
            self._done(job, out)

    def _generate(self, group: list[_Job], options: tuple) -> list[list[list[Rewrite]]]:
        """One model call for ``group``; per job, its slice of the output."""
        items = [it for job in group for it in job.items]
        out = self.generate(items, **dict(options))
        self.stats.record(len(items))
        at, per_job = 0, []
        for job in group:
            per_job.append(out[at : at + len(job.items)])
            at += len(job.items)
        return per_job

    def _fail(self, job: _Job, error: Exception) -> None:
        if isinstance(error, UDRL_ERRORS):  # an expected refusal: no traceback
            log.warning("generation failed for %d item(s): %s", len(job.items), error)
        else:
            log.error("generation failed for %d item(s)", len(job.items), exc_info=error)
        with self._cond:
            self._forget(job)
        job.future.set_exception(error)

    def _done(self, job: _Job, out: list[list[Rewrite]] | None = None) -> None:
        with self._cond:
            self._forget(job)
        if out is not None:
            job.future.set_result(out)
