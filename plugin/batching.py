"""Micro-batching: concurrent rewrite requests share one forward batch.

Callers (request threads of the service, or the Python hook) ``submit`` their (query, command)
items and get a ``Future``. One worker thread owns the model: it takes the first waiting
request, keeps collecting for at most ``wait_ms`` or until ``max_batch`` items are queued, runs
the whole group in one ``rewrite_batch`` call, and resolves every future. Under load, batches
grow and throughput with them; an idle service answers after at most ``wait_ms``.

Requests with different generation options (decoding, n, strict length) cannot share a batch;
the worker groups what it collected by options.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from rewriters.commands import Command
from rewriters.errors import ConfigError
from rewriters.generate import Rewrite

__all__ = ["BatchStats", "MicroBatcher"]

log = logging.getLogger(__name__)

Generate = Callable[..., list[list[Rewrite]]]  # rewrite_batch(items, **options)


@dataclass
class _Job:
    items: list[tuple[str, Command]]
    options: tuple[tuple[str, Any], ...]
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """Counters of what the worker did (read without locking; approximate under load)."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)  # last 1,000 batch sizes

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
    """

    def __init__(self, generate: Generate, max_batch: int = 16, wait_ms: float = 5.0):
        if max_batch < 1:
            raise ConfigError(f"max_batch {max_batch} must be >= 1")
        if wait_ms < 0:
            raise ConfigError(f"wait_ms {wait_ms} must be >= 0")
        self.generate, self.max_batch, self.wait_s = generate, max_batch, wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="udrl-batcher", daemon=True)
        self._worker.start()

    def submit(self, items: Sequence[tuple[str, Command]], **options: Any) -> Future:
        """Queue items; the future resolves to one list of Rewrites per item."""
        if self._closed:
            raise ConfigError("the micro-batcher is closed")
        job = _Job(list(items), tuple(sorted(options.items())))
        self._queue.put(job)
        return job.future

    def __call__(self, items: Sequence[tuple[str, Command]], **options: Any) -> list[list[Rewrite]]:
        """Submit and wait (no deadline)."""
        return self.submit(items, **options).result()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the queued work is done."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, size = [first], len(first.items)
        deadline = time.monotonic() + self.wait_s
        while size < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            size += len(job.items)
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs, stop = self._collect(first)
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                if job.future.set_running_or_notify_cancel():
                    groups.setdefault(job.options, []).append(job)
            for options, group in groups.items():
                self._run_group(options, group)

    def _run_group(self, options: tuple, group: list[_Job]) -> None:
        items = [it for job in group for it in job.items]
        try:
            out = self.generate(items, **dict(options))
        except Exception as e:  # every waiting caller learns about the failure
            log.exception("generation failed for a batch of %d", len(items))
            for job in group:
                job.future.set_exception(e)
            return
        self.stats.record(len(items))
        at = 0
        for job in group:
            job.future.set_result(out[at : at + len(job.items)])
            at += len(job.items)
