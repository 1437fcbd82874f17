"""Each document's total chunk tokens, so keyword search can rank with BM25 (it needs the average
chunk length of a collection, which summing over documents gives without scanning every chunk).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE documents ADD COLUMN token_count bigint NOT NULL DEFAULT 0")
    op.execute(
        "UPDATE documents d SET token_count = t.total "
        "FROM (SELECT document_id, sum(token_count) AS total FROM chunks GROUP BY document_id) t WHERE t.document_id = d.id"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE documents DROP COLUMN token_count")
