"""One jobs table for every long operation: training_jobs becomes jobs, with a kind, its
parameters as JSON, a result, and an owner token per claim.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

KINDS = ("train", "evaluate", "generate-dataset", "reembed", "merge", "ingest")


def upgrade() -> None:
    op.execute("ALTER TABLE training_jobs RENAME TO jobs")
    op.execute("ALTER SEQUENCE training_jobs_id_seq RENAME TO jobs_id_seq")
    op.execute("DROP INDEX training_jobs_queue")
    op.execute("ALTER TABLE jobs ADD COLUMN kind text NOT NULL DEFAULT 'train'")
    op.execute("ALTER TABLE jobs ALTER COLUMN kind DROP DEFAULT")
    kinds = ", ".join(f"'{kind}'" for kind in KINDS)
    op.execute(f"ALTER TABLE jobs ADD CONSTRAINT jobs_kind CHECK (kind IN ({kinds}))")
    op.execute("ALTER TABLE jobs ADD COLUMN title text")
    op.execute("ALTER TABLE jobs ADD COLUMN params jsonb")
    # Existing training jobs keep everything: their columns move into params.
    op.execute(
        """
        UPDATE jobs j SET
            title = 'Fine-tune ' || j.adapter_name,
            params = jsonb_build_object(
                'adapter_name', j.adapter_name, 'dataset_id', j.dataset_id,
                'dataset_name', (SELECT d.name FROM datasets d WHERE d.id = j.dataset_id),
                'base_model', j.base_model, 'method', j.method, 'settings', j.settings)
        """
    )
    op.execute("ALTER TABLE jobs ALTER COLUMN title SET NOT NULL")
    op.execute("ALTER TABLE jobs ALTER COLUMN params SET NOT NULL")
    for column in ("adapter_name", "dataset_id", "base_model", "method", "settings"):
        op.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    op.execute("ALTER TABLE jobs RENAME COLUMN final_metrics TO result")
    # A new token at every claim: writes from an earlier attempt (a process declared dead) change nothing.
    op.execute("ALTER TABLE jobs ADD COLUMN owner uuid")
    op.execute("CREATE INDEX jobs_queue ON jobs (created_at, id) WHERE status = 'queued'")
    op.execute("CREATE INDEX jobs_running ON jobs (host) WHERE status = 'running'")


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE kind <> 'train' OR params->>'adapter_name' IS NULL")
    op.execute("DROP INDEX jobs_running")
    op.execute("DROP INDEX jobs_queue")
    op.execute("ALTER TABLE jobs DROP COLUMN owner")
    op.execute("ALTER TABLE jobs RENAME COLUMN result TO final_metrics")
    op.execute("ALTER TABLE jobs ADD COLUMN adapter_name text")
    op.execute("ALTER TABLE jobs ADD COLUMN dataset_id integer REFERENCES datasets(id) ON DELETE SET NULL")
    op.execute("ALTER TABLE jobs ADD COLUMN base_model text")
    op.execute("ALTER TABLE jobs ADD COLUMN method text CHECK (method IN ('lora', 'qlora'))")
    op.execute("ALTER TABLE jobs ADD COLUMN settings jsonb")
    op.execute(
        """
        UPDATE jobs SET adapter_name = params->>'adapter_name',
            dataset_id = (SELECT d.id FROM datasets d WHERE d.id = (params->>'dataset_id')::int),
            base_model = params->>'base_model', method = params->>'method', settings = params->'settings'
        """
    )
    for column in ("adapter_name", "base_model", "method", "settings"):
        op.execute(f"ALTER TABLE jobs ALTER COLUMN {column} SET NOT NULL")
    op.execute("ALTER TABLE jobs DROP COLUMN params")
    op.execute("ALTER TABLE jobs DROP COLUMN title")
    op.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_kind")
    op.execute("ALTER TABLE jobs DROP COLUMN kind")
    op.execute("ALTER SEQUENCE jobs_id_seq RENAME TO training_jobs_id_seq")
    op.execute("ALTER TABLE jobs RENAME TO training_jobs")
    op.execute("CREATE INDEX training_jobs_queue ON training_jobs (created_at) WHERE status = 'queued'")
