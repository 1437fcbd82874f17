"""Alembic environment: migrations run on the connection handed over by core.db.migrate."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run migrations through core.db.migrate.upgrade_to_head (python -m core db upgrade).")

context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
