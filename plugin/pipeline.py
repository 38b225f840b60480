"""The search pipeline: query → intent → UDRL rewrite → image and/or template search → fusion.

::

    query ─► IntentDetector ─► tasks ─► commands (task, length, relevance)
                                            │
                 RewriteCache ◄─────────────┤ miss
                                            ▼
                                  MicroBatcher ─► OnnxRewriter / FastRewriter / Rewriter
                                            │ check_prompt: accept | retry (sample) | raw query
                                            ▼
          image prompt ─► CLIP text encoder ─► ImageIndex (FAISS) ─┐
          template prompt ─► TemplateIndex (tantivy / Elasticsearch) ├─► weighted RRF ─► results
          raw query ─────────► the same indexes ─────────────────────┤   (plugin.channels)
          query embedding ───► the template index's dense channel ───┘

Every result says which lists it came from (rank in each channel's list), every modality which
channels were used with what weight, every prompt which path it took, and the response carries
the index versions and timings per stage.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any

from indexers.errors import IndexStoreError
from rewriters.commands import TASKS, Command
from rewriters.errors import ConfigError, UdrlError
from rewriters.generate import Rewrite

from .batching import MicroBatcher
from .config import Settings
from .channels import MODES, ModalityResult, ResultItem, search_images, search_templates
from .fusion import FusionWeights
from .fusion_fit import fusion_weights
from .rewrite_fit import read_rewrite_fit
from .rewrite import PATHS, PromptOutcome, RewriteCache, check_prompt, read_precomputed

__all__ = ["Pipeline", "RewriteResult", "SearchResult", "ModalityResult", "ResultItem",
           "MAX_QUERY_CHARS", "RETRIEVAL_MODES"]

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 512  # longer queries are refused (they are not search queries)
RETRIEVAL_MODES = tuple(MODES)  # raw, dense, rewrite, hybrid (raw + dense), fused (all)


@dataclass
class RewriteResult:
    """What the rewrite hook decided for one query."""

    query: str
    intent: str  # image | template | both
    probs: dict[str, float]  # calibrated intent probabilities
    tasks: list[str]  # the tasks the query was routed to
    prompts: list[PromptOutcome]  # one per task
    path: str  # the worst path of the prompts: rewrite | retry | raw
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    def prompt_for(self, task: str) -> PromptOutcome | None:
        return next((p for p in self.prompts if p.task == task), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    query: str
    rewrite: RewriteResult
    modalities: list[ModalityResult]
    timings_ms: dict[str, float] = field(default_factory=dict)

    def modality(self, task: str) -> ModalityResult | None:
        return next((m for m in self.modalities if m.task == task), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_query(query: Any) -> str:
    if not isinstance(query, str):
        raise ConfigError(f"query must be a string, got {type(query).__name__}")
    q = " ".join(query.split())
    if not q:
        raise ConfigError("query is empty; pass some search text")
    if len(q) > MAX_QUERY_CHARS:
        raise ConfigError(f"query has {len(q)} characters; the limit is {MAX_QUERY_CHARS}")
    return q


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


class Pipeline:
    """Rewrites queries and searches the indexes; thread-safe for concurrent callers.

    Args:
        rewriter: an engine with ``rewrite_batch`` and ``version`` (``Rewriter`` or the fast one).
        intent: an ``IntentDetector``; None routes every query to both tasks.
        settings: generation, pipeline and service settings.
        image_index, image_encoder: FAISS index and the CLIP encoder it was built with.
        template_index: a ``TemplateIndex`` (tantivy or Elasticsearch).
        text_encoder: the sentence encoder of the dense channel; it also measures how close a
            rewrite stays to the query (None: no dense channel, no similarity floor).
        batcher: the micro-batcher feeding ``rewriter`` (one is made when None).
        load_precomputed: fill the cache from ``settings.precomputed_path`` when it exists.
    """

    def __init__(self, rewriter, intent, settings: Settings, *, image_index=None,
                 image_encoder=None, template_index=None, text_encoder=None,
                 batcher: MicroBatcher | None = None, load_precomputed: bool = True):
        if (image_index is None) != (image_encoder is None):
            raise ConfigError("an image index needs its image encoder (and the other way round)")
        self.rewriter, self.intent, self.settings = rewriter, intent, settings
        self.image_index, self.image_encoder = image_index, image_encoder
        self.template_index, self.text_encoder = template_index, text_encoder
        sv = settings.service
        self.batcher = batcher or MicroBatcher(rewriter.rewrite_batch, sv.max_batch,
                                               sv.batch_wait_ms)
        self.cache = RewriteCache(settings.pipeline.cache_size)
        # the rewrite channel's weight and floor fitted after training (plugin.rewrite_fit)
        self.rewrite_fit = read_rewrite_fit(settings.model_dir, self.model_version)
        self.counters: Counter[str] = Counter()  # path:<p>, fallback:<reason>
        self.load_errors: dict[str, str] = {}  # component -> why it is not loaded (/readyz)
        pre = settings.precomputed_path
        self.precomputed: dict[str, int] | None = None
        if load_precomputed and (settings.pipeline.precomputed is not None or pre.is_file()):
            self.precomputed = self.load_precomputed(pre)

    @property
    def model_version(self) -> str:
        return self.rewriter.version

    # -- rewriting -----------------------------------------------------------------------------

    def load_precomputed(self, path) -> dict[str, int]:
        """Load a `udrl rewrite-batch` file into the cache; rows of another model are skipped."""
        rows, rejects = read_precomputed(path)
        for r in rejects:
            log.warning("precomputed rewrites: %s", r)
        loaded = stale = refused = 0
        for row in rows:
            if row["model_version"] != self.model_version:
                stale += 1
                continue
            cmd = Command(row["task"], int(row["length"]), int(row["relevance"]))
            p = self.settings.pipeline
            ok = [t for t in row["prompts"]  # today's checks (a blocklist may have grown)
                  if not check_prompt(Rewrite(t, len(t.split()), cmd, True), p.blocklist,
                                      p.max_over_length)]
            if not ok:
                refused += 1
                continue
            self.cache.put(row["query"], cmd, self.model_version, ok, "precomputed")
            loaded += 1
        if stale:
            log.warning("precomputed rewrites: %d rows were made by another model version and "
                        "are not used; re-run `udrl rewrite-batch`", stale)
        if refused:
            log.warning("precomputed rewrites: %d rows fail today's prompt checks and are not "
                        "used", refused)
        return {"loaded": loaded, "stale": stale, "refused": refused, "rejected": len(rejects)}

    def command(self, task: str, length: int | None = None, relevance: int | None = None) -> Command:
        """The command for a task, defaults from the generation settings."""
        g = self.settings.generation
        if length is None:
            length = g.image_length if task == "image" else g.template_length
        return Command(task, length, g.relevance if relevance is None else relevance)

    def rewrite(self, query: str, task: str | None = None, length: int | None = None,
                relevance: int | None = None, n: int = 1,
                deadline_ms: float | None = None, seed: int | None = None) -> RewriteResult:
        """Detect intent and rewrite the query for each routed task (or for ``task`` only).

        Never raises for a slow or failing model: such prompts fall back to the raw query.
        ``seed`` makes the sampled retries reproducible (offline evaluation uses it).

        Raises:
            ConfigError: bad query, task, length, relevance or n.
        """
        t0 = time.perf_counter()
        q = _check_query(query)
        if not 1 <= n <= 8:
            raise ConfigError(f"n {n} is out of range 1-8")
        if task is not None and task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
        timings: dict[str, float] = {}
        t = time.perf_counter()
        if self.intent is not None:
            pred = self.intent.predict(q)
            intent, probs, routed = pred.intent, pred.probs, list(pred.routed)
        else:
            intent, probs, routed = "both", {}, list(TASKS)
        timings["intent"] = _ms(t)
        tasks = [task] if task else routed
        commands = [self.command(tk, length, relevance) for tk in tasks]
        t = time.perf_counter()
        deadline = self.settings.service.deadline_ms if deadline_ms is None else deadline_ms
        prompts = self._prompts(q, commands, n, deadline / 1000.0, seed)
        timings["rewrite"] = _ms(t)
        path = max((p.path for p in prompts), key=PATHS.index, default="raw")
        for p in prompts:
            p.requested, p.returned = n, 1 + len(p.alternatives)
            self.counters[f"path:{p.path}"] += 1
            if p.reason:
                self.counters[f"fallback:{p.reason.split(':')[0]}"] += 1
        timings["total"] = _ms(t0)
        return RewriteResult(q, intent, probs, tasks, prompts, path, self.model_version, timings)

    def _prompts(self, query: str, commands: list[Command], n: int, budget_s: float,
                 seed: int | None = None) -> list[PromptOutcome]:
        p, g = self.settings.pipeline, self.settings.generation
        version = self.model_version
        out: dict[int, PromptOutcome] = {}
        pending: list[int] = []
        for i, cmd in enumerate(commands):
            hit = self.cache.get(query, cmd, version)
            if hit is not None and len(hit[0]) >= n:
                prompts, stored = hit
                source = "precomputed" if stored == "precomputed" else "cache"
                out[i] = PromptOutcome(cmd.task, _cmd(cmd), prompts[0], len(prompts[0].split()),
                                       "rewrite", source, 0, alternatives=prompts[1:n])
            else:
                pending.append(i)
        rejected: dict[int, list[str]] = {i: [] for i in pending}
        attempts = 0
        deadline_at = time.monotonic() + budget_s
        while pending and attempts <= p.retries:
            first = attempts == 0 and not (p.decoding == "greedy" and n > 1)
            opts = dict(n=n, strict_length=g.strict_length,
                        decoding=p.decoding if first else "sample",
                        temperature=g.temperature, top_p=g.top_p, num_beams=max(g.num_beams, n))
            if seed is not None and opts["decoding"] == "sample":  # reproducible retries
                opts["seed"] = seed + attempts
            items = [(query, commands[i]) for i in pending]
            future = self.batcher.submit(items, **opts)
            attempts += 1
            try:
                results = future.result(timeout=max(0.0, deadline_at - time.monotonic()))
            except FutureTimeout:
                future.add_done_callback(self._cache_late(query, items, n))
                for i in pending:
                    out[i] = self._raw(query, commands[i], attempts, rejected[i], "deadline")
                return [out[i] for i in range(len(commands))]
            except Exception as e:  # a failing model fails open, like a slow one
                if not isinstance(e, UdrlError):
                    log.exception("rewriter failed; falling back to the raw query")
                for i in pending:
                    out[i] = self._raw(query, commands[i], attempts, rejected[i], f"model error: {e}")
                return [out[i] for i in range(len(commands))]
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
                    self.cache.put(query, commands[i], version, good[:n])
                    out[i] = PromptOutcome(
                        commands[i].task, _cmd(commands[i]), good[0], len(good[0].split()),
                        "rewrite" if attempts == 1 else "retry", "model", attempts,
                        rejected[i], alternatives=good[1:n])
                else:
                    still.append(i)
            pending = still
        for i in pending:
            out[i] = self._raw(query, commands[i], attempts, rejected[i], "rejected")
        return [out[i] for i in range(len(commands))]

    def _raw(self, query, cmd, attempts, rejected, reason) -> PromptOutcome:
        return PromptOutcome(cmd.task, _cmd(cmd), query, len(query.split()), "raw", "none",
                             attempts, rejected, reason)

    def _cache_late(self, query: str, items, n: int):
        """When a timed-out generation finishes, keep its accepted prompts for the next call."""
        p = self.settings.pipeline

        def done(future) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            for (_, cmd), rewrites in zip(items, future.result()):
                good = [r.prompt for r in rewrites
                        if not check_prompt(r, p.blocklist, p.max_over_length)]
                if good:
                    self.cache.put(query, cmd, self.model_version, good[:n])

        return done

    # -- search --------------------------------------------------------------------------------

    def search(self, query: str, k: int | None = None, filters: dict[str, dict] | None = None,
               task: str | None = None, length: int | None = None,
               relevance: int | None = None, fusion: bool | None = None,
               deadline_ms: float | None = None, lists: bool = False) -> SearchResult:
        """Rewrite the query, search every routed modality, fuse raw and rewritten results.

        Args:
            k: results per modality (default from settings).
            filters: per modality, ``{"image": {...metadata...}, "template": {"category": ..,
                "tags": [..]}}``.
            task, length, relevance: override the routing / the commands.
            fusion: override ``pipeline.fusion``.
            lists: also return each channel's own top k (``ModalityResult.lists``), as the
                search page shows them beside the fused list.
        """
        t0 = time.perf_counter()
        p = self.settings.pipeline
        k = p.k if k is None else k
        if not isinstance(k, int) or not 1 <= k <= 1000:
            raise ConfigError(f"k {k!r} is out of range 1-1000")
        filters = dict(filters or {})
        unknown = sorted(set(filters) - set(TASKS))
        if unknown:
            raise ConfigError(f"unknown filter section(s) {unknown}; use keys: {', '.join(TASKS)}")
        fuse = p.fusion if fusion is None else fusion
        rw = self.rewrite(query, task, length, relevance, 1, deadline_ms)
        timings = {f"rewrite.{s}": v for s, v in rw.timings_ms.items() if s != "total"}
        mode = "fused" if fuse else "rewrite"
        modalities = [self._search(rw.query, o, k, filters.get(o.task), mode, timings)
                      for o in rw.prompts]
        if not lists:
            for m in modalities:
                m.lists = {}
        timings["total"] = _ms(t0)
        return SearchResult(rw.query, rw, modalities, timings)

    def fusion_weights(self, task: str) -> FusionWeights:
        """The fusion weights for ``task``: the settings, with the weights fitted on the
        training log when the template index was built and the rewrite channel's fitted after
        training (both when ``pipeline.fitted_fusion``)."""
        if task != "template":
            return fusion_weights(self.settings.pipeline, None)
        fitted = dict(getattr(self.template_index, "fusion_params", None) or {})
        if self.rewrite_fit:
            fitted.update(self.rewrite_fit)
        return fusion_weights(self.settings.pipeline, fitted)

    def _search(self, query: str, outcome, k: int, filters, mode: str,
                timings: dict[str, float]) -> ModalityResult:
        channels = MODES[mode]
        if outcome.task == "image":
            if self.image_index is None:
                return ModalityResult("image", outcome.prompt, outcome.path, False, None, [],
                                      "image index is not loaded")
            return search_images(self.image_index, self.image_encoder, query, outcome, k,
                                 filters, channels, self.fusion_weights("image"),
                                 self.text_encoder, timings)
        if self.template_index is None:
            return ModalityResult("template", outcome.prompt, outcome.path, False, None, [],
                                  "template index is not loaded")
        return search_templates(self.template_index, query, outcome, k, filters, channels,
                                self.fusion_weights("template"), self.text_encoder, timings)

    def retrieve(self, query: str, task: str, mode: str, k: int = 100,
                 length: int | None = None, relevance: int | None = None,
                 filters: dict | None = None, deadline_ms: float = 3_600_000) -> ModalityResult:
        """One modality's ranked list for offline evaluation (with a generous model deadline,
        so results do not depend on machine speed).

        Args:
            mode: "raw" (the query as typed), "dense" (its embedding), "rewrite" (the rewritten
                prompt only; the raw query when the rewrite falls back), "hybrid" (raw and
                dense fused) or "fused" (raw, dense and rewrite fused).
        """
        if mode not in RETRIEVAL_MODES:
            raise ConfigError(f"unknown mode {mode!r}; allowed: {', '.join(RETRIEVAL_MODES)}")
        q = _check_query(query)
        if "rewrite" not in MODES[mode]:
            outcome = self._raw(q, self.command(task, length, relevance), 0, [], f"mode {mode}")
        else:
            # seeded retries: the same query gets the same prompt in every evaluation run
            outcome = self.rewrite(q, task, length, relevance, 1, deadline_ms,
                                   seed=zlib.crc32(q.encode())).prompts[0]
        res = self._search(q, outcome, k, filters, mode, {})
        if res.error:
            raise IndexStoreError(res.error)
        return res

    # -- lifecycle -----------------------------------------------------------------------------

    def components(self) -> dict[str, dict[str, Any]]:
        """What is loaded, with versions, and why a component is not (for /readyz)."""
        parts = {
            "rewriter": {"loaded": True, "version": self.model_version,
                         "engine": type(self.rewriter).__name__},
            "intent": {"loaded": self.intent is not None},
            "image_index": {"loaded": self.image_index is not None,
                            "version": getattr(self.image_index, "version", None)},
            "template_index": {"loaded": self.template_index is not None,
                               "version": getattr(self.template_index, "version", None)},
        }
        for name, why in self.load_errors.items():
            parts[name]["error"] = why
        return parts

    def close(self) -> None:
        self.batcher.close()
        if self.template_index is not None:
            self.template_index.close()


def _cmd(cmd: Command) -> dict[str, Any]:
    return {"task": cmd.task, "length": cmd.length, "relevance": cmd.relevance}
