"""The batch jobs the CLI runs: rebuild the image or template index from a catalogue.

Each job takes one frozen config, builds a new version next to the live one, publishes it
atomically (store pointer or alias swap) and returns a JSON-able report dict::

    reindex_images(ImageReindexConfig(source="imgs/manifest.jsonl", store_root="ix/images"))
    reindex_templates(TemplateReindexConfig(source="templates.csv", root="ix/templates"))

Sharded image builds (``shard="i/n"``) write to ``<store_root>/shards/<i>-of-<n>``, its own
store, so the live index at ``store_root`` never serves a partial catalogue;
``merge_images`` then joins the shards and publishes the result at ``store_root``.
"""

from __future__ import annotations

import logging
import os
import sys
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .catalog_templates import read_templates
from .errors import ConfigError, DataError, IndexStoreError
from .images import ImageIndex, ImageIndexConfig
from .query_log import QueryLog, read_query_log, unknown_clicks, write_log_rejects
from .store import IndexStore
from .templates import BACKENDS, TextEncoder, build_template_index

if TYPE_CHECKING:
    from .encoders import ImageEncoder

__all__ = [
    "ImageReindexConfig",
    "TemplateReindexConfig",
    "find_shards",
    "merge_images",
    "reindex_images",
    "reindex_templates",
    "shard_store",
]

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
TANTIVY_REJECTS = "rejects.jsonl"  # default rejects file of a tantivy job, under its root


def _path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else str(Path(value))


def _previous(store_root: str | os.PathLike[str]) -> str | None:
    """Name of the live version, None when there is none (or its pointer is broken)."""
    try:
        cur = IndexStore(store_root).current()
    except IndexStoreError as e:  # a dangling CURRENT is what a rebuild repairs
        log.warning("%s", e)
        return None
    return cur.name if cur is not None else None


def _note(progress: bool, msg: str) -> None:
    if progress:  # progress goes to stderr with the bars; stdout stays for the report
        tqdm.write(msg, file=sys.stderr)
    else:
        log.info(msg)


@dataclass(frozen=True)
class ImageReindexConfig:
    """What ``reindex_images`` encodes, with which model, and where the index goes."""

    # Image folder or JSONL manifest (see indexers.catalog_images).
    source: str | os.PathLike[str]
    # IndexStore directory the service opens; a shard build writes below it (see shard_store).
    store_root: str | os.PathLike[str]
    # open_clip architecture, e.g. "ViT-B-32"; "udrl-tiny-clip" for tests.
    model_name: str = "ViT-B-32"
    # open_clip pretrained tag or checkpoint path; None = seeded random weights (tests only).
    pretrained: str | None = "laion2b_s34b_b79k"
    # FAISS index: flat | hnsw | ivf | auto (flat below 50,000 vectors, else hnsw).
    index_type: str = "auto"
    # Images per encoder forward pass; 8-256 (memory grows with batch x image size).
    batch_size: int = 64
    # "i/n" encodes only ids with crc32(id) % n == i into <store_root>/shards/<i>-of-<n>;
    # None encodes everything and publishes at store_root.
    shard: str | None = None
    # Also copy the build's rejects (JSONL file/line/id/reason) here; None = only the copy in
    # the version directory.
    rejects_path: str | os.PathLike[str] | None = None
    # torch device for the encoder built from this config ("cpu", "cuda", "cuda:1").
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("source", "store_root"):
            if not str(getattr(self, name) or "").strip():
                raise ConfigError(f"ImageReindexConfig.{name} is missing; give a path")
        self.index_config()  # validates index_type, batch_size and shard

    def index_config(self) -> ImageIndexConfig:
        """The ``ImageIndexConfig`` the builder takes (FAISS parameters at their defaults)."""
        return ImageIndexConfig(
            model_name=self.model_name,
            pretrained=self.pretrained,
            index_type=self.index_type,
            batch_size=self.batch_size,
            shard=self.shard,
        )


def shard_store(store_root: str | os.PathLike[str], shard: str) -> Path:
    """Where the build of ``shard`` ("i/n") under ``store_root`` goes: ``shards/<i>-of-<n>``."""
    spec = ImageIndexConfig(pretrained=None, shard=shard).shard_spec()
    assert spec is not None
    return Path(store_root) / SHARDS_DIR / f"{spec[0]}-of-{spec[1]}"


def find_shards(store_root: str | os.PathLike[str]) -> list[Path]:
    """The shard stores ``reindex_images`` wrote under ``store_root``, in shard order."""
    found = [p for p in (Path(store_root) / SHARDS_DIR).glob("*-of-*") if p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-of-")[0]))


def _version_fields(rep, previous: str | None) -> dict[str, Any]:
    """Report fields every image build shares (``rep`` is an ``image_build.BuildReport``)."""
    return {
        "version": str(rep.version),
        "version_name": rep.version.name,
        "previous_version": previous,
        "encoder": rep.encoder,
        "index_type": rep.index_type,
        "count": rep.count,
    }


def reindex_images(
    cfg: ImageReindexConfig, encoder: ImageEncoder | None = None, progress: bool = True
) -> dict[str, Any]:
    """Encode the catalogue and publish a new image index version (resuming a killed run).

    Args:
        cfg: the job; see ``ImageReindexConfig``.
        encoder: an ``ImageEncoder``; None builds ``ClipEncoder(cfg.model_name,
            cfg.pretrained, cfg.device)``.
        progress: show the builder's progress bar and print a summary line.

    Returns:
        JSON-able report: ``version`` (path) and ``version_name``, ``previous_version``,
        ``store_root`` (where it was published), ``shard``, ``encoder``, ``index_type``,
        ``count``, ``encoded``, ``resumed``, ``rejected``, ``rejects_path`` (the copy in the
        version) and ``rejects_copy``, ``skipped_other_shards``, ``images_per_s``,
        ``encode_seconds``, ``seconds``.

    Raises:
        DataError: missing catalogue or nothing encodable. ModelError: the model cannot load.
        IndexStoreError: another build holds the version being resumed.
    """
    from .image_build import build_image_index, encoder_from_config  # torch: load on use

    t0 = time.perf_counter()
    index_cfg = cfg.index_config()
    target = shard_store(cfg.store_root, cfg.shard) if cfg.shard else Path(cfg.store_root)
    previous = _previous(target)
    if encoder is None:
        encoder = encoder_from_config(index_cfg, device=cfg.device)
    rep = build_image_index(cfg.source, target, encoder, index_cfg, progress=progress)
    copy = None
    if cfg.rejects_path is not None:
        copy = Path(cfg.rejects_path)
        copy.parent.mkdir(parents=True, exist_ok=True)
        if rep.rejects_path.exists():
            shutil.copyfile(rep.rejects_path, copy)
        else:  # nothing rejected: the builder wrote no file; leave an empty report anyway
            copy.write_text("")
    return {
        "job": "reindex_images",
        "source": _path(cfg.source),
        "store_root": str(target),
        "shard": cfg.shard,
        **_version_fields(rep, previous),
        "encoded": rep.encoded,
        "resumed": rep.resumed,
        "rejected": rep.rejected,
        "rejects_path": str(rep.rejects_path),
        "rejects_copy": _path(copy),
        "skipped_other_shards": rep.skipped_other_shards,
        "images_per_s": round(rep.images_per_s, 2),
        "encode_seconds": round(rep.encode_seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def merge_images(
    shard_dirs: Sequence[str | os.PathLike[str]] | None,
    store_root: str | os.PathLike[str],
    index_type: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Join shard stores into one index and publish it at ``store_root``.

    Args:
        shard_dirs: shard store directories; None or empty = ``find_shards(store_root)``.
        store_root: the store the service opens.
        index_type: flat | hnsw | ivf | auto for the merged index; None = the shards' own.
        progress: print a summary line.

    Returns:
        JSON-able report: ``version``, ``version_name``, ``previous_version``, ``store_root``,
        ``shards``, ``encoder``, ``index_type``, ``count``, ``rejected``, ``rejects_path``,
        ``seconds``.

    Raises:
        ConfigError: no shards, or they do not form a complete set "i/n". DataError: an id
        occurs in two shards. EncoderMismatchError: shards from different encoders.
    """
    from .image_build import merge_image_shards  # torch: load on use

    t0 = time.perf_counter()
    dirs = [Path(d) for d in shard_dirs] if shard_dirs else find_shards(store_root)
    if not dirs:
        raise ConfigError(
            f"no shards to merge: none given and none under {Path(store_root) / SHARDS_DIR}; "
            "run reindex_images with shard='i/n' for every i first"
        )
    cfg = None
    if index_type is not None:
        first = ImageIndex.open(IndexStore(dirs[0]).open_current())
        cfg = replace(ImageIndexConfig(**first.meta["config"]), shard=None, index_type=index_type)
    previous = _previous(store_root)
    rep = merge_image_shards(dirs, store_root, cfg)
    out = {
        "job": "merge_images",
        "store_root": str(Path(store_root)),
        "shards": [str(d) for d in dirs],
        **_version_fields(rep, previous),
        "rejected": rep.rejected,
        "rejects_path": str(rep.rejects_path),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _note(progress, f"merged {len(dirs)} shards: {rep.count} images -> {rep.version}")
    return out


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
    # JSONL file for rejected catalogue lines (file/line/id/reason), replaced each run;
    # None = <root>/rejects.jsonl for tantivy, no file for elasticsearch.
    rejects_path: str | os.PathLike[str] | None = None
    # tantivy: published versions to keep after the swap (the live one always stays); >= 1.
    keep_versions: int = 3
    # elasticsearch: keep the previous index after the swap (for rollback).
    keep_old: bool = True
    # Query log (``query`` or ``query<TAB>clicked_id`` lines, see indexers.query_log): each
    # template is expanded with the logged queries that clicked it. None: no expansion.
    log_path: str | os.PathLike[str] | None = None
    # Logged queries kept per template (the most clicked first), 1..1000.
    log_max_per_item: int = 50

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
                hosts=self.es_url, alias=self.alias, api_key=self.api_key, keep_old=self.keep_old
            )
        }


def _read_log(cfg: TemplateReindexConfig,
              ids: set[str]) -> tuple[QueryLog | None, dict[str, Any] | None]:
    """The job's query log and what it says about the catalogue (None without a log)."""
    if cfg.log_path is None:
        return None, None
    qlog, rejects = read_query_log(cfg.log_path)
    report: dict[str, Any] = {"file": _path(cfg.log_path), "checksum": qlog.checksum(),
                              **qlog.summary(), "rejected_lines": len(rejects),
                              "clicks_on_unknown_ids": unknown_clicks(qlog, ids)}
    if rejects:
        base = cfg.rejects_file()
        where = (base.parent if base else Path(cfg.log_path).parent) / "log_rejects.jsonl"
        report["rejects_file"] = str(write_log_rejects(where, rejects))
        log.warning("%d query-log lines rejected; see %s", len(rejects), where)
    if report["clicks_on_unknown_ids"]:
        log.warning("%d logged clicks name ids the catalogue does not hold; they are ignored",
                    report["clicks_on_unknown_ids"])
    return qlog, report


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
        ``ok``, ``checksum``, ``seconds``.

    Raises:
        DataError: the catalogue cannot be read or holds no valid template (nothing is
            published then; the live version keeps serving).
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
