"""The template re-index job: read a catalogue (and a query log), check it against the live
version, build a new template index version and publish it atomically::

    reindex_templates(TemplateReindexConfig(source="templates.csv", root="ix/templates"))

The publish checks (``indexers.publish``) run before anything is built: a catalogue that lost
too many templates against the live version, or whose records were mostly rejected, raises
``PublishRefusedError`` and leaves the live version serving.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog_templates import read_templates
from .errors import ConfigError, DataError
from .publish import DEFAULT_POLICY, PublishPolicy, check_publish, enforce, store_live_version
from .query_log import QueryLog
from .reindex import _note, _path, _read_log
from .template_backends import BACKENDS, build_template_index
from .templates import TextEncoder

__all__ = ["TemplateReindexConfig", "reindex_templates"]

TANTIVY_REJECTS = "rejects.jsonl"  # default rejects file of a tantivy job, under its root


@dataclass(frozen=True)
class TemplateReindexConfig:
    """What ``reindex_templates`` reads and which template backend it publishes to."""

    # Template catalogue, .jsonl or .csv (see indexers.catalog_templates).
    source: str | os.PathLike[str]
    # "tantivy" (embedded, files under root) or "elasticsearch" (alias swap on a cluster).
    backend: str = "tantivy"
    # tantivy: the IndexStore directory; required for tantivy, ignored otherwise.
    root: str | os.PathLike[str] | None = None
    # elasticsearch: cluster URL, e.g. "https://es.internal:9200"; required for elasticsearch.
    es_url: str | None = None
    # elasticsearch: the alias searches use; builds create "<alias>-v<timestamp>" behind it.
    alias: str = "udrl-templates"
    # elasticsearch: API key (encoded string); None for an open cluster.
    api_key: str | None = None
    # elasticsearch: (user, password) for basic auth; ignored when api_key is set.
    basic_auth: tuple[str, str] | None = None
    # elasticsearch: PEM file of the CA that signed the cluster's certificate (https).
    ca_certs: str | None = None
    # elasticsearch: verify the cluster's TLS certificate; False for throwaway clusters only.
    verify_certs: bool = True
    # JSONL file for rejected catalogue lines (file/line/id/reason), replaced each run;
    # None = <root>/rejects.jsonl for tantivy, no file for elasticsearch.
    rejects_path: str | os.PathLike[str] | None = None
    # tantivy: published versions to keep after the swap (the live one and the one live
    # before it always stay); >= 1.
    keep_versions: int = 3
    # elasticsearch: True keeps every older index after the swap; False deletes those older
    # than the one live before (that one stays, for rollback).
    keep_old: bool = True
    # Query log (``query`` or ``query<TAB>clicked_id`` lines, see indexers.query_log): each
    # template is expanded with the logged queries that clicked it. None: no expansion.
    log_path: str | os.PathLike[str] | None = None
    # Logged queries kept per template (the most clicked first), 1..1000.
    log_max_per_item: int = 50
    # When the new version may replace the live one: the document-count and reject-rate
    # checks, or force (see indexers.publish).
    policy: PublishPolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown template backend {self.backend!r}; allowed: {', '.join(BACKENDS)}"
            )
        if not str(self.source or "").strip():
            raise ConfigError("TemplateReindexConfig.source is missing; give a .jsonl or .csv")
        if self.backend == "tantivy" and not str(self.root or "").strip():
            raise ConfigError("backend 'tantivy' needs the option root (the index directory)")
        if self.backend == "elasticsearch" and not (self.es_url or "").strip():
            raise ConfigError(
                "backend 'elasticsearch' needs the option es_url (e.g. 'http://localhost:9200')"
            )
        if self.keep_versions < 1:
            raise ConfigError(f"keep_versions={self.keep_versions} is out of range; use >= 1")
        if not 1 <= self.log_max_per_item <= 1000:
            raise ConfigError(f"log_max_per_item={self.log_max_per_item} is out of range 1-1000")

    def rejects_file(self) -> Path | None:
        """Where the rejects go (see ``rejects_path``)."""
        if self.rejects_path is not None:
            return Path(self.rejects_path)
        return Path(self.root) / TANTIVY_REJECTS if self.backend == "tantivy" else None

    def build_options(self) -> dict[str, Any]:
        """Keyword options of ``build_template_index`` for this backend."""
        if self.backend == "tantivy":
            return {"root": self.root, "keep_versions": self.keep_versions}
        from .es_schema import EsSettings  # the elasticsearch client: load only when used

        return {
            "settings": EsSettings(
                hosts=self.es_url, alias=self.alias, api_key=self.api_key, keep_old=self.keep_old,
                basic_auth=self.basic_auth, ca_certs=self.ca_certs, verify_certs=self.verify_certs,
            )
        }


def _live(cfg: TemplateReindexConfig) -> tuple[str | None, int | None]:
    """(live version or index, its document count); (None, None) before the first build."""
    if cfg.backend == "tantivy":
        return store_live_version(cfg.root)
    from .es_build import es_live_version  # the elasticsearch client: load only when used

    return es_live_version(cfg.build_options()["settings"])


def reindex_templates(
    cfg: TemplateReindexConfig, encoder: TextEncoder | None = None, progress: bool = True,
    fit: Callable[[Sequence[Any], QueryLog | None], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Read the catalogue (and the query log), build a new template index version and
    publish it atomically.

    Args:
        cfg: the job; see ``TemplateReindexConfig``.
        encoder: a ``TextEncoder`` for the dense channel (tantivy: FAISS in the version
            directory; elasticsearch: a kNN field).
        progress: print a summary line (the template builders have no per-document bar).
        fit: called with the records and the log before the build; what it returns is stored
            with the version as its fusion weights (``TemplateIndex.fusion_params``).

    Returns:
        JSON-able report: ``backend``, ``source``, ``version``, ``previous_version``,
        ``doc_count``, ``records``, ``rejected`` and ``rejects_file``, ``failed`` and
        ``failures`` (``{"id", "reason", "status"}`` per document the backend refused),
        ``ok``, ``checksum``, ``publish_check`` (``PublishCheck.as_dict``), ``seconds``.

    Raises:
        DataError: the catalogue cannot be read or holds no valid template (nothing is
            published then; the live version keeps serving).
        PublishRefusedError: the catalogue lost too many templates against the live version
            or had too many rejects (``cfg.policy``); nothing was built or published.
        IndexStoreError: the build or swap failed; the live version keeps serving.
    """
    t0 = time.perf_counter()
    rejects_file = cfg.rejects_file()
    catalog = read_templates(cfg.source, rejects_file)
    if not catalog.records:
        where = f"; see {rejects_file}" if rejects_file else ""
        raise DataError(
            f"{cfg.source} holds no valid template ({len(catalog.rejects)} rejected{where}); "
            "nothing was published and the live version is unchanged"
        )
    check = check_publish(len(catalog.records), len(catalog.rejects), *_live(cfg), cfg.policy)
    enforce(check, str(cfg.source), rejects_file)
    qlog, log_report = _read_log(cfg, {r.id for r in catalog.records})
    opts = cfg.build_options()
    if encoder is not None:
        opts["encoder"] = encoder
    extra: dict[str, Any] = {"log": log_report} if log_report else {}
    if fit is not None:
        fitted = fit(catalog.records, qlog)
        if fitted:
            extra["fusion"] = fitted
    if qlog is not None:
        opts["expansions"] = qlog.expansions({r.id for r in catalog.records},
                                             cfg.log_max_per_item)
    if extra:
        opts["extra_meta"] = extra
    rep = build_template_index(cfg.backend, catalog.records, **opts)
    out = {
        "job": "reindex_templates",
        "backend": rep.backend,
        "source": _path(cfg.source),
        "version": rep.version,
        "previous_version": rep.previous_version,
        "doc_count": rep.doc_count,
        "records": len(catalog.records),
        "rejected": len(catalog.rejects),
        "rejects_file": _path(rejects_file),
        "failed": len(rep.failures),
        "failures": [
            {"id": f.id, "reason": f.reason, "status": f.status} for f in rep.failures
        ],
        "ok": rep.ok,
        "checksum": rep.checksum,
        "publish_check": check.as_dict(),
        "dense": encoder is not None,
        "log": log_report,
        "fusion": extra.get("fusion"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _note(
        progress,
        f"{rep.backend} templates: {rep.doc_count} indexed, {out['rejected']} rejected"
        f"{f' -> {rejects_file}' if rejects_file else ''}, {out['failed']} refused; "
        f"live version {rep.version} (was {rep.previous_version})",
    )
    return out
