"""Document library: collections, documents, chunks with embeddings and full-text vectors.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The bundled embedding model's dimension; other dimensions get their own partial index when a
# collection that uses them is created (core.documents.library.ensure_vector_index).
DEFAULT_DIM = 384


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(
        """
        CREATE TABLE collections (
            id              serial PRIMARY KEY,
            name            text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
            embedding_model text NOT NULL,
            embedding_dim   integer NOT NULL CHECK (embedding_dim > 0),
            chunk_tokens    integer NOT NULL CHECK (chunk_tokens > 0),
            chunk_overlap   integer NOT NULL CHECK (chunk_overlap >= 0 AND chunk_overlap < chunk_tokens),
            created_at      timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE documents (
            id            bigserial PRIMARY KEY,
            collection_id integer NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
            filename      text NOT NULL,
            file_type     text NOT NULL,
            sha256        char(64) NOT NULL,
            size_bytes    bigint NOT NULL,
            pages         integer,
            chunk_count   integer NOT NULL DEFAULT 0,
            created_at    timestamptz NOT NULL DEFAULT now(),
            UNIQUE (collection_id, sha256)
        )
        """
    )
    op.execute("CREATE INDEX documents_collection_filename ON documents (collection_id, filename)")
    op.execute(
        """
        CREATE TABLE chunks (
            id            bigserial PRIMARY KEY,
            document_id   bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            collection_id integer NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
            ordinal       integer NOT NULL,
            page          integer,
            heading       text,
            text          text NOT NULL,
            char_start    integer NOT NULL,
            char_end      integer NOT NULL,
            token_count   integer NOT NULL,
            embedding_dim integer NOT NULL,
            embedding     vector NOT NULL,
            tsv           tsvector GENERATED ALWAYS AS (
                setweight(to_tsvector('english', coalesce(heading, '')), 'A')
                || setweight(to_tsvector('english', text), 'B')
            ) STORED,
            UNIQUE (document_id, ordinal)
        )
        """
    )
    op.execute("CREATE INDEX chunks_collection ON chunks (collection_id)")
    op.execute("CREATE INDEX chunks_tsv ON chunks USING gin (tsv)")
    op.execute(
        f"CREATE INDEX chunks_embedding_{DEFAULT_DIM}_hnsw ON chunks "
        f"USING hnsw ((embedding::vector({DEFAULT_DIM})) vector_cosine_ops) "
        f"WHERE embedding_dim = {DEFAULT_DIM}"
    )


def downgrade() -> None:
    op.execute("DROP TABLE chunks")
    op.execute("DROP TABLE documents")
    op.execute("DROP TABLE collections")
