"""The udrl-search plugin: pipeline, HTTP service, Python hook, offline jobs, CLI, settings."""

__all__ = [
    "batching", "channels", "cli", "cli_serving", "config", "demo", "errors", "fusion",
    "fusion_fit", "grounded_jobs", "grounding", "hook", "jobs", "offline", "pipeline",
    "published", "reload", "retrieval_eval", "rewrite", "sample_catalog", "service", "trec",
]
