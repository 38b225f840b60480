"""The udrl-search plugin: settings, batch jobs, CLI (and, next, the pipeline and service)."""

__all__ = ["config", "jobs", "cli", "errors"]
