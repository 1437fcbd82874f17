"""A collection's optional cross-encoder reranker (NULL: search returns the fused order as it is).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE collections ADD COLUMN rerank_model text "
        "CONSTRAINT collections_rerank_model_length CHECK (length(rerank_model) BETWEEN 1 AND 1000)"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE collections DROP COLUMN rerank_model")
