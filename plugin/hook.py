"""The in-process rewrite hook for an existing Python search backend.

::

    from plugin.hook import RewriteHook

    with RewriteHook.from_workspace("demo-workspace") as hook:
        r = hook.rewrite("cozy cabin in the snow")        # RewriteResult: intent, prompts, path
        s = hook.search("birthday invitation", k=5)        # SearchResult: fused results per task

Same semantics as the HTTP service (it is the same ``Pipeline``): a model that does not answer
within the deadline fails open with the raw query; every result says which path it took.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from indexers.errors import IndexStoreError
from rewriters.commands import TASKS
from rewriters.errors import ConfigError, ModelError

from .config import Settings, load_settings
from .errors import UDRL_ERRORS
from .index_settings import es_settings, make_text_encoder
from .pipeline import Pipeline, RewriteResult, SearchResult
from .query import Query, as_query

__all__ = ["RewriteHook", "load_pipeline", "load_engine", "es_settings", "routed_tasks"]

log = logging.getLogger(__name__)


def load_engine(settings: Settings, template_index=None, find_context: bool = True,
                path: str | os.PathLike[str] | None = None):
    """The rewriter engine the settings ask for (``pipeline.engine``: auto | onnx | ctranslate2 |
    torch; auto serves the ONNX Runtime export when it is current, else the CTranslate2 one,
    else PyTorch).

    A model trained with catalogue context reads it from ``template_index``; when that is None
    and ``find_context`` is set, the workspace's template index is opened for it. ``path``: a
    rewriter folder other than the workspace's.

    Raises:
        ModelError: no trained rewriter in the workspace, or the engine cannot load it.
    """
    from rewriters.engines import load_engine as load

    if path is None and not settings.model_dir.is_dir():
        raise ModelError(f"no rewriter at {settings.model_dir}; train one with `udrl train`")
    path = settings.model_dir if path is None else Path(path)
    engine = load(path, engine=settings.pipeline.engine, device=settings.device,
                  batch_size=settings.generation.batch_size)
    if (template_index is None and find_context
            and getattr(getattr(engine, "meta", None), "context_items", 0)):
        template_index = _template_side(settings, light=True)
    return attach_context(engine, template_index)


def attach_context(engine, template_index):
    """Give a model trained with context (``meta.context_items``) its grounding: the titles of
    the template index's dense top items. Without a dense channel it reads the query alone."""
    m = getattr(getattr(engine, "meta", None), "context_items", 0)
    if m and template_index is not None and template_index.has_dense:
        from .grounding import ServingContext

        engine.context = ServingContext(template_index, m)
    elif m:
        log.warning("the rewriter was trained with catalogue context but no template index "
                    "with a dense channel is loaded; it reads the query alone")
    return engine


def _image_side(settings: Settings):
    from indexers.encoders import ClipEncoder
    from indexers.images import load_image_index

    if settings.index.image_backend == "elasticsearch":
        from .es_image_jobs import open_es_images

        return open_es_images(settings)
    root = settings.image_index_dir
    if not root.is_dir():
        log.warning("no image index at %s; image search is off (build one with "
                    "`udrl index images`)", root)
        return None, None
    encoder = ClipEncoder(settings.index.clip_model, settings.index.pretrained,
                          device=settings.device)
    return load_image_index(root, encoder.name, encoder.dim), encoder


def open_indexes(settings: Settings, clip: bool = True):
    """(template index or None, image index or None) of the workspace; ``clip=False`` opens
    the image index for its metadata only, without loading the CLIP encoder."""
    image = _image_side(settings)[0] if clip else None
    if not clip and settings.index.image_backend == "elasticsearch":
        from .es_image_jobs import open_es_images

        try:
            image = open_es_images(settings, clip=False)[0]
        except IndexStoreError as e:
            log.warning("image index unusable, left out: %s", e)
    elif not clip and settings.image_index_dir.is_dir():
        from indexers.images import load_image_index

        try:
            image = load_image_index(settings.image_index_dir)
        except IndexStoreError as e:
            log.warning("image index unusable, left out: %s", e)
    return _template_side(settings), image


def _template_side(settings: Settings, light: bool = False):
    from indexers.template_backends import open_template_index

    ix = settings.index
    if ix.template_backend == "tantivy":
        if not settings.template_index_dir.is_dir():
            log.warning("no template index at %s; template search is off (build one with "
                        "`udrl index templates`)", settings.template_index_dir)
            return None
        return open_template_index("tantivy", root=settings.template_index_dir,
                                   encoder=make_text_encoder(settings, light))
    es = es_settings(settings)
    from indexers.errors import EncoderMismatchError

    try:  # the dense channel is fused by the pipeline, so `search` stays BM25-only
        return open_template_index("elasticsearch", settings=es,
                                   encoder=make_text_encoder(settings, light), hybrid=False)
    except EncoderMismatchError as e:
        log.warning("template index opened without its dense channel: %s", e)
        return open_template_index("elasticsearch", settings=es, hybrid=False)


def load_pipeline(settings: Settings, rewriter=None, indexes: bool = True,
                  precomputed: bool = True, tasks: Iterable[str] | None = None) -> Pipeline:
    """Load the rewriter, intent model and the indexes of the workspace into a Pipeline.

    An index that is missing, damaged or unreachable (Elasticsearch down, alias not built yet,
    CLIP weights not downloadable) and a missing intent model are logged and left out;
    ``Pipeline.components`` (``/readyz``) says which and why. A missing rewriter is an error.

    Args:
        indexes: False loads only the models (for precomputing rewrites).
        precomputed: False ignores the precomputed-rewrites file and turns the cache off (used
            when the precomputed file itself is being written).
        tasks: the indexes to open, "image" and/or "template" (default both): a search routed
            to templates only never loads CLIP.
    """
    from rewriters.intent import load_intent_detector

    intent = None
    if settings.intent_dir.is_dir():
        intent = load_intent_detector(settings.intent_dir)
    else:
        log.warning("no intent model at %s; every query goes to both tasks", settings.intent_dir)
    if not precomputed:
        settings = settings.model_copy(
            update={"pipeline": settings.pipeline.model_copy(update={"cache_size": 0})})
    wanted = (set(TASKS) if tasks is None else set(tasks)) if indexes else set()
    errors: dict[str, str] = {}
    image_index, encoder = _open_side("image", wanted, errors, _image_side, settings) or (
        None, None)
    template_index = _open_side("template", wanted, errors, _template_side, settings, True)
    if rewriter is None:
        rewriter = load_engine(settings, template_index, find_context="template" not in wanted)
    elif template_index is not None:
        attach_context(rewriter, template_index)
    text_encoder = make_text_encoder(settings, light=True) if indexes else None
    pipe = Pipeline(rewriter, intent, settings, image_index=image_index, image_encoder=encoder,
                    template_index=template_index, text_encoder=text_encoder,
                    load_precomputed=precomputed)
    pipe.load_errors.update(errors)
    return pipe


def routed_tasks(settings: Settings, query: Query | str, task: str | None = None) -> list[str]:
    """The tasks ``query`` goes to: ``[task]`` when given, else the intent model's routing
    (both without one), so that a caller loads only those indexes."""
    if task is not None:
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
        return [task]
    if not settings.intent_dir.is_dir():
        return list(TASKS)
    from rewriters.intent import load_intent_detector

    return list(load_intent_detector(settings.intent_dir).predict(as_query(query).text).routed)


def _open_side(task: str, wanted: set[str], errors: dict[str, str], opener, *args):
    """``opener(*args)`` for a wanted task; a failure is logged and kept in ``errors``."""
    if task not in wanted:
        return None
    build = f"`udrl index {task}s`"
    try:
        opened = opener(*args)
    except UDRL_ERRORS as e:  # either package's: the index is left out
        log.warning("%s index left out: %s", task, e)
        errors[f"{task}_index"] = str(e)
        return None
    if opened is None or opened == (None, None):
        errors[f"{task}_index"] = f"no {task} index in the workspace; build one with {build}"
        return None
    return opened


class RewriteHook:
    """Call the rewrite plugin in-process: ``rewrite`` and ``search`` like the HTTP API.

    Like the API's request bodies, both check the query here, at the edge (``Query``; a bad one
    raises ``ConfigError``), and hand the pipeline the checked value.
    """

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    @classmethod
    def from_settings(cls, settings: Settings) -> RewriteHook:
        return cls(load_pipeline(settings))

    @classmethod
    def from_workspace(cls, workspace: str | os.PathLike[str], config: str | None = None,
                       **overrides: Any) -> RewriteHook:
        """Load from a workspace folder (``udrl`` settings from ``config``/env as usual)."""
        return cls.from_settings(load_settings(config, workspace=Path(workspace), **overrides))

    def rewrite(self, query: Query | str, task: str | None = None, length: int | None = None,
                relevance: int | None = None, n: int = 1,
                deadline_ms: float | None = None) -> RewriteResult:
        """Intent, prompts and path for ``query`` (see ``Pipeline.rewrite``)."""
        return self.pipeline.rewrite(as_query(query), task, length, relevance, n, deadline_ms)

    def search(self, query: Query | str, k: int | None = None, filters: dict | None = None,
               **options: Any) -> SearchResult:
        """Fused results per modality for ``query`` (see ``Pipeline.search``)."""
        return self.pipeline.search(as_query(query), k, filters, **options)

    def close(self) -> None:
        self.pipeline.close()

    def __enter__(self) -> RewriteHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
