"""Settings read from the environment (or a .env file), so the app, the CLI and the tests agree.

Every setting has a default that works offline on a laptop: no variable needs to be set.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
    hnsw_ef_search: int = Field(default=100, ge=1, le=1000, description="HNSW candidate list size at query time (recall vs speed).")
    embed_batch_size: int = Field(default=64, ge=1, description="Chunks embedded per forward pass.")

    @property
    def embedded_database_dir(self) -> Path:
        return self.data_dir.resolve() / "postgres"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings(...)` instead."""
    return Settings()
