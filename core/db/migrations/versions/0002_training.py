"""Training data and jobs: datasets, examples, jobs with their metrics and log lines, workers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE datasets (
            id            serial PRIMARY KEY,
            name          text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
            kind          text NOT NULL CHECK (kind IN ('chat', 'text')),
            source        text NOT NULL,
            collection_id integer REFERENCES collections(id) ON DELETE SET NULL,
            created_at    timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE training_examples (
            id          bigserial PRIMARY KEY,
            dataset_id  integer NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
            ordinal     integer NOT NULL,
            split       text NOT NULL CHECK (split IN ('train', 'validation')),
            messages    jsonb,
            text        text,
            document_id bigint REFERENCES documents(id) ON DELETE SET NULL,
            chunk_id    bigint REFERENCES chunks(id) ON DELETE SET NULL,
            source_row  integer,
            CHECK ((messages IS NULL) <> (text IS NULL)),
            UNIQUE (dataset_id, ordinal)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE training_jobs (
            id               serial PRIMARY KEY,
            adapter_name     text NOT NULL,
            dataset_id       integer REFERENCES datasets(id) ON DELETE SET NULL,
            base_model       text NOT NULL,
            method           text NOT NULL CHECK (method IN ('lora', 'qlora')),
            settings         jsonb NOT NULL,
            status           text NOT NULL DEFAULT 'queued'
                             CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            created_at       timestamptz NOT NULL DEFAULT now(),
            started_at       timestamptz,
            finished_at      timestamptz,
            heartbeat_at     timestamptz,
            host             text,
            pid              integer,
            attempts         integer NOT NULL DEFAULT 0,
            cancel_requested boolean NOT NULL DEFAULT false,
            resume           boolean NOT NULL DEFAULT false,
            run_dir          text,
            progress         jsonb,
            final_metrics    jsonb,
            error            text
        )
        """
    )
    op.execute("CREATE INDEX training_jobs_queue ON training_jobs (created_at) WHERE status = 'queued'")
    op.execute(
        """
        CREATE TABLE job_metrics (
            id                bigserial PRIMARY KEY,
            job_id            integer NOT NULL REFERENCES training_jobs(id) ON DELETE CASCADE,
            step              integer NOT NULL,
            epoch             real,
            loss              real,
            eval_loss         real,
            learning_rate     real,
            grad_norm         real,
            tokens_per_second real,
            memory_mb         real,
            recorded_at       timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX job_metrics_job_step ON job_metrics (job_id, step)")
    op.execute(
        """
        CREATE TABLE job_logs (
            id     bigserial PRIMARY KEY,
            job_id integer NOT NULL REFERENCES training_jobs(id) ON DELETE CASCADE,
            at     timestamptz NOT NULL DEFAULT now(),
            line   text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX job_logs_job ON job_logs (job_id, id)")
    op.execute(
        """
        CREATE TABLE workers (
            id           serial PRIMARY KEY,
            host         text NOT NULL,
            pid          integer NOT NULL,
            started_at   timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (host, pid)
        )
        """
    )


def downgrade() -> None:
    for table in ("workers", "job_logs", "job_metrics", "training_jobs", "training_examples", "datasets"):
        op.execute(f"DROP TABLE {table}")
