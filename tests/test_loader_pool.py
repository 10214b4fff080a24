"""The pooled loader processes: started warm ahead of the first file, reused, retired, replaced when they die."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conftest import DOCUMENTS
from kb.loaders import worker
from kb.loaders.base import LoaderOptions
from kb.types import LoadError

OPTIONS = LoaderOptions(max_memory_mb=1536)  # a pool of its own: other tests' workers are not in it


def _idle_pids() -> list[int]:
    idle = worker._idle.get(OPTIONS.max_memory_mb)
    pids = []
    while idle is not None and not idle.empty():
        pids.append(idle.get_nowait())
    for w in pids:
        idle.put(w)
    return [w.proc.pid for w in pids]


@pytest.fixture()
def doc(tmp_path: Path) -> Path:
    f = tmp_path / "a.md"
    f.write_text("# 标题\n\n流水线并行的第一段。\n", encoding="utf-8")
    return f


@pytest.fixture(autouse=True)
def empty_pool():
    def drain() -> None:
        idle = worker._idle.get(OPTIONS.max_memory_mb)
        while idle is not None and not idle.empty():
            idle.get_nowait().kill()

    drain()
    yield
    drain()


def test_prestart_leaves_a_ready_worker_that_the_first_load_uses(doc: Path) -> None:
    worker.prestart(OPTIONS)
    [pid] = _idle_pids()
    # Started and past its imports when prestart returned: PyMuPDF's library is already mapped in.
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "mupdf" in maps.lower()
    loaded = worker.load_file_pooled(doc, options=OPTIONS)
    assert "流水线并行" in loaded.docs[0].text
    assert _idle_pids() == [pid]  # the same process served it and went back to the pool
    worker.prestart(OPTIONS)
    assert _idle_pids() == [pid]  # one warm worker is enough: no second one


def test_a_worker_that_was_never_waited_for_still_answers_its_first_request(doc: Path) -> None:
    assert _idle_pids() == []
    assert "流水线并行" in worker.load_file_pooled(doc, options=OPTIONS).docs[0].text  # its ready line is skipped


def test_a_worker_counts_keyword_terms_exactly_as_the_app_does_and_stays_in_the_pool(doc: Path) -> None:
    from kb.keyword import term_counts

    texts = [
        (DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__分布式训练技术原理.md").read_text(encoding="utf-8")[:3000],
        "資料並行 and the running models' stems; ЗАГРУЗКА カタカナ 한국어 2024 v1.5\n\u2028第二行",
        "", "的 了 是",
    ]
    worker.load_file_pooled(doc, options=OPTIONS)
    [pid] = _idle_pids()
    assert worker.count_terms_pooled(texts, OPTIONS) == [term_counts(t) for t in texts]
    assert _idle_pids() == [pid]
    with pytest.raises(LoadError, match="not valid Unicode"):  # a lone surrogate cannot cross the pipe
        worker.count_terms_pooled(["\ud800"], OPTIONS)
    assert _idle_pids() == [pid]


@pytest.mark.parametrize("reply", [[{"流水线": "1"}, {}], [["流水线"], {}], [{"流水线": 1}], {"流水线": 1}])
def test_a_worker_that_gives_anything_but_term_counts_is_refused(doc: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 reply: object) -> None:
    """A worker that a file subverted must not put anything but counts into the index: the caller counts instead."""
    monkeypatch.setattr(worker._Worker, "ask", lambda self, request, timeout_s: reply)
    with pytest.raises(LoadError, match="no term counts"):
        worker.count_terms_pooled(["流水线并行", "第二段"], OPTIONS)


def test_a_worker_serves_many_small_files_without_a_restart(doc: Path) -> None:
    """A restart costs ~0.6 CPU-s (Python and PyMuPDF imports) and the wait for it: retiring every 50 loads made
    indexing 256 small markdown files wait for five of them."""
    worker.load_file_pooled(doc, options=OPTIONS)
    [pid] = _idle_pids()
    for _ in range(60):
        worker.load_file_pooled(doc, options=OPTIONS)
    assert _idle_pids() == [pid]


def test_workers_are_retired_after_max_uses_and_replaced_at_once(doc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "MAX_USES", 2)
    worker.load_file_pooled(doc, options=OPTIONS)
    [first] = _idle_pids()
    worker.load_file_pooled(doc, options=OPTIONS)
    [second] = _idle_pids()  # retired after its second load, and its successor already started
    assert second != first
    assert "流水线并行" in worker.load_file_pooled(doc, options=OPTIONS).docs[0].text
    assert _idle_pids() == [second]


def test_workers_are_retired_when_their_memory_grows(doc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a parser's leak costs is memory: a worker whose resident memory grew past MAX_GROWTH_MB since its first
    load is retired (PyMuPDF keeps ~16 MB after the first PDF)."""
    monkeypatch.setattr(worker, "MAX_GROWTH_MB", 4)
    worker.load_file_pooled(doc, options=OPTIONS)
    [first] = _idle_pids()
    worker.load_file_pooled(doc, options=OPTIONS)
    assert _idle_pids() == [first]  # markdown grows nothing
    loaded = worker.load_file_pooled(DOCUMENTS / "pdf_zh_text" / "PyMuPDF__chinese-tables.pdf", options=OPTIONS)
    assert loaded.pages
    [second] = _idle_pids()
    assert second != first


def test_a_dead_worker_fails_one_file_clearly_and_the_next_load_gets_a_new_one(doc: Path) -> None:
    worker.prestart(OPTIONS)
    [pid] = _idle_pids()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(LoadError, match="loader crashed"):
        worker.load_file_pooled(doc, options=OPTIONS)
    assert "流水线并行" in worker.load_file_pooled(doc, options=OPTIONS).docs[0].text
    assert _idle_pids() not in ([], [pid])


def test_workers_parse_at_a_lower_priority_than_the_embedder(doc: Path) -> None:
    """Parsing runs beside embedding on the same cores: the worker yields to the embedder's threads when both want
    a core, instead of stalling the embedder's parallel sections."""
    worker.prestart(OPTIONS)
    [pid] = _idle_pids()
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + worker.NICE
    assert worker.NICE > 0
    # It leads a session of its own, and the scheduler shares CPU fairly between sessions whatever their tasks'
    # nice values: the session's own nice must be lowered too.
    assert Path(f"/proc/{pid}/autogroup").read_text().split()[-2:] == ["nice", str(worker.NICE)]

