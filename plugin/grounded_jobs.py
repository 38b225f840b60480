"""Catalogue-grounded distillation: the query source, the grounder, the teacher and the
retrieval return, wired from the settings and the workspace's indexes.

* Queries come from a query log (``query<TAB>clicked_id``), a seed file (``query<TAB>intent``)
  or, with neither, pseudo-queries drawn from the catalogue itself (:func:`pseudo_queries`).
* The catalogue teacher (``rewriters.catalog_teacher``) and the retrieval return
  (``rewriters.retrieval_return``) both read the catalogue through one
  :class:`plugin.grounding.IndexGrounder` over the live template index (with its dense channel
  and fitted fusion weights), the image index's metadata and the log's clicks.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from rewriters.commands import INTENTS
from rewriters.errors import DataError
from rewriters.queries import QuerySpec

from .config import Settings
from .fitted_weights import fusion_weights
from .grounding import IndexGrounder

__all__ = ["WORKSPACE_LOG", "catalogue_queries", "open_grounder", "pseudo_queries",
           "query_log_of", "read_query_source", "is_query_log"]

WORKSPACE_LOG = "query_log.tsv"  # the log distillation used, kept for train and eval

log = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W_]+")


def is_query_log(path: Path) -> bool:
    """True when a TAB-separated second column names clicked ids rather than intents."""
    try:
        with path.open(encoding="utf-8") as fh:
            for n, line in zip(range(2000), fh):
                if line.lstrip().startswith("#"):
                    continue
                parts = line.rstrip("\r\n").split("\t")
                second = parts[1].strip().lower() if len(parts) == 2 else ""
                if second and second not in INTENTS:
                    return True
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"query file {path} cannot be read: {e}") from e
    return False


def read_query_source(path: Path):
    """Queries to distil from ``path``, and its query log when it is one.

    Returns:
        (specs in first-seen order, ``QueryLog`` or None for a seed file).
    """
    from indexers.query_log import read_query_log
    from rewriters.queries import read_queries

    if not is_query_log(path):
        return read_queries(path), None
    qlog, rejects = read_query_log(path)
    if rejects:
        log.warning("%d query-log lines rejected, e.g. %s:%d: %s", len(rejects), rejects[0].file,
                    rejects[0].line, rejects[0].reason)
    return [QuerySpec(text) for text in qlog.texts.values()], qlog


def query_log_of(settings: Settings):
    """The query log named by ``queries_file``, else the one `udrl distill` kept in the
    workspace (None for a seed file or no log)."""
    path = settings.queries_file or settings.workspace / WORKSPACE_LOG
    if settings.queries_file is None and not path.is_file():
        return None
    return read_query_source(path)[1]


def pseudo_queries(documents, n: int, seed: int = 0, intent: str | None = None
                   ) -> list[QuerySpec]:
    """Search-like queries drawn from catalogue items when there is no log: a span of one to
    three words of a title, a tag, or a category with a title word (seeded, distinct), each
    labelled ``intent`` (the kind of catalogue it was drawn from)."""
    docs = [d for d in documents if getattr(d, "title", "")]
    if not docs:
        raise DataError("the template index holds no titled items to draw pseudo-queries from; "
                        "pass --queries with a query log or seed file")
    rng = random.Random(seed)
    out: dict[str, QuerySpec] = {}
    for _ in range(n * 20):
        if len(out) >= n:
            break
        d = rng.choice(docs)
        words = _WORD.findall(d.title.casefold())
        kind = rng.random()
        if kind < 0.6 and words:
            size = rng.randint(1, min(3, len(words)))
            start = rng.randint(0, len(words) - size)
            q = " ".join(words[start:start + size])
        elif kind < 0.85 and d.tags:
            q = str(rng.choice(d.tags)).casefold()
        elif getattr(d, "category", "") and words:
            q = f"{d.category.casefold()} {rng.choice(words)}"
        else:
            continue
        q = " ".join(q.split())
        if q:
            out.setdefault(q, QuerySpec(q, intent))
    return list(out.values())


def open_grounder(settings: Settings, qlog=None) -> IndexGrounder | None:
    """An ``IndexGrounder`` over the workspace's indexes; None when neither index exists."""
    from .hook import open_indexes
    from .index_settings import make_text_encoder

    template_index, image_index = open_indexes(settings, clip=False)
    if template_index is None and image_index is None:
        return None
    weights = fusion_weights(settings.pipeline, getattr(template_index, "fusion_params", None))
    return IndexGrounder(template_index, qlog, weights, image_index,
                         make_text_encoder(settings))


def catalogue_queries(settings: Settings, n: int, seed: int = 0) -> list[QuerySpec]:
    """Pseudo-queries from the workspace's catalogues: templates (intent "template") and
    images' titles and tags (intent "image"), in proportion to their sizes."""
    from types import SimpleNamespace

    from .hook import open_indexes

    templates, images = open_indexes(settings, clip=False)
    groups = []
    if templates is not None:
        groups.append(("template", templates.documents()))
    if images is not None:
        groups.append(("image", [SimpleNamespace(title=str(m.get("title") or ""),
                                                 tags=list(m.get("tags") or ()), category="")
                                 for m in images.metadata]))
    groups = [(i, d) for i, d in groups if d]
    if not groups:
        raise DataError("no catalogue index to draw pseudo-queries from; build one with "
                        "`udrl index templates` or pass --queries")
    total = sum(len(d) for _, d in groups)
    out: list[QuerySpec] = []
    for g, (intent, docs) in enumerate(groups):
        share = n - len(out) if g == len(groups) - 1 else round(n * len(docs) / total)
        out += pseudo_queries(docs, share, seed + g, intent)
    return out
