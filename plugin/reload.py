"""Hot reload: a running service picks up a newly published index version or rewriter.

::

    watch thread (every service.reload_interval_s) ─┐
    POST /admin/reload ─────────────────────────────┴─► Reloader.reload(trigger)
        read_published(settings)   per component, what the workspace publishes (plugin.published)
        changed                    published ≠ what the serving pipeline was loaded from
        load_changed(old, changed) a new Pipeline: the changed components loaded afresh, the
                                   others shared with the old one; a component that fails to
                                   load keeps the old one's, and the error is reported
        swap                       app.state.pipeline = new, one assignment under the lock
        retire(old)                closed once its last request is done (RETIRE_TIMEOUT_S at most)

Requests take the pipeline through :meth:`Reloader.hold`, which counts them per pipeline: a
request that started on the old pipeline finishes on it, and what the old one alone holds (its
micro-batcher, its template index) is closed only after that. Index pointers (``CURRENT``, the
Elasticsearch alias) switch atomically, so the watch acts on them at once; the rewriter, intent
model, fitted rewrite weights and precomputed rewrites are files written in place, so the watch
waits until they look the same on two polls in a row (``POST /admin/reload`` does not wait).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, Field

from indexers.errors import IndexStoreError

from .config import Settings
from .errors import UDRL_ERRORS
from .pipeline import Pipeline
from .published import COMPONENTS, POINTERS, AliasReader, Stamp, read_published, served_version

__all__ = ["RETIRE_TIMEOUT_S", "ComponentReload", "ReloadReport", "ReloadStatus", "Reloader",
           "load_changed"]

log = logging.getLogger(__name__)

RETIRE_TIMEOUT_S = 60.0  # an old pipeline is closed after this even with requests still on it


class ComponentReload(BaseModel):
    old: str | None = Field(None, description="Version served before (null: not loaded).")
    new: str | None = Field(None, description="Version served after; the old one when the "
                            "load failed.")
    result: Literal["ok", "failed"]
    error: str | None = Field(None, description="Why the load failed.")


class ReloadReport(BaseModel):
    """What one reload did (``POST /admin/reload``'s answer; ``/readyz`` keeps the last one)."""

    trigger: Literal["api", "watch"] = Field(..., description="POST /admin/reload or the "
                                             "watch (service.reload_interval_s).")
    result: Literal["ok", "failed", "unchanged"] = Field(
        ..., description="failed: a component failed to load (the others were swapped in); "
                         "unchanged: nothing new was published.")
    at: str = Field(..., description="When it finished (UTC, ISO 8601).")
    seconds: float = Field(..., description="How long loading and swapping took.")
    components: dict[str, ComponentReload] = Field(
        default_factory=dict, description="Each component that had changed: intent, "
        "image_index, template_index, rewriter (its model_version), rewrite_fit, precomputed.")
    served: dict[str, str | None] = Field(
        default_factory=dict, description="Versions served now: rewriter, image_index, "
                                          "template_index.")


class ReloadStatus(BaseModel):
    """``/readyz``'s ``reload``: the watch and the last reload that loaded something."""

    interval_s: float = Field(..., description="The watch's polling interval; 0: off.")
    last: ReloadReport | None = Field(None, description="The last reload that changed or tried "
                                      "to change something (null: none yet).")


# -- loading ----------------------------------------------------------------------------------


def _parts(pipe: Pipeline) -> tuple[Any, Any, Any]:
    """What a pipeline holds that must be closed when no pipeline uses it any more; the batcher
    comes before its engine, so queued work finishes on the engine first."""
    return pipe.batcher, pipe.rewriter, pipe.template_index


def _reads_context(engine) -> bool:
    return bool(getattr(getattr(engine, "meta", None), "context_items", 0))


def _open_template(settings: Settings):
    from .hook import _template_side

    index = _template_side(settings, True)
    if index is None:
        raise IndexStoreError(f"no template index in the workspace "
                              f"({settings.template_index_dir}); build one with "
                              "`udrl index templates`")
    return index


def _open_images(settings: Settings, encoder):
    from indexers.images import load_image_index

    from .hook import _image_side

    if encoder is not None:  # the encoder stays; only the vectors are new
        return load_image_index(settings.image_index_dir, encoder.name, encoder.dim), encoder
    index, encoder = _image_side(settings)
    if index is None:
        raise IndexStoreError(f"no image index at {settings.image_index_dir}; build one with "
                              "`udrl index images`")
    return index, encoder


def _load_engine(settings: Settings, template_index):
    from .hook import load_engine

    return load_engine(settings, template_index, find_context=False)


def load_changed(old: Pipeline, changed: Collection[str],
                 engine_loader: Callable[[Settings, Any], Any] | None = None
                 ) -> tuple[Pipeline | None, dict[str, str]]:
    """A new Pipeline with the ``changed`` components loaded afresh and the others shared with
    ``old`` (same settings, text encoder, counters; the micro-batcher and cache too while the
    rewriter is unchanged).

    Args:
        engine_loader: ``(settings, template_index) -> engine``; default ``hook.load_engine``.

    Returns:
        (the new pipeline, or None when every changed component failed; {component: why it
        failed}). A failed component keeps ``old``'s.
    """
    s = old.settings
    errors: dict[str, str] = {}
    parts = {"intent": old.intent, "image_index": old.image_index,
             "image_encoder": old.image_encoder, "template_index": old.template_index}
    rewriter = old.rewriter

    def attempt(component: str, load: Callable[[], Any]) -> Any:
        try:
            return load()
        except Exception as e:  # whatever breaks, the old component keeps serving
            errors[component] = str(e) or type(e).__name__
            log.warning("reloading %s failed; the old one keeps serving: %s", component,
                        errors[component], exc_info=not isinstance(e, UDRL_ERRORS))
            return None

    if "intent" in changed:
        from rewriters.intent import load_intent_detector

        loaded = attempt("intent", lambda: load_intent_detector(s.intent_dir))
        if loaded is not None:
            parts["intent"] = loaded
    if "image_index" in changed:
        loaded = attempt("image_index", lambda: _open_images(s, old.image_encoder))
        if loaded is not None:
            parts["image_index"], parts["image_encoder"] = loaded
    if "template_index" in changed:
        loaded = attempt("template_index", lambda: _open_template(s))
        if loaded is not None:
            parts["template_index"] = loaded
    template = parts["template_index"]
    if "rewriter" in changed:
        loaded = attempt("rewriter", lambda: (engine_loader or _load_engine)(s, template))
        if loaded is not None:
            rewriter = loaded
    if not any(c not in errors for c in changed):
        return None, errors
    new_template = template is not old.template_index
    same_model = rewriter is old.rewriter
    # cached prompts stay valid while the model, its context and the precomputed file do
    keep_cache = (same_model and "precomputed" not in changed
                  and not (new_template and _reads_context(rewriter)))
    try:
        new = Pipeline(rewriter, parts["intent"], s, image_index=parts["image_index"],
                       image_encoder=parts["image_encoder"], template_index=template,
                       text_encoder=old.text_encoder,
                       batcher=old.batcher if same_model else None, load_precomputed=False)
    except Exception as e:
        log.exception("building the reloaded pipeline failed")
        if new_template:
            template.close()
        return None, {c: errors.get(c, f"building the pipeline failed: {e}") for c in changed}
    new.counters = old.counters  # the /metrics counters go on counting
    if not same_model:
        new.batcher.stats = old.batcher.stats
    if keep_cache:
        new.cache, new.precomputed = old.cache, old.precomputed
    else:
        new.cache.hits, new.cache.misses = old.cache.hits, old.cache.misses
        if s.pipeline.precomputed is not None or s.precomputed_path.is_file():
            new.precomputed = attempt("precomputed",
                                      lambda: new.load_precomputed(s.precomputed_path))
    if same_model and new_template and _reads_context(rewriter):
        from .hook import attach_context

        rewriter.context = None  # never the closing index's, even when the new has no dense
        attach_context(rewriter, template)
    new.load_errors = {k: v for k, v in old.load_errors.items()
                       if k not in changed or k in errors}
    return new, errors


# -- the reloader -----------------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Reloader:
    """Swaps the app's pipeline for a reloaded one and retires the old one safely.

    Args:
        state: the app's ``state``: ``pipeline`` (the one reference requests read) and
            ``owned`` (the app loaded it, so it closes it).
        counter: a Prometheus counter with labels ``component`` and ``result`` (ok | failed).
        engine_loader: ``(settings, template_index) -> engine`` (tests); default
            ``hook.load_engine``.
    """

    def __init__(self, state, counter=None, engine_loader=None,
                 retire_timeout_s: float = RETIRE_TIMEOUT_S):
        self.state, self.counter, self.engine_loader = state, counter, engine_loader
        self.retire_timeout_s = retire_timeout_s
        self.last: ReloadReport | None = None
        self.interval_s = 0.0
        self._cond = threading.Condition()  # guards the swap, the counts, _owned, _retiring
        self._inflight: dict[int, int] = {}  # id(pipeline) -> requests using it
        self._retiring: list[Pipeline] = []  # swapped out, not closed yet
        self._owned: list[Any] = []  # engines, batchers and template indexes the app must close
        self._busy = threading.Lock()  # one reload at a time
        self._loaded: dict[str, Stamp] | None = None  # what the serving pipeline came from
        self._failed: dict[str, Stamp] = {}  # what failed last, per component
        self._polled: dict[str, Stamp] | None = None  # the watch's previous poll
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._alias: AliasReader | None = None  # the Elasticsearch alias, when it is the backend

    # -- requests ------------------------------------------------------------------------------

    @contextmanager
    def hold(self) -> Iterator[Pipeline | None]:
        """The serving pipeline (None before one is loaded), kept open until the block ends."""
        with self._cond:
            pipe = self.state.pipeline
            if pipe is not None:
                self._inflight[id(pipe)] = self._inflight.get(id(pipe), 0) + 1
        try:
            yield pipe
        finally:
            if pipe is not None:
                with self._cond:
                    left = self._inflight.pop(id(pipe)) - 1
                    if left:
                        self._inflight[id(pipe)] = left
                    self._cond.notify_all()

    def status(self) -> ReloadStatus:
        return ReloadStatus(interval_s=self.interval_s, last=self.last)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Note what the serving pipeline was loaded from; start the watch when
        ``service.reload_interval_s`` > 0."""
        pipe = self.state.pipeline
        if getattr(self.state, "owned", False):
            self._owned += [x for x in _parts(pipe) if x is not None]
        with self._busy:
            self._baseline(pipe)
        self.interval_s = float(pipe.settings.service.reload_interval_s)
        if self.interval_s > 0:
            t = threading.Thread(target=self._watch, name="udrl-reload-watch", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the watch, let a running reload and the retiring pipelines finish, then close
        everything the app loaded."""
        self._stop.set()
        for t in list(self._threads):
            t.join(timeout_s)
        if self._busy.acquire(timeout=timeout_s):
            self._busy.release()
        with self._cond:
            owned, self._owned = self._owned, []
        for part in owned:
            part.close()
        if self._alias is not None:
            self._alias.close()

    def _baseline(self, pipe: Pipeline) -> None:
        """What ``pipe`` was loaded from: the published stamps, except where it serves another
        version than the one published now (published while it loaded): that one is new."""
        pub = self._published(pipe.settings)
        for c in ("rewriter", "image_index", "template_index"):
            if served_version(pipe, c) != pub[c].version:
                pub[c] = Stamp(served_version(pipe, c), "served")
        self._loaded = pub

    def _published(self, settings: Settings) -> dict[str, Stamp]:
        if self._alias is None and settings.index.template_backend == "elasticsearch":
            self._alias = AliasReader(settings)
        return read_published(settings, self._alias)

    # -- reloading -----------------------------------------------------------------------------

    def reload(self, trigger: Literal["api", "watch"] = "api") -> ReloadReport | None:
        """Load what was published since the serving pipeline was loaded and swap it in.

        The watch skips components whose last load failed until they change again, and files
        that changed since its previous poll; ``"api"`` retries and takes everything now.

        Returns:
            The report (``result`` ``failed`` when a component failed: the others were still
            swapped in), or None when another reload is running.
        """
        if not self._busy.acquire(blocking=False):
            return None
        try:
            return self._reload(trigger)
        finally:
            self._busy.release()

    def _reload(self, trigger: Literal["api", "watch"]) -> ReloadReport:
        t0 = time.perf_counter()
        old = self.state.pipeline
        if self._loaded is None:
            self._baseline(old)
        pub = self._published(old.settings)
        changed = [c for c in COMPONENTS
                   if pub[c].version is not None and pub[c] != self._loaded[c]]
        if trigger == "watch":
            polled, self._polled = self._polled, pub
            changed = [c for c in changed if pub[c] != self._failed.get(c) and (
                c in POINTERS or (polled is not None and polled[c] == pub[c]))]
        if not changed:
            return ReloadReport(trigger=trigger, result="unchanged", at=_now(),
                                seconds=round(time.perf_counter() - t0, 3),
                                served=self._versions(old))
        log.info("reloading %s (%s)", ", ".join(changed), trigger)
        new, errors = load_changed(old, changed, self.engine_loader)
        if new is not None:
            self._swap(old, new)
        done = old if new is None else new
        report = ReloadReport(
            trigger=trigger, result="failed" if errors else "ok", at=_now(),
            seconds=round(time.perf_counter() - t0, 3), served=self._versions(done),
            components={c: ComponentReload(
                old=served_version(old, c) or self._loaded[c].version,
                new=served_version(done, c) or (self._loaded[c] if c in errors else pub[c]).version,
                result="failed" if c in errors else "ok", error=errors.get(c))
                for c in changed})
        for c in changed:
            if c in errors:
                self._failed[c] = pub[c]
            else:
                self._loaded[c] = pub[c]
                self._failed.pop(c, None)
            if self.counter is not None:
                self.counter.labels(c, "failed" if c in errors else "ok").inc()
        self.last = report
        log.info("reload %s in %.2fs: %s", report.result, report.seconds,
                 {c: (r.old, r.new) for c, r in report.components.items()})
        return report

    @staticmethod
    def _versions(pipe: Pipeline) -> dict[str, str | None]:
        return {c: served_version(pipe, c) for c in ("rewriter", "image_index", "template_index")}

    def _swap(self, old: Pipeline, new: Pipeline) -> None:
        with self._cond:
            new_parts = [x for x in _parts(new)
                         if x is not None and not any(x is o for o in _parts(old))]
            self._owned += new_parts  # loaded by the app: closed by it
            self.state.pipeline = new
            self._retiring.append(old)
        t = threading.Thread(target=self._retire, args=(old,), name="udrl-reload-retire",
                             daemon=True)
        t.start()
        self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _retire(self, old: Pipeline) -> None:
        """Close what only ``old`` holds once its requests are done."""
        until = time.monotonic() + self.retire_timeout_s
        with self._cond:
            while self._inflight.get(id(old)):
                left = until - time.monotonic()
                if left <= 0:
                    log.warning("closing the replaced pipeline with %d request(s) still on it "
                                "after %.0fs", self._inflight[id(old)], self.retire_timeout_s)
                    break
                self._cond.wait(left)
            self._retiring.remove(old)
            live = [self.state.pipeline, *self._retiring]
            close = [x for x in _parts(old)
                     if x is not None and any(x is o for o in self._owned)
                     and not any(x is o for p in live for o in _parts(p))]
            self._owned = [o for o in self._owned if not any(o is x for x in close)]
        for part in close:
            part.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.reload("watch")
            except Exception:  # the watch must outlive any one bad poll
                log.exception("the reload watch failed; it tries again in %.0fs",
                              self.interval_s)
