"""The database schema: Alembic's migrations build exactly what the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from kb.db import Base, Database
from tests.servers import start_postgres


def _diff(db: Database) -> list:
    with db.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_migrations_match_the_models_on_sqlite(tmp_path):
    assert _diff(Database(f"sqlite:///{tmp_path / 'kb.db'}")) == []


def test_migrations_match_the_models_on_postgresql(tmp_path):
    url, handle = start_postgres(tmp_path)
    try:
        db = Database(url)
        assert _diff(db) == []
        db.close()
    finally:
        handle.cleanup()
