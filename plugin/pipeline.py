"""The search pipeline: query → intent → UDRL rewrite → image and/or template search → fusion.

::

    Query ─► IntentDetector ─► tasks ─► commands (task, length, relevance)
                                            │ check_query: too long for the window → refused
                 RewriteCache ◄─────────────┤ miss                          (plugin.prompts)
                                            ▼
                                  MicroBatcher ─► rewriters.engines (onnx / ctranslate2 / torch)
                                            │ check_prompt: accept | retry (sample) | raw query
                                            ▼
          image prompt ─► CLIP text encoder ─► ImageIndex (FAISS) ─┐
          template prompt ─► TemplateIndex (tantivy / Elasticsearch) ├─► weighted RRF ─► results
          raw query ─────────► the same indexes ─────────────────────┤   (plugin.channels)
          query embedding ───► the template index's dense channel ───┘

The query is a ``plugin.query.Query``, checked once at the edge and never again here. The
results are the pipeline's own pydantic dataclasses, which the hook and the HTTP API return as
they are. Every result says which lists it came from (rank in each channel's list), every modality which
channels were used with what weight, every prompt which path it took, and the response carries
the index versions and timings per stage. One deadline covers the whole request; the model
waits only for what the other stages leave of it.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import Counter
from dataclasses import asdict
from typing import Any

from pydantic.dataclasses import dataclass

from indexers.errors import IndexStoreError
from rewriters.commands import TASKS, Command
from rewriters.errors import ConfigError, QueryTooLongError
from rewriters.engines import Rewrite

from .batching import MicroBatcher
from .config import Settings
from .channels import MODES, SOURCES, ModalityResult, ResultItem, search_modality
from .fitted_weights import fusion_weights, read_rewrite_fit
from .fusion import FusionWeights
from .prompts import PromptStage, count_paths, raw_outcome
from .query import MAX_QUERY_CHARS, Query, as_query
from .rewrite import PATHS, PromptOutcome, PromptPath, RewriteCache, check_prompt, read_precomputed

__all__ = ["Pipeline", "RewriteResult", "SearchResult", "ModalityResult", "ResultItem",
           "PromptOutcome", "Query", "MAX_QUERY_CHARS", "RETRIEVAL_MODES"]

log = logging.getLogger(__name__)

RETRIEVAL_MODES = tuple(MODES)  # raw, dense, rewrite, hybrid (raw + dense), fused (all)


# The result types are pydantic dataclasses: the pipeline builds them once and the Python hook,
# the CLI and the HTTP API (as its response models) return them as they are.


@dataclass
class RewriteResult:
    """What the rewrite hook decided for one query."""

    query: str  # the checked query's text
    intent: str  # image | template | both
    probs: dict[str, float]  # calibrated intent probabilities
    tasks: list[str]  # the tasks the query was routed to
    prompts: list[PromptOutcome]  # one per task
    path: PromptPath  # the worst path of the prompts: rewrite | retry | raw
    model_version: str
    timings_ms: dict[str, float]  # per stage (intent, rewrite, total)

    def prompt_for(self, task: str) -> PromptOutcome | None:
        return next((p for p in self.prompts if p.task == task), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """Results per routed modality, with the rewrite they were searched with."""

    query: str  # the checked query's text
    rewrite: RewriteResult
    modalities: list[ModalityResult]
    timings_ms: dict[str, float]  # per stage (rewrite.*, <task>.encode, <task>.search, total)

    def modality(self, task: str) -> ModalityResult | None:
        return next((m for m in self.modalities if m.task == task), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


class Pipeline:
    """Rewrites queries and searches the indexes; thread-safe for concurrent callers.

    Args:
        rewriter: a ``rewriters.engines.Engine`` (``load_engine`` picks one from the registry).
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
                                               sv.batch_wait_ms, sv.max_queue)
        self.cache = RewriteCache(settings.pipeline.cache_size)
        # the rewrite channel's weight and floor fitted after training (plugin.rewrite_fit)
        self.rewrite_fit = read_rewrite_fit(settings.model_dir, self.model_version)
        self.counters: Counter[str] = Counter()  # path:<p>, fallback:<reason>
        # moving average of the search stages' seconds (what search() keeps back for them)
        self._search_s: float | None = None
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
            self.cache.put(Query(str(row["query"])), cmd, self.model_version, ok, "precomputed")
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

    def rewrite(self, query: Query | str, task: str | None = None, length: int | None = None,
                relevance: int | None = None, n: int = 1,
                deadline_ms: float | None = None, seed: int | None = None,
                cache: bool = True, cached_only: bool = False) -> RewriteResult | None:
        """Detect intent and rewrite the query for each routed task (or for ``task`` only).

        Never raises for a slow, busy or failing model: such prompts fall back to the raw query.
        The deadline (``deadline_ms``, else ``service.deadline_ms``) counts from this call:
        intent detection spends from it and the model gets what is left. ``seed`` makes the
        sampled retries reproducible (offline evaluation uses it); ``cache=False`` skips cached
        and precomputed prompts and asks the model. ``cached_only``: answer only when every
        prompt is cached (None otherwise, nothing queued), so a caller on an event loop can
        serve hits without a thread. ``query``: a ``Query`` (checked at the edge) is used as it
        is; a plain string is checked into one here.

        Raises:
            ConfigError: bad query, task, length, relevance or n.
            QueryTooLongError: the query leaves too little of the model's window for a prompt
                of a routed command (checked before anything is queued).
            QueueFullError: ``service.max_queue`` jobs wait and ``service.queue_full`` is
                ``"503"``.
        """
        deadline = self.settings.service.deadline_ms if deadline_ms is None else deadline_ms
        return self._rewrite(query, task, length, relevance, n,
                             time.monotonic() + deadline / 1000.0, seed, cache, cached_only)

    def _rewrite(self, query, task, length, relevance, n: int, deadline_at: float,
                 seed: int | None, cache: bool, cached_only: bool = False
                 ) -> RewriteResult | None:
        """``rewrite`` with the model's deadline as a ``time.monotonic()`` instant."""
        t0 = time.perf_counter()
        q = as_query(query)  # a Query was checked at the edge; a str is checked here, once
        if not 1 <= n <= 8:
            raise ConfigError(f"n {n} is out of range 1-8")
        if task is not None and task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
        timings: dict[str, float] = {}
        t = time.perf_counter()
        if self.intent is not None:
            pred = self.intent.predict(q.text)
            intent, probs, routed = pred.intent, pred.probs, list(pred.routed)
        else:
            intent, probs, routed = "both", {}, list(TASKS)
        timings["intent"] = _ms(t)
        tasks = [task] if task else routed
        commands = [self.command(tk, length, relevance) for tk in tasks]
        for cmd in commands:  # refuse what the model's window cannot take before queueing
            self.rewriter.check_query(q.text, cmd)
        t = time.perf_counter()
        stage = PromptStage(self.batcher, self.cache, self.settings, self.model_version)
        prompts = stage.prompts(q, commands, n, deadline_at, seed, cache, cached_only)
        if prompts is None:  # cached_only and not all cached
            return None
        timings["rewrite"] = _ms(t)
        path = max((p.path for p in prompts), key=PATHS.index, default="raw")
        count_paths(self.counters, prompts, n)
        timings["total"] = _ms(t0)
        return RewriteResult(q.text, intent, probs, tasks, prompts, path, self.model_version,
                             timings)

    # -- search --------------------------------------------------------------------------------

    def search(self, query: Query | str, k: int | None = None,
               filters: dict[str, dict] | None = None, task: str | None = None, length: int | None = None,
               relevance: int | None = None, fusion: bool | None = None,
               deadline_ms: float | None = None, lists: bool = False,
               cache: bool = True) -> SearchResult:
        """Rewrite the query, search every routed modality, fuse raw and rewritten results.

        The deadline (``deadline_ms``, else ``service.deadline_ms``) covers the whole call:
        intent, the model's wait, encoding and searching. The model gets what is left after
        intent less what the searches have been taking (a moving average, at most half the
        deadline), so the searches that follow it fit in too.

        Args:
            k: results per modality (default from settings).
            filters: per modality, ``{"image": {...metadata...}, "template": {"category": ..,
                "tags": [..]}}``.
            task, length, relevance: override the routing / the commands.
            fusion: override ``pipeline.fusion``.
            lists: also return each channel's own top k (``ModalityResult.lists``), as the
                search page shows them beside the fused list.
            cache: False skips cached and precomputed prompts (``rewrite``).
        Raises:
            as ``rewrite``; ConfigError also for a bad ``k`` or filter section.
        """
        t0 = time.perf_counter()
        deadline_s = (self.settings.service.deadline_ms if deadline_ms is None
                      else deadline_ms) / 1000.0
        end = time.monotonic() + deadline_s
        p = self.settings.pipeline
        k = p.k if k is None else k
        if not isinstance(k, int) or not 1 <= k <= 1000:
            raise ConfigError(f"k {k!r} is out of range 1-1000")
        filters = dict(filters or {})
        unknown = sorted(set(filters) - set(TASKS))
        if unknown:
            raise ConfigError(f"unknown filter section(s) {unknown}; use keys: {', '.join(TASKS)}")
        fuse = p.fusion if fusion is None else fusion
        reserve = min(self._search_s or 0.0, max(deadline_s, 0.0) / 2)  # for the searches
        rw = self._rewrite(query, task, length, relevance, 1, end - reserve, None, cache)
        timings = {f"rewrite.{s}": v for s, v in rw.timings_ms.items() if s != "total"}
        mode = "fused" if fuse else "rewrite"
        t = time.perf_counter()
        modalities = [self._search(rw.query, o, k, filters.get(o.task), mode, timings)
                      for o in rw.prompts]
        took = time.perf_counter() - t
        self._search_s = took if self._search_s is None else self._search_s + 0.2 * (
            took - self._search_s)
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
        """One modality (``outcome.task``) searched with ``mode``'s channels and fused."""
        task = outcome.task
        index = self.image_index if task == "image" else self.template_index
        if index is None:
            return ModalityResult(task, outcome.prompt, outcome.path, False, None, [],
                                  f"{task} index is not loaded")
        source = SOURCES[task](index, self.image_encoder, self.text_encoder)
        return search_modality(source, query, outcome, k, filters, MODES[mode],
                               self.fusion_weights(task), self.text_encoder, timings)

    def retrieve(self, query: Query | str, task: str, mode: str, k: int = 100,
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
        q = as_query(query)
        if "rewrite" not in MODES[mode]:
            outcome = raw_outcome(q.text, self.command(task, length, relevance), 0, [],
                                  f"mode {mode}")
        else:
            try:  # seeded retries: the same query gets the same prompt in every evaluation run
                outcome = self.rewrite(q, task, length, relevance, 1, deadline_ms,
                                       seed=zlib.crc32(q.text.encode())).prompts[0]
            except QueryTooLongError:  # an evaluation scores the raw query rather than stop
                outcome = raw_outcome(q.text, self.command(task, length, relevance), 0, [],
                                      "query_too_long")
        res = self._search(q.text, outcome, k, filters, mode, {})
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

