"""Shared fixtures: real models, real files from ../shared/data, a real server on loopback."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
for _name in [n for n in os.environ if n.startswith("KBCHAT_")]:
    del os.environ[_name]  # tests choose their settings explicitly

from configs.settings import Settings, load_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DOCUMENTS = SHARED_DATA / "documents"
RETRIEVAL = SHARED_DATA / "retrieval"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def make_settings(data_dir: Path, **overrides) -> Settings:
    """Settings for a test: its own data dir, the small fast LLM unless a test asks otherwise."""
    base = {"llm_model": "smollm2-135m", "max_tokens": 48, "condense_question": False}
    return load_settings(data_dir=data_dir, **(base | overrides))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = make_settings(tmp_path / "data")
    s.prepare_dirs()
    return s


@pytest.fixture
def manager(settings: Settings):
    from kb.service import KnowledgeBaseManager

    return KnowledgeBaseManager(settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """An ASGI app served by uvicorn in a thread on 127.0.0.1, from ``with`` until its end."""

    start_timeout_s = 120.0
    stop_timeout_s = 30.0

    def serve(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.stop_timeout_s)


class LiveServer(ThreadedServer):
    """The real app (FastAPI + Gradio) served by uvicorn in a thread on 127.0.0.1."""

    def __init__(self, settings: Settings):
        from api.server import create_app
        from services import Services

        self.services = Services(settings)
        self.app = create_app(self.services)
        self.serve(self.app)


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as server:
        yield server


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian chromium driven by Playwright (never a downloaded browser)."""
    import playwright.sync_api as playwright_api

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: ./test.sh installs it (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        # Its own short TMPDIR: prepare_dirs() points TMPDIR at a test's data dir, too long for a socket path.
        env = dict(os.environ, TMPDIR="/tmp")
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, env=env)
        yield b
        b.close()
