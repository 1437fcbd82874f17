"""The schema comes from Alembic migrations on the real server: extension, tables, indexes."""

from alembic import command
from sqlalchemy import text

from core.db.migrate import alembic_config, current_revision, head_revision, upgrade_to_head


def test_schema_is_at_head_with_pgvector(db):
    assert current_revision(db.engine) == head_revision()
    with db.engine.connect() as connection:
        version = connection.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
        tables = set(connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
        indexes = dict(
            connection.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'chunks'")).all()
        )
        generated = connection.execute(
            text("SELECT is_generated FROM information_schema.columns WHERE table_name = 'chunks' AND column_name = 'tsv'")
        ).scalar()
    assert version.startswith("0.8")
    assert {"collections", "documents", "chunks", "alembic_version"} <= tables
    assert "USING hnsw" in indexes["chunks_embedding_384_hnsw"] and "vector_cosine_ops" in indexes["chunks_embedding_384_hnsw"]
    assert "USING gin (tsv)" in indexes["chunks_tsv"]
    assert generated == "ALWAYS"


def test_upgrade_is_idempotent_and_downgrade_round_trips(db):
    upgrade_to_head(db.engine)  # a second process starting up changes nothing
    with db.engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        tables = set(connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
        assert tables == {"alembic_version"}
    upgrade_to_head(db.engine)
    assert current_revision(db.engine) == head_revision()


def test_upgrading_a_library_from_0002_fills_the_document_token_totals(db, collection):
    """Libraries made before BM25 (migration 0003) get each document's total from its chunks."""
    import samples

    from core.documents.ingest import ingest_bytes

    document_id = ingest_bytes(db, collection, "pumps.md", samples.MARKDOWN).document_id
    with db.engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    upgrade_to_head(db.engine)
    with db.engine.connect() as connection:
        stored, summed = connection.execute(
            text("SELECT token_count, (SELECT sum(token_count) FROM chunks WHERE document_id = :d) FROM documents WHERE id = :d"),
            {"d": document_id},
        ).one()
    assert stored == summed > 0
