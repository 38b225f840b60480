"""The batch jobs the CLI runs: rebuild the image or template index from a catalogue.

Each job takes one frozen config, builds a new version next to the live one, publishes it
atomically (store pointer or alias swap) and returns a JSON-able report dict::

    reindex_images(ImageReindexConfig(source="imgs/manifest.jsonl", store_root="ix/images"))
    reindex_templates(TemplateReindexConfig(source="templates.csv", root="ix/templates"))

The template job lives in ``template_reindex``; this module holds the image jobs and the
helpers both share.

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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm.auto import tqdm

from .errors import ConfigError, IndexStoreError
from .images import ImageIndex, ImageIndexConfig
from .publish import DEFAULT_POLICY, PublishPolicy
from .query_log import QueryLog, read_query_log, unknown_clicks, write_log_rejects
from .store import IndexStore
from .templates import TextEncoder

if TYPE_CHECKING:
    from .encoders import ImageEncoder

__all__ = [
    "ImageReindexConfig",
    "find_shards",
    "merge_images",
    "reindex_images",
    "shard_store",
]

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"


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
    # Query log (``query<TAB>clicked_id`` lines): each titled image's text channel is expanded
    # with the logged queries that clicked it. None: no expansion. Needs a text encoder.
    log_path: str | os.PathLike[str] | None = None
    # Logged queries kept per image (the most clicked first), 1..1000.
    log_max_per_item: int = 50
    # When the new version may replace the live one (count drop, reject rate, force; see
    # indexers.publish). Shard builds are not checked: their merge is.
    policy: PublishPolicy = DEFAULT_POLICY
    # Encode on Ray (indexers.image_ray): "local" starts a Ray instance for this run, "auto"
    # joins this node's cluster, "ray://head:10001" a remote one. None: encode in this process.
    ray_address: str | None = None
    # Ray encoder actors; None: one per GPU the cluster has, else one per 8 CPUs (fewer on
    # smaller nodes). Only with ray_address.
    ray_actors: int | None = None

    def __post_init__(self) -> None:
        if self.ray_actors is not None and self.ray_address is None:
            raise ConfigError("ray_actors is set but ray_address is not; give --ray too")
        for name in ("source", "store_root"):
            if not str(getattr(self, name) or "").strip():
                raise ConfigError(f"ImageReindexConfig.{name} is missing; give a path")
        if not 1 <= self.log_max_per_item <= 1000:
            raise ConfigError(f"log_max_per_item={self.log_max_per_item} is out of range 1-1000")
        self.index_config()  # validates index_type, batch_size and shard

    def rejects_file(self) -> Path | None:
        """Where the rejects are copied (the log's rejects go beside them)."""
        return Path(self.rejects_path) if self.rejects_path is not None else None

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
        "publish_check": rep.publish_check,
    }


def reindex_images(
    cfg: ImageReindexConfig, encoder: ImageEncoder | None = None, progress: bool = True,
    text_encoder: TextEncoder | None = None,
) -> dict[str, Any]:
    """Encode the catalogue and publish a new image index version (resuming a killed run).

    Args:
        cfg: the job; see ``ImageReindexConfig``.
        encoder: an ``ImageEncoder``; None builds ``ClipEncoder(cfg.model_name,
            cfg.pretrained, cfg.device)``.
        progress: show the builder's progress bar and print a summary line.
        text_encoder: also build the text channel over titles (and the log's clicks); None:
            CLIP only (a log then raises ConfigError).

    Returns:
        JSON-able report: ``version`` (path) and ``version_name``, ``previous_version``,
        ``store_root`` (where it was published), ``shard``, ``encoder``, ``index_type``,
        ``count``, ``encoded``, ``resumed`` and ``changed`` (encoded again: the file changed
        since the interrupted run), ``rejected``, ``rejects_path`` (the copy in the version)
        and ``rejects_copy``, ``skipped_other_shards``, ``publish_check``, ``images_per_s``,
        ``encode_seconds``, ``seconds``.

    Raises:
        DataError: missing catalogue or nothing encodable. ModelError: the model cannot load.
        IndexStoreError: another build holds the version being resumed.
        PublishRefusedError: the publish checks refused (``cfg.policy``).
    """
    from .image_build import build_image_index, encoder_from_config  # torch: load on use

    t0 = time.perf_counter()
    index_cfg = cfg.index_config()
    target = shard_store(cfg.store_root, cfg.shard) if cfg.shard else Path(cfg.store_root)
    previous = _previous(target)
    if cfg.log_path is not None and text_encoder is None:
        raise ConfigError("a query log expands the image index's text channel; turn the dense "
                          "channel on (index.dense) or leave the log out")
    qlog, log_report = _read_log(cfg, None)
    if encoder is None:
        encoder = encoder_from_config(index_cfg, device=cfg.device)
    expansions = qlog.expansions(None, cfg.log_max_per_item) if qlog is not None else None
    runner = _runner(cfg, index_cfg)
    rep = build_image_index(cfg.source, target, encoder, index_cfg, progress=progress,
                            text_encoder=text_encoder, expansions=expansions,
                            extra_meta={"log": log_report} if log_report else None,
                            policy=cfg.policy, runner=runner)
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
        "changed": rep.changed,
        "rejected": rep.rejected,
        "rejects_path": str(rep.rejects_path),
        "rejects_copy": _path(copy),
        "skipped_other_shards": rep.skipped_other_shards,
        "text_channel": text_encoder is not None,
        "log": log_report,
        "images_per_s": round(rep.images_per_s, 2),
        "encode_seconds": round(rep.encode_seconds, 3),
        "runner": rep.runner,
        "ray": None if cfg.ray_address is None else {
            "address": cfg.ray_address, "actors": runner.actors, "device": runner.device},
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _runner(cfg: ImageReindexConfig, index_cfg: ImageIndexConfig):
    """The encode runner the job asks for: None (this process) or a ``RayRunner``."""
    if cfg.ray_address is None:
        return None
    from .image_build import encoder_from_config
    from .image_runners import make_runner
    from .image_ray import RayEncodeConfig, ray_available

    if not ray_available():
        raise ConfigError("--ray needs Ray Data, which is not installed: "
                          "pip install 'udrl-search[ray]' (or 'ray[data]')")
    # the actors choose their device: cuda when the cluster has GPUs (cfg.device is the driver's)
    return make_runner("ray", cfg=RayEncodeConfig(address=cfg.ray_address, actors=cfg.ray_actors),
                       factory=partial(encoder_from_config, index_cfg))


def merge_images(
    shard_dirs: Sequence[str | os.PathLike[str]] | None,
    store_root: str | os.PathLike[str],
    index_type: str | None = None,
    progress: bool = True,
    policy: PublishPolicy = DEFAULT_POLICY,
) -> dict[str, Any]:
    """Join shard stores into one index and publish it at ``store_root``.

    Args:
        shard_dirs: shard store directories; None or empty = ``find_shards(store_root)``.
        store_root: the store the service opens.
        index_type: flat | hnsw | ivf | auto for the merged index; None = the shards' own.
        progress: print a summary line.
        policy: the publish checks against the live version at ``store_root``.

    Returns:
        JSON-able report: ``version``, ``version_name``, ``previous_version``, ``store_root``,
        ``shards``, ``encoder``, ``index_type``, ``count``, ``publish_check``, ``rejected``,
        ``rejects_path``, ``seconds``.

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
    rep = merge_image_shards(dirs, store_root, cfg, policy)
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


class _LoggedJob(Protocol):
    """What ``_read_log`` reads of a job's config (image or template job)."""

    @property
    def log_path(self) -> str | os.PathLike[str] | None: ...

    def rejects_file(self) -> Path | None: ...


def _read_log(cfg: _LoggedJob,
              ids: set[str] | None) -> tuple[QueryLog | None, dict[str, Any] | None]:
    """The job's query log and what it says about the catalogue (None without a log; ids None:
    the catalogue is not read yet, clicks on unknown ids are not counted)."""
    if cfg.log_path is None:
        return None, None
    qlog, rejects = read_query_log(cfg.log_path)
    report: dict[str, Any] = {"file": _path(cfg.log_path), "checksum": qlog.checksum(),
                              **qlog.summary(), "rejected_lines": len(rejects)}
    if ids is not None:
        report["clicks_on_unknown_ids"] = unknown_clicks(qlog, ids)
    if rejects:
        base = cfg.rejects_file()
        where = (base.parent if base else Path(cfg.log_path).parent) / "log_rejects.jsonl"
        report["rejects_file"] = str(write_log_rejects(where, rejects))
        log.warning("%d query-log lines rejected; see %s", len(rejects), where)
    if report.get("clicks_on_unknown_ids"):
        log.warning("%d logged clicks name ids the catalogue does not hold; they are ignored",
                    report["clicks_on_unknown_ids"])
    return qlog, report
