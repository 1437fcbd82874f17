"""Settings read from the environment (or a .env file), so the app, the CLI and the tests agree.

Every setting has a default that works offline on a laptop: no variable needs to be set.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
        description="Language model for answers: the bundled SmolLM2, a Hugging Face id in the local cache, or a folder.",
    )
    load_in_4bit: bool = Field(default=False, description="Load the language model in 4-bit (bitsandbytes NF4).")
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
        description="Embedding model for new collections: a sentence-transformers id or a local folder.",
    )
    chunk_tokens: int = Field(default=200, ge=16, le=8192, description="Default chunk size, in tokens.")
    chunk_overlap: int = Field(default=40, ge=0, le=4096, description="Default overlap between chunks, in tokens.")
    max_upload_mb: float = Field(default=50.0, gt=0, description="Largest file accepted for ingestion, in MB.")
    max_query_chars: int = Field(default=2000, gt=0, description="Longest search query accepted, in characters.")
    search_candidates: int = Field(default=100, ge=1, description="Candidates each side of hybrid search ranks before fusion.")
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal rank fusion constant: score = sum of 1 / (rrf_k + rank).")
    hnsw_ef_search: int = Field(
        default=100, ge=1, le=1000, description="HNSW candidate list size at query time (recall vs speed)."
    )
    embed_batch_size: int = Field(default=64, ge=1, description="Chunks embedded per forward pass.")
    embed_group_chunks: int = Field(
        default=512, ge=1, description="Chunks of several files embedded together in one length-sorted pass while ingesting."
    )

    @property
    def embedded_database_dir(self) -> Path:
        return self.data_dir.resolve() / "postgres"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings(...)` instead."""
    return Settings()
