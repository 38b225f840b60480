"""The rewrite stage of one query: cache → micro-batcher → checks → sampled retry → raw query,
all within the request's deadline.

::

    (query, commands) ─► RewriteCache ─ hit ──────────────────────────► prompt (cache)
                              │ miss (or the request asked "cache": false)
                              ▼
                         MicroBatcher ─► check_prompt ─ ok ───────────► prompt (model)
                              │ queue full, deadline, model error, all refused
                              ▼
                         the raw query (path "raw", reason says why)

The stage never raises for a slow, busy or failing model (it fails open), except that a full
queue raises :class:`~plugin.errors.QueueFullError` when ``service.queue_full`` is ``"503"``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from rewriters.commands import Command

from .batching import MicroBatcher
from .config import Settings
from .errors import UDRL_ERRORS, QueueFullError
from .query import Query
from .rewrite import PromptOutcome, RewriteCache, check_prompt

__all__ = ["PromptStage", "raw_outcome", "command_dict", "count_paths"]

log = logging.getLogger(__name__)


def command_dict(cmd: Command) -> dict[str, Any]:
    return {"task": cmd.task, "length": cmd.length, "relevance": cmd.relevance}


def raw_outcome(query: str, cmd: Command, attempts: int, rejected: list[str],
                reason: str) -> PromptOutcome:
    """The raw query (its checked text) as the prompt (path ``raw``), with why."""
    return PromptOutcome(cmd.task, command_dict(cmd), query, len(query.split()), "raw", "none",
                         attempts, rejected, reason, [])


@dataclass
class PromptStage:
    """The prompts of one query's commands, from the cache or the model (one pipeline's parts).

    Args:
        batcher: feeds the engine.
        cache: accepted prompts of this model version.
        settings: pipeline (checks, retries, decoding), generation and service (queue_full).
        version: the engine's model version (the cache key).
    """

    batcher: MicroBatcher
    cache: RewriteCache
    settings: Settings
    version: str

    def prompts(self, query: Query, commands: list[Command], n: int, deadline_at: float,
                seed: int | None = None, use_cache: bool = True,
                cached_only: bool = False) -> list[PromptOutcome] | None:
        """One outcome per command.

        Args:
            query: the checked query (the cache reads its key, the model its text).
            n: prompts per command.
            deadline_at: ``time.monotonic()`` by which the model must have answered; nothing is
                queued when it has passed.
            seed: seeds the sampled retries (reproducible offline runs).
            use_cache: False reads no cached prompt (the model's answer is still stored).
            cached_only: return None, queueing nothing, unless every command is cached.
        Raises:
            QueueFullError: the queue is full and ``service.queue_full`` is ``"503"``.
        """
        if cached_only and not (use_cache and all(
                (hit := self.cache.get(query, cmd, self.version, count=False)) is not None
                and len(hit[0]) >= n for cmd in commands)):
            return None  # looked without counting: the full call counts its own lookups
        p, g = self.settings.pipeline, self.settings.generation
        out: dict[int, PromptOutcome] = {}
        pending: list[int] = []
        for i, cmd in enumerate(commands):
            hit = self.cache.get(query, cmd, self.version) if use_cache else None
            if hit is not None and len(hit[0]) >= n:
                prompts, stored = hit
                source = "precomputed" if stored == "precomputed" else "cache"
                out[i] = PromptOutcome(cmd.task, command_dict(cmd), prompts[0],
                                       len(prompts[0].split()), "rewrite", source, 0, [], None,
                                       prompts[1:n])
            else:
                pending.append(i)
        if pending and cached_only:
            return None
        rejected: dict[int, list[str]] = {i: [] for i in pending}
        attempts = 0

        def fall_back(reason: str) -> list[PromptOutcome]:
            for i in pending:
                out[i] = raw_outcome(query.text, commands[i], attempts, rejected[i], reason)
            return [out[i] for i in range(len(commands))]

        while pending and attempts <= p.retries:
            if deadline_at - time.monotonic() <= 0:  # no time left: queue nothing
                return fall_back("deadline")
            first = attempts == 0 and not (p.decoding == "greedy" and n > 1)
            opts = dict(n=n, strict_length=g.strict_length,
                        decoding=p.decoding if first else "sample",
                        temperature=g.temperature, top_p=g.top_p, num_beams=max(g.num_beams, n))
            if seed is not None and opts["decoding"] == "sample":  # reproducible retries
                opts["seed"] = seed + attempts
            items = [(query.text, commands[i]) for i in pending]
            try:
                future = self.batcher.submit(items, deadline_at=deadline_at, **opts)
            except QueueFullError:
                if self.settings.service.queue_full == "503":
                    raise
                return fall_back("queue_full")
            attempts += 1
            try:
                results = future.result(timeout=max(0.0, deadline_at - time.monotonic()))
            except (FutureTimeout, CancelledError):  # cancelled: dropped unrun, too late
                future.add_done_callback(self._cache_late(query, items, n))
                return fall_back("deadline")
            except Exception as e:  # a failing model fails open, like a slow one
                if not isinstance(e, UDRL_ERRORS):
                    log.exception("rewriter failed; falling back to the raw query")
                return fall_back(f"model error: {e}")
            still = []
            for i, rewrites in zip(pending, results):
                good = []
                for r in rewrites:
                    problems = check_prompt(r, p.blocklist, p.max_over_length)
                    if problems:
                        rejected[i].append("; ".join(problems))
                    else:
                        good.append(r.prompt)
                good = list(dict.fromkeys(good))  # sampled duplicates are one prompt
                if good:
                    self.cache.put(query, commands[i], self.version, good[:n])
                    out[i] = PromptOutcome(
                        commands[i].task, command_dict(commands[i]), good[0],
                        len(good[0].split()), "rewrite" if attempts == 1 else "retry", "model",
                        attempts, rejected[i], None, good[1:n])
                else:
                    still.append(i)
            pending = still
        return fall_back("rejected")

    def _cache_late(self, query: Query, items, n: int):
        """When a timed-out generation finishes, keep its accepted prompts for the next call."""
        p = self.settings.pipeline

        def done(future) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            for (_, cmd), rewrites in zip(items, future.result()):
                good = [r.prompt for r in rewrites
                        if not check_prompt(r, p.blocklist, p.max_over_length)]
                if good:
                    self.cache.put(query, cmd, self.version, good[:n])

        return done


def count_paths(counters: Counter, outcomes: list[PromptOutcome], n: int) -> None:
    """Fill in requested/returned and count each outcome's path and fallback reason."""
    for o in outcomes:
        o.requested, o.returned = n, 1 + len(o.alternatives)
        counters[f"path:{o.path}"] += 1
        if o.reason:
            counters[f"fallback:{o.reason.split(':')[0]}"] += 1
