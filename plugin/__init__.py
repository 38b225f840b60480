"""The udrl-search plugin: pipeline, HTTP service, Python hook, offline jobs, CLI, settings.

Serving modules sit here; offline work (evaluation, precomputed rewrites, fitting, the sample
catalogue, the demo) is in the ``plugin.offline`` subpackage.
"""

__all__ = [
    "batching", "channels", "cli", "cli_serving", "config", "errors", "fitted_weights", "fusion",
    "grounded_jobs", "grounding", "hook", "jobs", "offline", "pipeline", "published", "query",
    "reload", "rewrite", "service",
]
