"""Exams: the settings that made an exam (the file it came from, or the model, seed and held-out
documents of a generated one), and the job kind "generate-exam".

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KINDS_0005 = ("train", "evaluate", "generate-dataset", "reembed", "merge", "ingest")
KINDS = (*KINDS_0005, "generate-exam")


def _kinds_constraint(kinds: tuple[str, ...]) -> None:
    op.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_kind")
    listed = ", ".join(f"'{kind}'" for kind in kinds)
    op.execute(f"ALTER TABLE jobs ADD CONSTRAINT jobs_kind CHECK (kind IN ({listed}))")


def upgrade() -> None:
    op.execute("ALTER TABLE exams ADD COLUMN settings jsonb NOT NULL DEFAULT '{}'::jsonb")
    _kinds_constraint(KINDS)


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE kind = 'generate-exam'")
    _kinds_constraint(KINDS_0005)
    op.execute("ALTER TABLE exams DROP COLUMN settings")
