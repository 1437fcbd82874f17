"""Settings read from the environment (or a .env file), so the app, the CLI and the tests agree.

Every setting has a default that works offline on a laptop: no variable needs to be set.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXPERT_STUDIO_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "EXPERT_STUDIO_DATABASE_URL"),
        description="Postgres with pgvector to use. Unset: an embedded server under data_dir/postgres.",
    )
    data_dir: Path = Field(
        default=Path("data"),
        description="Where the embedded database, saved models and job folders live.",
    )
    models_dir: Path | None = Field(
        default=None, description="Where converted and fine-tuned models live (default: data_dir/models)."
    )
    language_model: str = Field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="Language model for answers: the bundled SmolLM2, a Hugging Face id in the local cache, or a folder "
        "under the model roots.",
    )
    load_in_4bit: bool = Field(default=False, description="Load the language model in 4-bit (bitsandbytes NF4).")
    # Answers from an OpenAI-compatible chat endpoint for model references `openai:<served name>`
    # (core/models/served.py). Its API key is read from the environment only (EXPERT_STUDIO_CHAT_API_KEY,
    # else OPENAI_API_KEY), never from here, so no settings dump can show it.
    chat_api_base: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint up to /chat/completions that answers for `openai:<name>` "
        "(llama.cpp's server: http://127.0.0.1:8080/v1, Ollama: http://127.0.0.1:11434/v1, vLLM: http://127.0.0.1:8000/v1).",
    )
    chat_api_model: str | None = Field(
        default=None, description="The served model name the Ask and Compare pages offer (as openai:<name>)."
    )
    chat_api_context_window: int = Field(
        default=4096, ge=128, le=10_000_000,
        description="Tokens the served model reads, prompt and answer together; retrieved passages are fitted to it.",
    )
    chat_api_tokenizer: str | None = Field(
        default=None,
        description="A local model (id or folder, as for language_model) with the served model's tokenizer and chat "
        "template, to count prompt tokens exactly; unset: counted as characters / 3. Only the tokenizer is loaded.",
    )
    chat_api_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest wait for the chat endpoint to connect or send the next piece of an answer."
    )
    max_new_tokens: int = Field(default=256, ge=1, le=8192, description="Longest answer, in tokens.")
    stop_loops: bool = Field(
        default=True,
        description="End an answer once its own last tokens repeat (a loop) and keep it up to the first copy. "
        "Judges only generated tokens, so copying from the passages is never penalised.",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 answers greedily (repeatable).")
    top_p: float = Field(default=0.9, gt=0.0, le=1.0, description="Nucleus sampling when temperature > 0.")
    rag_prompt: Literal["cite-or-unknown", "short-cited"] = Field(
        default="cite-or-unknown", description="The instruction above the passages of a RAG prompt (core/answers/rag.py)."
    )
    rag_top_k: int = Field(default=5, ge=1, le=50, description="Passages retrieved for an answer.")
    rag_min_similarity: float = Field(
        default=0.25,
        ge=-1.0,
        le=1.0,
        description="Passages whose cosine similarity to the question is below this are not relevant.",
    )
    embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="Embedding model for new collections: a sentence-transformers id or a folder under the model roots.",
    )
    # Embeddings through an OpenAI-compatible API (core/documents/embedding_api.py): models named openai:, api:, azure:.
    embedding_api_base: str = Field(
        default="https://api.openai.com/v1",
        description="Base URL of the embeddings endpoint, before /embeddings (a local server: e.g. http://127.0.0.1:7997/v1; "
        "Azure: https://NAME.openai.azure.com).",
    )
    embedding_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("EXPERT_STUDIO_EMBEDDING_API_KEY", "OPENAI_API_KEY"),
        description="Key for the embeddings endpoint; else read from .streamlit/secrets.toml. Never stored or shown.",
    )
    embedding_api_version: str = Field(default="2024-10-21", description="Azure OpenAI's api-version (azure: models).")
    embedding_api_batch_size: int = Field(default=64, ge=1, le=2048, description="Texts sent in one embeddings request.")
    embedding_api_max_batch_tokens: int = Field(
        default=200_000, ge=1, description="Tokens sent in one request at most (OpenAI takes 300,000 a request)."
    )
    embedding_api_max_input_tokens: dict[str, int] = Field(
        default_factory=dict,
        description='Longest input per API model, in tokens, as JSON ({"my-model": 2048}); OpenAI\'s models are known '
        "(8,191), a model also present here uses its own limit.",
    )
    embedding_api_default_max_input_tokens: int = Field(
        default=512, ge=1, description="Longest input, in tokens, of an API model that is neither configured nor known."
    )
    embedding_api_tokenizer: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="Local model whose tokenizer sizes chunks for an API model that is not present here (an estimate).",
    )
    embedding_api_max_retries: int = Field(default=5, ge=0, le=20, description="Retries on 429, 5xx and lost connections.")
    embedding_api_backoff_s: float = Field(default=1.0, ge=0, description="First wait before a retry; doubles each time.")
    embedding_api_max_wait_s: float = Field(default=60.0, ge=0, description="Longest wait before a retry (Retry-After too).")
    embedding_api_timeout_s: float = Field(default=60.0, gt=0, description="Longest wait for one embeddings request.")
    # Which models may be loaded, and how many stay in memory (core/security/model_sources.py, core/models/loading.py).
    model_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders besides models_dir that models may be loaded from (separated by the path separator, "
        "':' on Linux, or a JSON list). A model folder anywhere else is refused.",
    )
    max_loaded_language_models: int = Field(
        default=2, ge=1, le=64, description="Language models kept in memory per process; the least recently used one goes first."
    )
    max_loaded_embedding_models: int = Field(
        default=2, ge=1, le=64, description="Embedding models kept in memory per process; the least recently used one goes first."
    )
    chunk_tokens: int = Field(default=200, ge=16, le=8192, description="Default chunk size, in tokens.")
    chunk_overlap: int = Field(default=40, ge=0, le=4096, description="Default overlap between chunks, in tokens.")
    max_upload_mb: float = Field(
        default=50.0,
        gt=0,
        description="Largest document or training file accepted, in MB; checked before the file is read. "
        "Streamlit's own upload limit (.streamlit/config.toml maxUploadSize) must be raised with it.",
    )
    parse_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest time reading (parsing) one document may take before it is stopped."
    )
    parse_memory_mb: int = Field(
        default=1024,
        ge=64,
        description="Memory reading one document may use (the parser's child process; a DOCX may not expand to more).",
    )
    max_pdf_pages: int = Field(default=2000, ge=1, description="PDFs with more pages than this are refused; split them.")
    max_query_chars: int = Field(default=2000, gt=0, description="Longest search query accepted, in characters.")
    search_candidates: int = Field(default=100, ge=1, description="Candidates each side of hybrid search ranks before fusion.")
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal rank fusion constant: score = sum of 1 / (rrf_k + rank).")
    hnsw_ef_search: int = Field(
        default=100, ge=1, le=1000, description="HNSW candidate list size at query time (recall vs speed)."
    )
    # Cross-encoder reranking, for collections that name a reranker (core/documents/rerank.py).
    rerank_candidates: int = Field(
        default=50, ge=1, le=1000,
        description="Best fused hits a collection's cross-encoder rescores; hits below them keep their order after them.",
    )
    rerank_batch_size: int = Field(default=32, ge=1, description="(query, passage) pairs scored per forward pass.")
    embed_batch_size: int = Field(default=64, ge=1, description="Chunks embedded per forward pass.")
    embed_group_chunks: int = Field(
        default=512, ge=1, description="Chunks of several files embedded together in one length-sorted pass while ingesting."
    )
    # Who may reach the app (core/security, docs/security.md).
    password_hash: str | None = Field(
        default=None,
        description="scrypt hash of the team password (python -m core auth hash-password); set: every page asks for it.",
    )
    login_delay_seconds: float = Field(
        default=1.0, ge=0.0, le=60.0, description="Wait after the first wrong password; it doubles with each further one."
    )
    login_max_delay_seconds: float = Field(
        default=60.0, ge=0.0, le=3600.0, description="Longest wait after a wrong password."
    )
    published_to_loopback_only: bool = Field(
        default=False,
        description="The operator states that the port the app listens on is published to the host's 127.0.0.1 only "
        "(a container listening on 0.0.0.0 behind `127.0.0.1:8501:8501`), so no login is needed.",
    )
    allowed_users: str = Field(
        default="",
        description="With OpenID Connect login: comma-separated e-mail addresses or @domains that may enter "
        "(empty: anyone the provider signs in).",
    )

    @field_validator("model_roots", mode="before")
    @classmethod
    def _split_model_roots(cls, value):
        """EXPERT_STUDIO_MODEL_ROOTS as a shell user writes PATH-like lists, or as JSON."""
        if isinstance(value, str):
            value = value.strip()
            return json.loads(value) if value.startswith("[") else [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @property
    def embedded_database_dir(self) -> Path:
        return self.data_dir.resolve() / "postgres"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings(...)` instead."""
    return Settings()
