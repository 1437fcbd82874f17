"""The job kind "download": a model from the Hugging Face Hub into its local cache.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

KINDS_0007 = ("train", "evaluate", "generate-dataset", "reembed", "merge", "ingest", "generate-exam")
KINDS = (*KINDS_0007, "download")


def _kinds_constraint(kinds: tuple[str, ...]) -> None:
    op.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_kind")
    listed = ", ".join(f"'{kind}'" for kind in kinds)
    op.execute(f"ALTER TABLE jobs ADD CONSTRAINT jobs_kind CHECK (kind IN ({listed}))")


def upgrade() -> None:
    _kinds_constraint(KINDS)


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE kind = 'download'")
    _kinds_constraint(KINDS_0007)
