"""Runtime settings: one pydantic object that every command and the service read.

Precedence, highest first: explicit overrides (CLI flags) > environment (``UDRL_*``, nested with
``__``, e.g. ``UDRL_TEACHER__KIND=openai``) > TOML file (``--config``, ``UDRL_CONFIG`` or
``./udrl.toml``) > defaults. Library code never reads the environment; it gets values from here.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource

from indexers.jsonl import first_error
from rewriters.errors import ConfigError

__all__ = [
    "Settings",
    "TeacherSettings",
    "TrainSettings",
    "IntentSettings",
    "GenerationSettings",
    "IndexSettings",
    "load_settings",
    "with_overrides",
    "get_settings",
    "PipelineSettings",
    "ServiceSettings",
    "DEFAULT_CONFIG_FILE",
]

DEFAULT_CONFIG_FILE = "udrl.toml"


class TeacherSettings(BaseModel):
    """Where distilled data comes from."""

    # catalog: offline, grounded in the workspace's indexes and query log; builtin: offline
    # composer of its own vocabulary; openai: an LLM; auto: catalog when an index exists
    kind: Literal["auto", "catalog", "builtin", "openai"] = "auto"
    base_url: str = "http://localhost:8000/v1"  # OpenAI-compatible endpoint (vLLM, Ollama, ...)
    model: str = "meta-llama/Meta-Llama-3-8B-Instruct"  # model name the endpoint serves
    api_key: SecretStr | None = None  # Bearer token, if the endpoint needs one
    concurrency: int = Field(8, ge=1, le=256)  # requests in flight
    timeout_s: float = Field(60.0, gt=0)  # per request
    max_retries: int = Field(4, ge=0, le=20)  # on 429/5xx/timeouts/malformed replies
    prompts_per_task: int = Field(4, ge=1, le=64)  # prompts asked per query and task
    seed: int = 0


class TrainSettings(BaseModel):
    """Rewriter training; mirrors rewriters.train.TrainConfig (see its field comments)."""

    base_model: str = "scratch"  # "scratch", a pretrained GPT-2 name, or a local directory
    preset: Literal["tiny", "small", "gpt2"] = "small"  # scratch architecture
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    held_out: float = Field(0.1, gt=0, lt=1)
    rounds: int = Field(2, ge=0, le=20)  # UDRL rounds: explore, score what is retrieved, add
    round_steps: int = Field(300, ge=1)
    explore_per_round: int = Field(512, ge=1)
    eval_commands: int = Field(200, ge=10)
    marker_every: int = Field(3, ge=0, le=39)  # length markers <|r=k|> where k % this == 0 ...
    marker_tail: int = Field(3, ge=0, le=39)  # ... and before each of the last this many words
    # catalogue neighbours' titles the rewriter reads after <|ctx|> (dense channel's top items;
    # training queries see them without their own clicks); 0: the query alone
    context_items: int = Field(5, ge=0, le=20)
    export: Literal["int8", "int8_float32", "float32", "none"] = "int8"  # CTranslate2 export
    # ONNX Runtime export; int4: fastest at batch 1, int8: fastest under batching
    export_onnx: Literal["int8", "int4", "float32", "none"] = "int8"
    seed: int = 0


class IntentSettings(BaseModel):
    """Intent detection."""

    threshold: float = Field(0.5, ge=0, le=1)  # below this top probability, route to both
    epochs: int = Field(30, ge=1)
    held_out: float = Field(0.2, gt=0, lt=1)  # share of queries for the accuracy report
    seed: int = 0


class GenerationSettings(BaseModel):
    """Defaults for `udrl rewrite` and the service."""

    # `udrl rewrite`'s decoding; None: pipeline.decoding, what the service does (greedy, and
    # sampling when n > 1 since greedy would repeat one prompt)
    decoding: Literal["sample", "greedy", "beam"] | None = None
    temperature: float = Field(0.8, gt=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    num_beams: int = Field(4, ge=1, le=16)
    strict_length: bool = False
    batch_size: int = Field(32, ge=1, le=512)
    relevance: int = Field(4, ge=0, le=4)  # default relevance bucket asked for
    image_length: int = Field(12, ge=3, le=40)  # default image prompt length (words)
    template_length: int = Field(10, ge=3, le=40)  # default template prompt length (words)


class IndexSettings(BaseModel):
    """Image and template indexes."""

    clip_model: str = "ViT-B-32"  # open_clip architecture ("udrl-tiny-clip" for tests)
    # open_clip pretrained tag, a local checkpoint path, or "none" for random weights (offline)
    clip_pretrained: str = "laion2b_s34b_b79k"
    image_index_type: Literal["auto", "flat", "hnsw", "ivf"] = "auto"  # auto: flat < 50k
    batch_size: int = Field(64, ge=1, le=1024)  # images per encoder pass
    template_backend: Literal["tantivy", "elasticsearch"] = "tantivy"
    es_url: str | None = None  # Elasticsearch URL for the elasticsearch backend
    es_alias: str = "udrl-templates"  # alias searches use; versions live behind it
    # a secured cluster (Elasticsearch 8/9 default): the encoded API key, or user and password
    # for basic auth (the key wins when both are set); an https es_url with the CA file that
    # signed the cluster's certificate (e.g. the node's config/certs/http_ca.crt), or none for
    # the system's CAs
    es_api_key: SecretStr | None = None
    es_username: str | None = None
    es_password: SecretStr | None = None
    es_ca_certs: Path | None = None
    es_verify_certs: bool = True  # False skips TLS verification: throwaway test clusters only
    # build (and search) the dense channel: sentence embeddings of every template and of the
    # logged queries that clicked it (FAISS beside tantivy; a kNN field on Elasticsearch), and
    # the image index's text channel over titles, tags and captions (FAISS beside CLIP's)
    dense: bool = True
    text_model: str | None = None  # sentence-transformers dir/name (default: shipped MiniLM)
    # with a query log: fit the fusion weights on held-out logged queries at build time
    fit_fusion: bool = True
    # Publish checks of `udrl index templates|images|merge` (`--force` skips them; the live
    # version stays when they refuse). Refuse a build whose document count is below this
    # share of the live version's: 0.5 = more than half the catalogue vanished; 0 = off.
    publish_min_count_ratio: float = Field(0.5, ge=0, le=1)
    # Refuse a build when more than this share of the catalogue's records were rejected (bad
    # lines, missing id/title, duplicate ids, unreadable images); 1 = off.
    publish_max_reject_rate: float = Field(0.2, ge=0, le=1)
    # tantivy template versions and Elasticsearch image indices kept after publishing (the
    # live one and the one live before it always stay besides)
    keep_versions: int = Field(3, ge=1, le=100)
    # where the image index lives: faiss (versions under <workspace>/indexes/images) or
    # elasticsearch (an index per build behind es_image_alias, on es_url with the credentials
    # and TLS settings above; the CLIP vectors are still encoded here)
    image_backend: Literal["faiss", "elasticsearch"] = "faiss"
    es_image_alias: str = "udrl-images"  # the image index's own alias (never es_alias)
    # dense_vector index options: int8_hnsw (4x smaller than floats), bbq_hnsw (32x; needs
    # Elasticsearch 8.16 and >= 64 dims) or hnsw (floats)
    es_image_index_type: Literal["int8_hnsw", "bbq_hnsw", "hnsw"] = "int8_hnsw"
    es_image_m: int = Field(16, ge=4, le=512)  # HNSW links per node
    es_image_ef_construction: int = Field(100, ge=10, le=3200)  # candidates while linking
    es_image_num_candidates: int = Field(100, ge=1, le=10_000)  # per shard at query time
    # re-rank oversample x k quantized hits with the float vectors (Elasticsearch 8.18+;
    # int8/bbq only); 1-10, 0: off
    es_image_oversample: float = Field(3.0, ge=0, le=10)

    @property
    def pretrained(self) -> str | None:
        return None if self.clip_pretrained.lower() in ("none", "random", "") else self.clip_pretrained


class PipelineSettings(BaseModel):
    """Query -> intent -> rewrite -> retrieval (``plugin.pipeline``)."""

    k: int = Field(10, ge=1, le=1000)  # results per modality
    fusion: bool = True  # fuse the raw, dense and rewrite channels (RRF); False: rewrite only
    rrf_k: int = Field(60, ge=1)  # RRF constant
    raw_weight: float = Field(1.0, ge=0)  # RRF weight of the raw-query list
    # added to the raw weight per unit of coverage (share of the query's words in its top hits)
    coverage_weight: float = Field(0.0, ge=0)
    coverage_floor: float = Field(0.0, ge=0, lt=1)  # coverage at or below which nothing is added
    dense_weight: float = Field(1.0, ge=0)  # RRF weight of the dense (embedding) list
    # RRF weight of a rewrite as close to the query as can be; it falls linearly to 0 at
    # rewrite_floor (embedding cosine of prompt and query), below which the rewrite is dropped
    rewrite_weight: float = Field(1.0, ge=0)
    rewrite_floor: float = Field(0.5, ge=0, lt=1)
    # use the raw/coverage/dense/rrf_k weights fitted on the training log at index time
    fitted_fusion: bool = True
    # first try; retries sample. Greedy: deterministic (so cacheable), and more relevant than
    # sampled output in every measured run (docs/results.md)
    decoding: Literal["sample", "greedy", "beam"] = "greedy"
    retries: int = Field(1, ge=0, le=5)  # sampled retries after a rejected prompt
    max_over_length: int = Field(3, ge=0, le=40)  # words over the asked length tolerated
    blocklist: list[str] = []  # terms a prompt must not contain (whole words, any case)
    cache_size: int = Field(10_000, ge=0)  # rewrite cache entries (0: off)
    precomputed: Path | None = None  # JSONL from `udrl rewrite-batch`, loaded into the cache
    # auto: the ONNX Runtime export when current, else the CTranslate2 one, else PyTorch
    engine: Literal["auto", "onnx", "ctranslate2", "torch"] = "auto"


class ServiceSettings(BaseModel):
    """`udrl serve`."""

    # beyond loopback (0.0.0.0, a LAN address) without api_key, `serve` warns: anyone who can
    # reach the port can use the API
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    api_key: SecretStr | None = None  # when set, requests need header X-API-Key
    deadline_ms: float = Field(1500.0, gt=0)  # whole request; the model fails open at its end
    max_body_bytes: int = Field(16_384, ge=256)  # larger request bodies get 413
    max_batch: int = Field(16, ge=1, le=512)  # micro-batch: most items per model call
    batch_wait_ms: float = Field(5.0, ge=0, le=1000)  # micro-batch: wait for more requests
    max_queue: int = Field(64, ge=1, le=100_000)  # micro-batch: most jobs waiting for the model
    # when max_queue jobs wait: "raw" answers with the raw query (path raw, reason queue_full);
    # "503" refuses the request (HTTP 503, code queue_full)
    queue_full: Literal["raw", "503"] = "raw"
    # indexes /readyz waits for (a templates-only deployment lists just "template")
    require_indexes: list[Literal["image", "template"]] = ["image", "template"]
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line (log shippers)
    # seconds between looks at the published index versions and rewriter files (hot reload,
    # plugin.reload); 0: off (POST /admin/reload still reloads)
    reload_interval_s: float = Field(10.0, ge=0, le=86_400)


class Settings(BaseSettings):
    """Everything a udrl command needs to know about its environment."""

    model_config = SettingsConfigDict(env_prefix="UDRL_", env_nested_delimiter="__",
                                      extra="forbid")

    workspace: Path = Path("udrl-work")  # root for data, models and indexes
    queries_file: Path | None = None  # seed queries (one per line, optional TAB intent)
    builtin_queries: int = Field(1500, ge=1)  # queries from the builtin generator otherwise
    # the return prompts are relabelled with: retrieval (nDCG@10 of what the prompt finds
    # against the query's clicks or grounding set), minilm (similarity to the query), lexical;
    # auto: retrieval when a catalogue index exists, else minilm
    scorer: Literal["auto", "retrieval", "minilm", "lexical"] = "auto"
    scorer_model: str | None = None  # sentence-transformers dir/name (default: shipped MiniLM)
    device: str = "cpu"  # torch device for models
    teacher: TeacherSettings = TeacherSettings()
    train: TrainSettings = TrainSettings()
    intent: IntentSettings = IntentSettings()
    generation: GenerationSettings = GenerationSettings()
    index: IndexSettings = IndexSettings()
    pipeline: PipelineSettings = PipelineSettings()
    service: ServiceSettings = ServiceSettings()

    @property
    def data_path(self) -> Path:
        return self.workspace / "distilled.jsonl"

    @property
    def model_dir(self) -> Path:
        return self.workspace / "rewriter"

    @property
    def intent_dir(self) -> Path:
        return self.workspace / "intent"

    @property
    def image_index_dir(self) -> Path:
        return self.workspace / "indexes" / "images"

    @property
    def template_index_dir(self) -> Path:
        return self.workspace / "indexes" / "templates"

    @property
    def precomputed_path(self) -> Path:
        """Precomputed rewrites the service loads (`udrl rewrite-batch` writes them)."""
        return self.pipeline.precomputed or self.workspace / "rewrites.jsonl"

    @property
    def reports_dir(self) -> Path:
        return self.workspace / "reports"


def _toml_path(config: str | os.PathLike[str] | None, environ: dict[str, str]) -> Path | None:
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    if environ.get("UDRL_CONFIG"):
        return _toml_path(environ["UDRL_CONFIG"], {})
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(config: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build settings from overrides, ``UDRL_*`` environment, a TOML file and defaults.

    Args:
        config: TOML file; else ``$UDRL_CONFIG``; else ``./udrl.toml`` when present.
        overrides: values that win over everything (CLI flags); None values are ignored.
    """
    toml_file = _toml_path(config, dict(os.environ))
    if toml_file is not None:
        try:
            tomllib.loads(toml_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {toml_file} is not valid TOML: {e}") from e

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                       dotenv_settings, file_secret_settings):
            sources = [init_settings, env_settings]
            if toml_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
            return tuple(sources)

    try:
        return _FromFile(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        raise _setting_error(e) from e


def _setting_error(e: ValidationError) -> ConfigError:
    """``setting <loc>: <msg> (got <input>)`` for the first error of a settings validation."""
    return ConfigError(f"setting {first_error(e, empty='')} (got {e.errors()[0].get('input')!r})")


def with_overrides(settings: Settings, values: dict[str, Any]) -> Settings:
    """Settings with dotted-path overrides applied (``{"train.steps": 10}``); None is skipped."""
    data = settings.model_dump()
    for key, value in values.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    try:
        return type(settings).model_validate(data)
    except ValidationError as e:
        raise _setting_error(e) from e


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings for the service (FastAPI dependency; override it in tests)."""
    return load_settings()
