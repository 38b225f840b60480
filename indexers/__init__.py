"""Indexers: CLIP + FAISS image index and template indexes (tantivy, Elasticsearch).

Public modules (import the one you need; importing the package itself loads none of them, so
``import indexers`` stays cheap and never pulls in torch, faiss or a search client)::

    errors             IndexerError hierarchy of the package (a root of its own)
    files              share_tree: a finished version readable as the umask allows
    store              IndexStore: versioned directories with an atomic CURRENT pointer
    catalog_images     image catalogues (folder or JSONL manifest) -> ImageRecord + rejects
    encoders           ClipEncoder (open_clip), the tiny test CLIP
    images             ImageIndex over FAISS, ImageIndexConfig, load_image_index
    image_build        build_image_index (resumable, sharded), merge_image_shards
    image_resume       the commit log of an image build; what a resumed build may reuse
    image_encode       the per-batch encode functions, the runner interface, the local runner
    image_ray          RayRunner: a build's batches on a pool of Ray encoder actors
    image_runners      the encode runners by name (local, ray): make_runner
    image_search       the image index interface (ImageSearchIndex) and its Hit
    image_backends     the image backends by name: open_image_index
    publish            publish checks (count drop, reject rate) and rollback
    catalog_templates  template catalogues (JSONL / CSV) -> TemplateRecord + rejects
    templates          the TemplateIndex interface and the types its backends share
    template_backends  the template backends by name: build/open_template_index
    tantivy_index      the embedded template backend
    es_schema          EsSettings, connect, Elasticsearch mapping and search body
    es_index           the Elasticsearch template backend (search)
    es_build           building and publishing Elasticsearch versions (alias swap)
    es_dense           the Elasticsearch dense channel (nested kNN rows)
    es_hybrid          hybrid template search: BM25 + kNN by RRF (rrf retriever or here)
    es_features        what the cluster's version allows (retrievers, bbq, rescore, base64)
    es_images          the image index on Elasticsearch (mapping, filters, kNN search)
    es_image_build     encode locally, publish an image index behind an alias
    query_log          query logs with clicks (query<TAB>clicked_id)
    jsonl              numbered lines, JSON objects with reject reasons, first_error
    dense              the dense channel: MiniLM centroids and rows in FAISS, exact search
    reindex            the batch jobs the CLI runs: reindex_images, merge_images,
                       each driven by one config object
    template_reindex   the template batch job: reindex_templates
"""

__all__ = [
    "catalog_images",
    "catalog_templates",
    "dense",
    "encoders",
    "errors",
    "es_build",
    "es_dense",
    "es_features",
    "es_hybrid",
    "es_image_build",
    "es_images",
    "es_index",
    "es_schema",
    "files",
    "image_backends",
    "image_build",
    "image_encode",
    "image_ray",
    "image_resume",
    "image_runners",
    "image_search",
    "images",
    "jsonl",
    "publish",
    "query_log",
    "reindex",
    "store",
    "tantivy_index",
    "template_backends",
    "template_reindex",
    "templates",
]
