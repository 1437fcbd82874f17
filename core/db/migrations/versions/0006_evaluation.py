"""Evaluation: exams (questions with reference answers, linked to the documents they come from),
evaluation runs with one scored answer per question and variant, and blind votes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

VARIANTS = "'base', 'rag', 'ft', 'rag+ft'"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE exams (
            id            serial PRIMARY KEY,
            name          text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
            collection_id integer REFERENCES collections(id) ON DELETE SET NULL,
            source        text NOT NULL CHECK (source IN ('import', 'generated')),
            created_at    timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE exam_questions (
            id               bigserial PRIMARY KEY,
            exam_id          integer NOT NULL REFERENCES exams(id) ON DELETE CASCADE,
            ordinal          integer NOT NULL,
            question         text NOT NULL CHECK (length(question) > 0),
            reference_answer text NOT NULL,
            out_of_scope     boolean NOT NULL DEFAULT false,
            source_document  text,
            source_passage   text,
            document_id      bigint REFERENCES documents(id) ON DELETE SET NULL,
            chunk_id         bigint REFERENCES chunks(id) ON DELETE SET NULL,
            source_row       integer,
            UNIQUE (exam_id, ordinal)
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX exam_questions_unique_text ON exam_questions (exam_id, lower(question))")
    op.execute("CREATE INDEX exam_questions_document ON exam_questions (document_id)")
    op.execute(
        f"""
        CREATE TABLE eval_runs (
            id            serial PRIMARY KEY,
            exam_id       integer NOT NULL REFERENCES exams(id) ON DELETE CASCADE,
            job_id        integer REFERENCES jobs(id) ON DELETE SET NULL,
            model         text NOT NULL,
            adapter       text,
            collection_id integer REFERENCES collections(id) ON DELETE SET NULL,
            variants      text[] NOT NULL CHECK (variants <@ ARRAY[{VARIANTS}]::text[] AND cardinality(variants) > 0),
            settings      jsonb NOT NULL,
            summary       jsonb,
            created_at    timestamptz NOT NULL DEFAULT now(),
            finished_at   timestamptz
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE eval_answers (
            id                  bigserial PRIMARY KEY,
            run_id              integer NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
            question_id         bigint NOT NULL REFERENCES exam_questions(id) ON DELETE CASCADE,
            variant             text NOT NULL CHECK (variant IN ({VARIANTS})),
            answer              text NOT NULL,
            scores              jsonb NOT NULL,
            diagnosis           text,
            retrieved           jsonb,
            cited               jsonb,
            prompt_tokens       integer,
            new_tokens          integer,
            latency_seconds     real,
            time_to_first_token real,
            stopped_by          text,
            created_at          timestamptz NOT NULL DEFAULT now(),
            UNIQUE (run_id, question_id, variant)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE votes (
            id          bigserial PRIMARY KEY,
            question    text NOT NULL,
            collection  text,
            model       text NOT NULL,
            adapter     text,
            settings    jsonb NOT NULL,
            answers     jsonb NOT NULL,
            shown_order text[] NOT NULL,
            choice      text NOT NULL,
            note        text,
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    for table in ("votes", "eval_answers", "eval_runs", "exam_questions", "exams"):
        op.execute(f"DROP TABLE {table}")
