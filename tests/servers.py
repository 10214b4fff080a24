"""Real database servers for tests: a Milvus (milvus-lite's gRPC server) and a PostgreSQL with pgvector.

Plain functions, so conftest fixtures of any scope can use them; every server keeps its data under the
directory the test passes in (a tmp dir), listens on loopback only and is stopped by the caller.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

_MILVUS_START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_milvus(data_dir: Path) -> tuple[str, subprocess.Popen]:
    """Start ``milvus-lite server`` on a free loopback port; return its URI and process once it answers."""
    exe = Path(sys.executable).parent / "milvus-lite"  # the venv's console script, not whatever is on PATH
    if not exe.exists():
        raise RuntimeError(f"milvus-lite console script not found at {exe}")
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "milvus-lite.log"
    # A race for the port (another process grabbing it between _free_port and bind) shows up as an
    # early exit, reported with the log below.
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir / "milvus")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    from kb.index.milvus import connect

    deadline = time.monotonic() + _MILVUS_START_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus-lite exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            # A listening socket is not enough: wait until it serves an RPC.
            client = connect(uri, timeout=2)
            client.list_collections()
            client.close()
            return uri, proc
        except Exception as e:  # connection refused / not ready yet
            last_error = e
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"milvus-lite did not answer on {uri} within {_MILVUS_START_TIMEOUT:.0f}s ({last_error});"
                       f" log:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate a server process started here (SIGTERM, then SIGKILL if it lingers)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def start_postgres(data_dir: Path) -> tuple[str, object]:
    """Start PostgreSQL 16 (pgserver) with its data in ``data_dir/pg``; return a SQLAlchemy psycopg-3 URL and
    the pgserver handle (``handle.cleanup()`` stops it).

    pgserver listens on a unix socket only (no TCP), and its URI (``postgresql://postgres:@/postgres?host=DIR``)
    is libpq syntax; SQLAlchemy needs the socket directory as the ``host`` query parameter of a proper URL.
    """
    import pgserver
    import sqlalchemy as sa

    data_dir.mkdir(parents=True, exist_ok=True)
    handle = pgserver.get_server(data_dir / "pg", cleanup_mode="stop")
    info = handle.get_postmaster_info()
    query: dict[str, str] = {}
    if info.socket_dir is not None:
        query["host"] = str(info.socket_dir)
        if info.port is not None:
            query["port"] = str(info.port)  # the socket file's name carries the port: .s.PGSQL.<port>
        url = sa.URL.create("postgresql+psycopg", username="postgres", database="postgres", query=query)
    else:  # TCP (pgserver does this on Windows only)
        url = sa.URL.create("postgresql+psycopg", username="postgres", host=info.hostname, port=info.port,
                            database="postgres")
    url_text = url.render_as_string(hide_password=False)
    engine = sa.create_engine(url_text)
    try:
        with engine.begin() as conn:
            if conn.execute(sa.text("SELECT 1")).scalar() != 1:
                raise RuntimeError("SELECT 1 did not return 1")
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except Exception:
        handle.cleanup()
        raise
    finally:
        engine.dispose()
    return url_text, handle
