"""What the workspace publishes now, per component a running service can reload.

Each component gets a :class:`Stamp`; the reloader (``plugin.reload``) compares it with the
stamp the serving pipeline was loaded from::

    intent          intent/intent_config.json, intent.safetensors   mtimes and sizes
    image_index     indexes/images/CURRENT                          the live version's name
    template_index  indexes/templates/CURRENT, or the ES alias      version / concrete index
    rewriter        rewriter/udrl.json's version, the ONNX and CTranslate2 exports' info files
    rewrite_fit     rewriter/fusion.json (`udrl fit-rewrite`)        mtime and size
    precomputed     pipeline.precomputed (`udrl rewrite-batch`)     mtime and size

Reading is cheap (file stats, two pointer files, one alias lookup), so it can be polled.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from indexers.errors import IndexStoreError
from indexers.store import IndexStore

from .config import Settings
from .errors import UDRL_ERRORS
from .fitted_weights import REWRITE_FIT_FILE
from .pipeline import Pipeline

__all__ = ["COMPONENTS", "POINTERS", "AliasReader", "Stamp", "read_published", "served_version"]

log = logging.getLogger(__name__)

# what can be reloaded, in load order (the rewriter reads its context from the template index)
COMPONENTS = ("intent", "image_index", "template_index", "rewriter", "rewrite_fit",
              "precomputed")
POINTERS = frozenset({"image_index", "template_index"})  # switched atomically by publishers


@dataclass(frozen=True)
class Stamp:
    """What one component publishes: ``version`` (None: nothing loadable, keep what is served)
    and ``detail``, anything else whose change needs a reload (export files, mtimes)."""

    version: str | None
    detail: str = ""


def _file_stamp(*paths: Path) -> Stamp:
    """Stamp of files written in place: version = newest mtime (UTC), detail = mtimes, sizes."""
    stats = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        stats.append((p.name, st.st_mtime_ns, st.st_size))
    if not stats:
        return Stamp(None)
    newest = max(s[1] for s in stats) / 1e9
    version = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest))
    return Stamp(version, ";".join(f"{n}:{m}:{s}" for n, m, s in stats))


def _pointer_stamp(root: Path) -> Stamp:
    try:
        live = IndexStore(root).current()
    except (IndexStoreError, OSError):  # CURRENT names a missing version, or is unreadable
        return Stamp(None)
    return Stamp(live.name if live is not None else None)


def _rewriter_stamp(model_dir: Path) -> Stamp:
    from rewriters.engines import ENGINES, EXPORT_INFO

    try:  # unreadable while `udrl train` rewrites it: wait for the next poll
        version = json.loads((model_dir / "udrl.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return Stamp(None)
    exports = [_file_stamp(model_dir / e.export_dir / EXPORT_INFO).detail
               for e in ENGINES.values() if e.export_dir]
    return Stamp(str(version), "|".join(exports))


class AliasReader:
    """The concrete index behind the Elasticsearch alias now, over one client kept open."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._client: tuple[Any, str] | None = None  # (Elasticsearch, alias)

    def __call__(self) -> str | None:
        """Raises:
            IndexStoreError: the cluster cannot be reached or the settings are incomplete."""
        from indexers.es_index import live_es_version

        if self._client is None:
            from indexers.es_schema import connect

            from .index_settings import es_settings

            es = es_settings(self.settings)
            # a poll that fails is tried again at the next poll, not retried with backoff
            self._client = (connect(replace(es, max_retries=0, request_timeout=5.0)), es.alias)
        return live_es_version(*self._client)

    def close(self) -> None:
        if self._client is not None:
            self._client[0].close()
            self._client = None


def read_published(settings: Settings, alias: Callable[[], str | None] | None = None
                   ) -> dict[str, Stamp]:
    """Per component of ``COMPONENTS``, what the workspace publishes now.

    Args:
        alias: reads the concrete index behind the Elasticsearch alias (an
            :class:`AliasReader`) when ``index.template_backend`` is elasticsearch; None
            reads nothing there (no template version is published then).
    """
    from rewriters.intent import CONFIG_FILE, WEIGHTS_FILE

    if settings.index.template_backend == "tantivy":
        template = _pointer_stamp(settings.template_index_dir)
    else:
        try:
            template = Stamp(alias() if alias is not None else None)
        except UDRL_ERRORS as e:  # down now: keep serving what is loaded, look again later
            log.debug("the Elasticsearch alias cannot be read now: %s", e)
            template = Stamp(None)
    return {
        "intent": _file_stamp(settings.intent_dir / CONFIG_FILE,
                              settings.intent_dir / WEIGHTS_FILE),
        "image_index": _pointer_stamp(settings.image_index_dir),
        "template_index": template,
        "rewriter": _rewriter_stamp(settings.model_dir),
        "rewrite_fit": _file_stamp(settings.model_dir / REWRITE_FIT_FILE),
        "precomputed": _file_stamp(settings.precomputed_path),
    }


def served_version(pipe: Pipeline, component: str) -> str | None:
    """The version ``pipe`` serves of the rewriter (its model_version) or an index; None for
    the other components and for an index that is not loaded."""
    if component == "rewriter":
        return pipe.model_version
    index = {"image_index": pipe.image_index, "template_index": pipe.template_index}.get(component)
    return getattr(index, "version", None)
