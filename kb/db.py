"""The database: the source of truth for everything that is not a vector.

SQLAlchemy 2 models for knowledge bases (with their own settings), the bytes of every ingested file
(content-addressed, so any app process on any machine can rebuild from them), files, chunks and durable
jobs. The schema is created and upgraded by Alembic (``migrations/``) when the database is opened.

SQLite (WAL) under the data dir is the embedded default; PostgreSQL by URL (``database_url``) lets several
app processes on several machines share one deployment. Writers coordinate through the database: a KB's
writes are serialised by its job queue (one running job per KB) and by ``lock_kb`` (a row lock on
PostgreSQL; SQLite takes its database write lock at ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# BigInteger ids on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class KBRow(Base):
    """A knowledge base and the settings it was built with (``None``: follow the app's setting)."""

    __tablename__ = "kbs"
    __table_args__ = ({"sqlite_autoincrement": True},)  # a new KB never reuses a deleted one's index names
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Names the KB's indexes: random, so deployments sharing one Milvus (or a KB deleted and re-created)
    # never meet in an index.
    uid: Mapped[str] = mapped_column(String(16), unique=True, default=lambda: uuid.uuid4().hex[:12])
    embedding_model: Mapped[str] = mapped_column(String(512))
    dim: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    title_prefix: Mapped[bool] = mapped_column(Boolean, default=True)
    search_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    hybrid_alpha: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    top_k: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Added to the answer system prompt of this KB (after the app's grounding rules, which it cannot replace).
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Who owns it (NULL: made before accounts existed, i.e. the local admin) and who else may read it:
    # private | shared (with the users in kb_shares) | everyone (NULL means everyone: nothing changes for KBs
    # made before accounts existed).
    owner_id: Mapped[int | None] = mapped_column(Id, nullable=True)
    visibility: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The live index generation; a rebuild fills ``building`` beside it (with ``building_settings``:
    # model, dim, chunking) and switches in one transaction.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    building: Mapped[int | None] = mapped_column(Integer, nullable=True)
    building_settings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)

    def index_name(self, generation: int | None = None) -> str:
        return f"kb_{self.uid}_g{generation if generation is not None else self.generation}"


class BlobRow(Base):
    """Bytes of an ingested file, by sha256: shared by every KB and file that has the same content."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class FileRow(Base):
    """A file in a KB, identified by its path as ingested (``a/README.md``) or upload name."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("kb_id", "name"), Index("ix_files_kb_sha", "kb_id", "sha256"),
                      {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kb_id: Mapped[int] = mapped_column(ForeignKey("kbs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # indexed | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    pages: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ocr_pages: Mapped[list[int]] = mapped_column(JSON, default=list)
    title: Mapped[str | None] = mapped_column(Text, nullable=True)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    added_at: Mapped[float] = mapped_column(Float, default=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"file_id": self.sha256 or f"failed:{self.name}", "id": self.id, "name": self.name,
                "sha256": self.sha256, "size": self.size, "status": self.status, "error": self.error,
                "chunks": self.chunks, "pages": self.pages, "ocr_pages": list(self.ocr_pages or []),
                "title": self.title, "warnings": list(self.warnings or []), "added_at": self.added_at}


class ChunkRow(Base):
    """One chunk of one file in one index generation; its id is the id in the index."""

    __tablename__ = "chunks"
    # AUTOINCREMENT: SQLite must never hand a deleted chunk's id to a new chunk, or an index entry left by a
    # crash between "DB committed" and "index updated" would point at the wrong text.
    __table_args__ = (Index("ix_chunks_kb_gen", "kb_id", "generation"), Index("ix_chunks_file", "file_id"),
                      {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kb_id: Mapped[int] = mapped_column(ForeignKey("kbs.id", ondelete="CASCADE"))
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heading: Mapped[str | None] = mapped_column(Text, nullable=True)


class JobRow(Base):
    """A durable KB job (ingest, rebuild): queued, run by any app process, resumed after a crash."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status", "status", "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    kb_id: Mapped[int] = mapped_column(ForeignKey("kbs.id", ondelete="CASCADE"))
    kb_name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|done|failed|cancelled
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    chunks_embedded: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "kb": self.kb_name, "kb_id": self.kb_id, "status": self.status,
                "progress": self.progress, "message": self.message, "chunks_embedded": self.chunks_embedded,
                "result": self.result, "error": self.error, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at}


class DroppedIndex(Base):
    """An index generation to delete: written in the transaction that retires it, removed once dropped,
    so a crash in between is finished on the next start."""

    __tablename__ = "dropped_indexes"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)


class UserRow(Base):
    """A person (or the built-in local admin that a one-person install acts as)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="member")  # admin | member
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class ApiKeyRow(Base):
    """A user's API key, stored as the SHA-256 of the key (the key itself is shown once, when issued)."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists, so a user can tell keys apart
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class KBShareRow(Base):
    __tablename__ = "kb_shares"
    kb_id: Mapped[int] = mapped_column(ForeignKey("kbs.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class ConversationRow(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner", "owner_id", "updated_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: uuid.uuid4().hex)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200), default="")
    kbs: Mapped[list[str]] = mapped_column(JSON, default=list)  # [] = plain chat
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)


class MessageRow(Base):
    """One turn. An assistant message keeps what produced it: the retrieval query, the sources, the model and
    generation settings, timings and token counts (``meta``)."""

    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("conversation_id", "seq"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: uuid.uuid4().hex)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))  # user | assistant
    content: Mapped[str] = mapped_column(Text)
    query: Mapped[str | None] = mapped_column(Text, nullable=True)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class FeedbackRow(Base):
    __tablename__ = "feedback"
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    rating: Mapped[int] = mapped_column(Integer)  # 1 | -1
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class Database:
    def __init__(self, url: str):
        self.url = url
        self.sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.sqlite:
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.sqlite:
            _sqlite_pragmas(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = sessionmaker(self.engine.execution_options(kbchat_read=True), expire_on_commit=False)
        upgrade(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any error."""
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (on SQLite it never waits for a writer)."""
        with self._reads() as s, s.begin():
            yield s

    def lock_kb(self, s: Session, kb_id: int) -> KBRow:
        """The KB's row, locked until the transaction ends (writers of one KB queue here)."""
        row = s.execute(select(KBRow).where(KBRow.id == kb_id).with_for_update()).scalar_one_or_none()
        if row is None:
            from kb.types import KBNotFound

            raise KBNotFound("the knowledge base was deleted")
        return row

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # a committed ingest survives power loss, not just a crash
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        if conn.get_execution_options().get("kbchat_read"):
            conn.exec_driver_sql("BEGIN")
            return
        # IMMEDIATE takes the write lock at the start, so two writers queue instead of one failing with
        # "database is locked" when it upgrades a read transaction. Reads in WAL mode never wait for it.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


_upgrade_lock = threading.Lock()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (a no-op when it is there)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _upgrade_lock, engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # two app processes starting at once migrate one after the other
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7270001)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def default_url(system_dir: Path) -> str:
    return f"sqlite:///{system_dir / 'kbchat.db'}"
