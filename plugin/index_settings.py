"""What the ``index.*`` settings mean to the indexers, for every caller that opens or builds.

The Elasticsearch connection (``es_settings``), the publish checks (``publish_policy``) and the
dense channel's encoder (``make_text_encoder``) are read here once. The hook, the index jobs and
the Elasticsearch image jobs all need them; keeping them out of those modules lets each import
this one instead of one another (they used to form an import cycle).
"""

from __future__ import annotations

import logging

from indexers.errors import IndexStoreError

from .config import Settings

__all__ = ["es_settings", "make_text_encoder", "publish_policy"]

log = logging.getLogger(__name__)


def es_settings(settings: Settings):
    """The ``EsSettings`` of the template backend: URL, alias, API key or basic auth, TLS."""
    from indexers.es_schema import EsSettings

    ix = settings.index
    if not ix.es_url:
        raise IndexStoreError("index.template_backend is elasticsearch but index.es_url is "
                              "not set; set UDRL_INDEX__ES_URL")
    if (ix.es_username is None) != (ix.es_password is None):
        raise IndexStoreError("Elasticsearch basic auth needs both index.es_username and "
                              "index.es_password (UDRL_INDEX__ES_USERNAME, "
                              "UDRL_INDEX__ES_PASSWORD)")
    if not ix.es_verify_certs:
        log.warning("index.es_verify_certs is false: the Elasticsearch certificate is not "
                    "checked; use index.es_ca_certs outside throwaway test clusters")
    return EsSettings(
        hosts=ix.es_url, alias=ix.es_alias,
        api_key=ix.es_api_key.get_secret_value() if ix.es_api_key else None,
        basic_auth=((ix.es_username, ix.es_password.get_secret_value())
                    if ix.es_username is not None and ix.es_password is not None else None),
        ca_certs=str(ix.es_ca_certs) if ix.es_ca_certs is not None else None,
        verify_certs=ix.es_verify_certs)


def publish_policy(settings: Settings, force: bool = False):
    """The publish checks ``index.publish_*`` ask for (``force``: publish even when they fail)."""
    from indexers.publish import PublishPolicy

    ix = settings.index
    return PublishPolicy(min_count_ratio=ix.publish_min_count_ratio,
                         max_reject_rate=ix.publish_max_reject_rate, force=force)


def make_text_encoder(settings: Settings, light: bool = False):
    """The dense channel's sentence encoder (one shared instance per process), or None when
    ``index.dense`` is off. ``light``: for queries, without torch where the model allows
    (``indexers.minilm``)."""
    if not settings.index.dense:
        return None
    from indexers.dense import load_text_encoder

    return load_text_encoder(settings.index.text_model, settings.device, light=light)
