"""Artifacts in the database: finished LoRA adapters and training checkpoints, stored as
content-addressed blobs, so every machine with the same DATABASE_URL sees the same files.

A blob is an uncompressed tar of a folder, named by its sha256 and cut into parts of at most
8 MiB (one bytea value per part: no single value is huge, and reading one streams part by part).
`artifacts` gives a blob a kind and a name; a checkpoint is named `job-<id>` and keeps its step in
metadata. `job_id` has no foreign key: which table holds jobs is not this table's business.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE artifact_blobs (
            sha256     text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
            size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE artifact_blob_parts (
            sha256 text NOT NULL REFERENCES artifact_blobs(sha256) ON DELETE CASCADE,
            part   integer NOT NULL CHECK (part >= 0),
            data   bytea NOT NULL CHECK (octet_length(data) <= 8388608),
            PRIMARY KEY (sha256, part)
        )
        """
    )
    # The parts are already-packed bytes, mostly weights: compressing them gains little and costs CPU.
    op.execute("ALTER TABLE artifact_blob_parts ALTER COLUMN data SET STORAGE EXTERNAL")
    op.execute(
        """
        CREATE TABLE artifacts (
            id         serial PRIMARY KEY,
            kind       text NOT NULL CHECK (kind IN ('adapter', 'checkpoint')),
            name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
            sha256     text NOT NULL REFERENCES artifact_blobs(sha256),
            size_bytes bigint NOT NULL,
            job_id     integer,
            base_model text,
            metadata   jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (kind, name)
        )
        """
    )
    op.execute("CREATE INDEX artifacts_sha256 ON artifacts (sha256)")


def downgrade() -> None:
    op.execute("DROP TABLE artifacts")
    op.execute("DROP TABLE artifact_blob_parts")
    op.execute("DROP TABLE artifact_blobs")
