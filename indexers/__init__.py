"""Indexers: CLIP + FAISS image index and template indexes (tantivy, Elasticsearch)."""

__all__ = ["errors", "store"]
