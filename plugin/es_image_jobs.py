"""The image index on Elasticsearch (``index.image_backend = "elasticsearch"``): settings to
library wiring for building, merging, rolling back and opening it. No argument parsing here.

The CLIP vectors are encoded in this process into a staging store,
``<workspace>/indexes/images-es`` (resume, and ``--force`` after a refusal without encoding
again); the index itself is an Elasticsearch index per build behind ``index.es_image_alias``,
on ``index.es_url`` with the template backend's credentials and TLS settings.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from rewriters.errors import ConfigError

from .config import Settings
from .index_settings import es_settings, publish_policy

__all__ = [
    "es_image_config",
    "image_es_settings",
    "index_images_es_job",
    "merge_images_es_job",
    "open_es_images",
    "rollback_images_es_job",
    "staging_dir",
]

log = logging.getLogger(__name__)


def staging_dir(settings: Settings) -> Path:
    """Where the Elasticsearch image builds keep their encoded vectors (and shards)."""
    return settings.workspace / "indexes" / "images-es"


def image_es_settings(settings: Settings):
    """``EsSettings`` of the image index: the template backend's connection, the image alias
    (``index.es_image_alias``) and ``index.es_image_num_candidates``."""
    ix = settings.index
    if not ix.es_url:
        raise ConfigError("index.image_backend is elasticsearch but index.es_url is not set; "
                          "pass --es-url or set UDRL_INDEX__ES_URL")
    if ix.es_image_alias == ix.es_alias:
        raise ConfigError(f"index.es_image_alias and index.es_alias are both "
                          f"{ix.es_alias!r}; the image index needs an alias of its own")
    return replace(es_settings(settings), alias=ix.es_image_alias,
                   num_candidates=ix.es_image_num_candidates)


def es_image_config(settings: Settings):
    """``EsImageConfig`` from ``index.es_image_*`` (index options and query-time defaults)."""
    from indexers.es_images import EsImageConfig

    ix = settings.index
    return EsImageConfig(index_type=ix.es_image_index_type, m=ix.es_image_m,
                         ef_construction=ix.es_image_ef_construction,
                         num_candidates=ix.es_image_num_candidates,
                         oversample=ix.es_image_oversample)


def _no_text_channel(settings: Settings, log_path: Path | None) -> None:
    if log_path is not None:
        raise ConfigError("--log expands the image index's text channel, which the "
                          "Elasticsearch image backend does not have; leave --log out or use "
                          "--backend faiss")
    if settings.index.dense:
        log.info("the Elasticsearch image index has no text (MiniLM) channel; images are "
                 "searched by CLIP only")


def index_images_es_job(settings: Settings, source: Path, shard: str | None = None,
                        rejects: Path | None = None, log_path: Path | None = None,
                        progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Encode a catalogue and publish it as a new Elasticsearch index behind the image alias
    (a shard: encode it into the staging store; ``merge_images_es_job`` publishes the merge).
    """
    from indexers.es_image_build import build_es_image_index
    from indexers.images import ImageIndexConfig
    from indexers.reindex import ImageReindexConfig, reindex_images

    _no_text_channel(settings, log_path)
    ix = settings.index
    es = image_es_settings(settings)
    if shard is not None:
        cfg = ImageReindexConfig(source=source, store_root=staging_dir(settings),
                                 model_name=ix.clip_model, pretrained=ix.pretrained,
                                 index_type="flat", batch_size=ix.batch_size, shard=shard,
                                 rejects_path=rejects, device=settings.device)
        return {**reindex_images(cfg, progress=progress), "backend": "elasticsearch",
                "alias": es.alias}
    from indexers.image_build import encoder_from_config  # torch: load on use

    cfg = ImageIndexConfig(model_name=ix.clip_model, pretrained=ix.pretrained,
                           batch_size=ix.batch_size)
    out = build_es_image_index(
        source, staging_dir(settings), es, es_image_config(settings),
        encoder_from_config(cfg, settings.device), cfg, progress=progress,
        policy=publish_policy(settings, force), keep_versions=ix.keep_versions)
    return {"job": "reindex_images", "backend": "elasticsearch", "source": str(source),
            "alias": es.alias, **out, "rejects_copy": _copy(out["rejects_path"], rejects)}


def _copy(path: str, to: Path | None) -> str | None:
    if to is None:
        return None
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, to) if Path(path).exists() else to.write_text("")
    return str(to)


def merge_images_es_job(settings: Settings, progress: bool = True,
                        force: bool = False) -> dict[str, Any]:
    """Merge the shards encoded into the staging store and publish them to Elasticsearch."""
    from indexers.es_image_build import publish_staged
    from indexers.reindex import merge_images

    es = image_es_settings(settings)
    # the checks run once, against what the alias serves (publish_staged), not the staging store
    merged = merge_images(None, staging_dir(settings), index_type="flat", progress=progress,
                          policy=None)
    out = publish_staged(merged["version"], es, es_image_config(settings),
                         policy=publish_policy(settings, force),
                         keep_versions=settings.index.keep_versions,
                         what="the merged shards")
    return {"job": "merge_images", "backend": "elasticsearch", "alias": es.alias,
            "shards": merged["shards"], **out}


def rollback_images_es_job(settings: Settings, to: str | None = None) -> dict[str, Any]:
    """Move the image alias back to the index live before the live one (or ``to``)."""
    from indexers.publish import rollback_images

    return rollback_images("elasticsearch", es=image_es_settings(settings), to=to)


def open_es_images(settings: Settings, clip: bool = True):
    """(the live Elasticsearch image index, its CLIP encoder or None without ``clip``)."""
    from indexers.image_backends import open_image_index

    es = image_es_settings(settings)
    config = es_image_config(settings)
    if not clip:
        return open_image_index("elasticsearch", settings=es, config=config), None
    from indexers.encoders import ClipEncoder

    encoder = ClipEncoder(settings.index.clip_model, settings.index.pretrained,
                          device=settings.device)
    return open_image_index("elasticsearch", settings=es, encoder_name=encoder.name,
                            dim=encoder.dim, config=config), encoder
