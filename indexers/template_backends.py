"""The template index backends by name: one registry, and opening or building through it.

::

    build_template_index("tantivy", records, root="indexes/templates")
    index = open_template_index("tantivy", root="indexes/templates")
    index = open_template_index("elasticsearch", settings=EsSettings(hosts=..., alias=...))

The interface the backends implement (``TemplateIndex``, ``TemplateHit``, ``BuildReport``...)
lives in ``indexers.templates``, which imports none of them; this module is the only one that
knows every backend, and it imports each lazily so that using one never loads the other's
client library.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .templates import BuildReport, TemplateIndex

__all__ = [
    "BACKENDS",
    "TEMPLATE_BACKENDS",
    "TemplateBackend",
    "build_template_index",
    "open_template_index",
    "template_backend",
]


@dataclass(frozen=True)
class TemplateBackend:
    """One backend's two entry points."""

    open: Callable[..., TemplateIndex]  # opens the live version (keyword options only)
    build: Callable[..., BuildReport]  # builds a version from records and publishes it


def _tantivy() -> TemplateBackend:
    from .tantivy_index import build_tantivy_index, open_tantivy_index

    return TemplateBackend(open_tantivy_index, build_tantivy_index)


def _elasticsearch() -> TemplateBackend:
    from .es_build import build_es_index  # the elasticsearch client: load only when used
    from .es_index import open_es_index

    return TemplateBackend(open_es_index, build_es_index)


# name -> factory of its entry points. tantivy: ``root`` (the IndexStore directory), ``config``,
# ``encoder``, ``keep_versions``; Elasticsearch: ``settings`` (es_schema.EsSettings with the
# alias), ``encoder``, ``client``, ``config``, ``hybrid``
TEMPLATE_BACKENDS: dict[str, Callable[[], TemplateBackend]] = {
    "tantivy": _tantivy,
    "elasticsearch": _elasticsearch,
}
BACKENDS = tuple(TEMPLATE_BACKENDS)


def template_backend(name: str) -> TemplateBackend:
    """The entry points of backend ``name``.

    Raises:
        ConfigError: an unknown backend (the message lists the known ones).
    """
    factory = TEMPLATE_BACKENDS.get(name)
    if factory is None:
        raise ConfigError(f"unknown template index backend {name!r}; allowed: "
                          f"{', '.join(BACKENDS)}")
    return factory()


def _call(fn: Callable[..., Any], backend: str, *args: Any, **opts: Any) -> Any:
    params = inspect.signature(fn).parameters
    unknown = sorted(set(opts) - set(params))
    if unknown:
        allowed = [p for p in params if p != "records"]
        raise ConfigError(
            f"unknown option(s) {unknown} for the {backend} backend; allowed: {', '.join(allowed)}"
        )
    return fn(*args, **opts)


def open_template_index(backend: str, **opts: Any) -> TemplateIndex:
    """Open the live version of a template index.

    Args:
        backend: ``"tantivy"`` (opts: ``root``, ``config``, ``encoder``) or ``"elasticsearch"``
            (opts: ``settings``, ``encoder``, ``client``, ``config``, ``hybrid``).

    Raises:
        ConfigError: unknown backend or option. IndexStoreError: nothing published yet.
    """
    return _call(template_backend(backend).open, backend, **opts)


def build_template_index(backend: str, records: Sequence[Any], **opts: Any) -> BuildReport:
    """Build a new version from ``records`` (TemplateRecord) and publish it atomically.

    Args:
        backend: ``"tantivy"`` (opts: ``root``, ``config``, ``keep_versions``, ``encoder``...) or
            ``"elasticsearch"`` (opts: ``settings``, ``config``, ``encoder``, ``client``...).

    Returns:
        The BuildReport; per-record failures are listed in it, not raised.
    """
    return _call(template_backend(backend).build, backend, records, **opts)
