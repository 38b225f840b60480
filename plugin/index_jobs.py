"""Index jobs behind the CLI: build, publish, merge and roll back the image and template
indexes (FAISS or Elasticsearch images, tantivy or Elasticsearch templates). Each job takes
:class:`plugin.config.Settings` and returns a JSON-able report that the CLI prints; what the
``index.*`` settings mean (connection, publish checks, text encoder) is read in
``plugin.index_settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rewriters.errors import ConfigError

from .config import Settings
from .index_settings import es_settings, make_text_encoder, publish_policy

__all__ = [
    "index_images_job",
    "index_templates_job",
    "merge_images_job",
    "rollback_job",
]


def index_images_job(settings: Settings, source: Path, shard: str | None = None,
                     rejects: Path | None = None, log: Path | None = None,
                     progress: bool = True, force: bool = False, ray: str | None = None,
                     ray_actors: int | None = None) -> dict[str, Any]:
    """Encode a catalogue into a new image-index version and publish it (or one shard), with
    a text channel over the images' titles (expanded with the query log's clicks) when
    ``index.dense`` is on; ``ray``: encode on that Ray address ("local": a Ray of its own)."""
    from indexers.reindex import ImageReindexConfig, reindex_images

    if settings.index.image_backend == "elasticsearch":
        from .es_image_jobs import index_images_es_job

        if ray is not None:
            raise ConfigError("--ray encodes into FAISS stores; leave it out with the "
                              "elasticsearch image backend")
        return index_images_es_job(settings, source, shard, rejects, log, progress, force)
    ix = settings.index
    cfg = ImageReindexConfig(source=source, store_root=settings.image_index_dir,
                             model_name=ix.clip_model, pretrained=ix.pretrained,
                             index_type=ix.image_index_type, batch_size=ix.batch_size,
                             shard=shard, rejects_path=rejects, device=settings.device,
                             log_path=log, policy=publish_policy(settings, force),
                             ray_address=ray, ray_actors=ray_actors)
    return reindex_images(cfg, progress=progress, text_encoder=make_text_encoder(settings))


def merge_images_job(settings: Settings, progress: bool = True,
                     force: bool = False) -> dict[str, Any]:
    """Merge every shard under the image index directory into one published version (on
    Elasticsearch: the shards under the staging store, published as a new index)."""
    from indexers.reindex import merge_images

    if settings.index.image_backend == "elasticsearch":
        from .es_image_jobs import merge_images_es_job

        return merge_images_es_job(settings, progress, force)

    return merge_images(None, settings.image_index_dir, progress=progress,
                        policy=publish_policy(settings, force))


def index_templates_job(settings: Settings, source: Path, rejects: Path | None = None,
                        log: Path | None = None, progress: bool = True,
                        force: bool = False) -> dict[str, Any]:
    """Build a new template-index version from a catalogue (expanded with the query log's
    clicks, with a dense channel and fusion weights fitted on the log) and switch to it
    atomically."""
    from indexers.template_reindex import TemplateReindexConfig, reindex_templates

    from .offline.fusion_fit import fit_fusion

    ix = settings.index
    es = {}
    if ix.template_backend == "elasticsearch":
        e = es_settings(settings)
        es = {"es_url": e.hosts, "api_key": e.api_key, "basic_auth": e.basic_auth,
                  "ca_certs": e.ca_certs, "verify_certs": e.verify_certs}
    cfg = TemplateReindexConfig(source=source, backend=ix.template_backend,
                                root=settings.template_index_dir, alias=ix.es_alias,
                                rejects_path=rejects, log_path=log,
                                keep_versions=ix.keep_versions,
                                policy=publish_policy(settings, force), **es)
    encoder = make_text_encoder(settings)

    def fit(records, qlog):
        return fit_fusion(records, qlog, encoder, progress=progress) if ix.fit_fusion else None

    return reindex_templates(cfg, encoder=encoder, progress=progress, fit=fit)


def rollback_job(settings: Settings, which: str, to: str | None = None) -> dict[str, Any]:
    """Make the version live before the live one (or ``to``) live again: ``which`` is
    "templates" or "images" (a store pointer swap, or an Elasticsearch alias move)."""
    from indexers.publish import rollback_store, rollback_templates

    if which == "images" and settings.index.image_backend == "elasticsearch":
        from .es_image_jobs import rollback_images_es_job

        return {"index": which, **rollback_images_es_job(settings, to)}
    if which == "images":
        return {"index": which, **rollback_store(settings.image_index_dir, to)}
    ix = settings.index
    if ix.template_backend == "tantivy":
        return {"index": which, **rollback_templates("tantivy", settings.template_index_dir,
                                                     to=to)}
    if not ix.es_url:
        raise ConfigError("index.template_backend is elasticsearch but index.es_url is not "
                          "set; pass --es-url or set UDRL_INDEX__ES_URL")
    return {"index": which, **rollback_templates("elasticsearch", es=es_settings(settings),
                                                 to=to)}
