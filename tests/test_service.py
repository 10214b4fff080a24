"""KnowledgeBase service on real files, the real embedding model and real FAISS."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import DOCUMENTS, REPO, make_settings
from kb.service import KnowledgeBaseManager, safe_file_name
from kb.store import IndexState
from kb.types import KBError, KBNotFound

ZH_MD = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__分布式训练技术原理.md"
ZH_MD2 = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__大模型指令对齐训练原理.md"


def make_zh_pdf(path: Path, pages: list[str]) -> Path:
    import pymupdf

    doc = pymupdf.open()
    for text in pages:
        page = doc.new_page()
        page.insert_textbox(pymupdf.Rect(72, 72, 520, 760), text, fontname="china-s", fontsize=12)
    doc.save(path)
    return path


def assert_consistent(kb_dir: Path) -> IndexState:
    state = IndexState.load(kb_dir)
    assert len(state.vectors) == len(state.chunks) == len(state.bm25)
    indexed = {fid: r for fid, r in state.manifest["files"].items() if r["status"] == "indexed"}
    assert sum(r["chunks"] for r in indexed.values()) == len(state.chunks)
    assert {c.file_id for c in state.chunks.values()} <= set(indexed)
    for r in indexed.values():
        assert (kb_dir / "files" / r["stored"]).is_file()
    return state


def test_ingest_search_pdf_page_and_markdown(manager: KnowledgeBaseManager, tmp_path: Path):
    kb = manager.create("中文库")
    pdf = make_zh_pdf(tmp_path / "公司介绍.pdf", [
        "第一页介绍天气和交通，与公司无关。今天下雨，道路拥堵。",
        "星河公司的总部位于杭州市西湖区，成立于2015年，主要生产智能手表。",
    ])
    results = kb.ingest([pdf, ZH_MD])
    assert [r.status for r in results] == ["indexed", "indexed"], [r.message() for r in results]
    assert all(r.chunks > 0 for r in results)
    hits = kb.search("星河公司的总部在哪里？", top_k=3, threshold=0.0)
    assert hits[0].file == "公司介绍.pdf" and hits[0].page == 2
    assert "杭州" in hits[0].text
    hits = kb.search("流水线并行", top_k=3, threshold=0.0)
    assert hits[0].file == ZH_MD.name and hits[0].heading
    assert_consistent(kb.path)


def test_duplicate_costs_no_embedding_and_changed_file_replaces(manager, tmp_path, monkeypatch):
    kb = manager.create("dedup")
    f = tmp_path / "notes.md"
    f.write_text("# Notes\n\nThe launch code is PELICAN-42.\n", encoding="utf-8")
    assert kb.ingest([f])[0].status == "indexed"

    calls = []
    emb = kb.embedder
    real = emb.encode_documents
    monkeypatch.setattr(emb, "encode_documents", lambda texts: calls.append(len(texts)) or real(texts))
    copy = tmp_path / "copy-of-notes.md"
    copy.write_bytes(f.read_bytes())
    [dup] = kb.ingest([copy])
    assert dup.status == "duplicate" and calls == []

    f.write_text("# Notes\n\nThe launch code is now OSPREY-7.\n", encoding="utf-8")
    [rep] = kb.ingest([f])
    assert rep.status == "replaced" and calls
    texts = " ".join(h.text for h in kb.search("launch code", top_k=10, threshold=0.0))
    assert "OSPREY-7" in texts and "PELICAN-42" not in texts
    assert [r["name"] for r in kb.files()] == ["notes.md"]
    assert_consistent(kb.path)


def test_delete_file_and_rebuild(manager, tmp_path):
    kb = manager.create("lifecycle")
    kb.ingest([ZH_MD, ZH_MD2])
    before = kb.info()["chunks"]
    kb.delete_file(ZH_MD2.name)
    assert kb.info()["files"] == 1 and kb.info()["chunks"] < before
    assert all(h.file != ZH_MD2.name for h in kb.search("指令对齐", top_k=10, threshold=0.0))
    assert len(list((kb.path / "files").iterdir())) == 1
    chunks = kb.info()["chunks"]
    results = kb.rebuild()
    assert [r.status for r in results] == ["indexed"] and kb.info()["chunks"] == chunks
    with pytest.raises(KBNotFound):
        kb.delete_file("nope.md")
    assert_consistent(kb.path)


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_threshold_has_one_meaning_in_every_mode(manager, mode):
    kb = manager.create(f"t-{mode}")
    kb.ingest([ZH_MD, ZH_MD2])
    hits = kb.search("数据并行和模型并行的区别", top_k=20, threshold=0.0, mode=mode)
    assert hits and all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    cut = hits[len(hits) // 2].score
    kept = kb.search("数据并行和模型并行的区别", top_k=20, threshold=cut, mode=mode)
    assert kept and all(h.score >= cut for h in kept)
    assert len(kept) < len(hits) or cut == hits[-1].score
    assert kb.search("数据并行和模型并行的区别", top_k=20, threshold=1.0, mode=mode) == []


def test_failed_file_reported_and_nothing_lost(manager, tmp_path):
    kb = manager.create("faults")
    kb.ingest([ZH_MD])
    chunks = kb.info()["chunks"]
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n", encoding="utf-8")
    bad_pdf = tmp_path / "fake.pdf"
    bad_pdf.write_bytes(b"this is not a pdf at all")
    results = kb.ingest([empty, bad_pdf])
    assert [r.status for r in results] == ["failed", "failed"]
    assert "empty" in results[0].error and "PDF" in results[1].error
    assert kb.info()["chunks"] == chunks and kb.info()["failed"] == 2
    assert_consistent(kb.path)


def test_names_are_validated_and_sanitised(manager, tmp_path):
    for bad in ["../evil", "a/b", "", ".hidden", "x" * 65, "a\x00b"]:
        with pytest.raises(KBError):
            manager.create(bad)
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("..\\..\\win.ini") == "win.ini"
    assert len(safe_file_name("长" * 500 + ".pdf")) <= 200 and safe_file_name("长" * 500 + ".pdf").endswith(".pdf")
    kb = manager.create("safe")
    f = tmp_path / "doc.md"
    f.write_text("# T\n\nhello world content", encoding="utf-8")
    [r] = kb.ingest([f], names=["../../../outside.md"])
    assert r.status == "indexed" and r.name == "outside.md"
    assert not (manager.settings.data_dir.parent / "outside.md").exists()


def test_state_persists_across_managers(settings, tmp_path):
    kb = KnowledgeBaseManager(settings).create("persist")
    kb.ingest([ZH_MD])
    again = KnowledgeBaseManager(settings).get("persist")
    assert again.info()["chunks"] == kb.info()["chunks"]
    assert again.search("张量并行", top_k=1, threshold=0.0)[0].file == ZH_MD.name


def test_concurrent_uploads_and_search_during_rebuild(manager, tmp_path):
    kb = manager.create("busy")
    files = []
    for i in range(6):
        f = tmp_path / f"doc{i}.md"
        f.write_text(f"# Doc {i}\n\n" + f"Document number {i} talks about topic-{i} in depth. " * 30, encoding="utf-8")
        files.append(f)
    errors: list[BaseException] = []

    def upload(batch: list[Path]) -> None:
        try:
            kb.ingest(batch)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(files[:3],)), threading.Thread(target=upload, args=(files[3:],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and kb.info()["files"] == 6

    searched = []
    rebuild = threading.Thread(target=kb.rebuild)
    rebuild.start()
    while rebuild.is_alive():
        searched.append(len(kb.search("topic-3", top_k=3, threshold=0.0)))
        time.sleep(0.05)
    rebuild.join()
    assert searched and all(n > 0 for n in searched)
    assert_consistent(kb.path)


def test_kill_9_during_ingest_never_corrupts(tmp_path):
    """Kill the ingesting process at random moments after it starts committing; the KB must
    always load with manifest, vectors, chunks and keyword index in agreement."""
    import hashlib

    data = tmp_path / "data"
    settings = make_settings(data)
    KnowledgeBaseManager(settings).create("crash")
    manifest = data / "crash" / "manifest.json"
    # Commit after nearly every file so the kills land inside commits too.
    env = dict(os.environ, PYTHONPATH=str(REPO), KBCHAT_CHECKPOINT_SECONDS="0.1")
    rng = random.Random(7)
    for round_ in range(6):
        # Same names, new contents each round: every round also replaces files of the last.
        src = tmp_path / f"src{round_}"
        src.mkdir()
        for i in range(40):
            (src / f"f{i:02d}.md").write_text(
                f"# File {i}\n\n" + f"Round {round_} paragraph {i} about subject {i}. " * 60, encoding="utf-8")
        before = manifest.stat().st_mtime_ns
        proc = subprocess.Popen(
            [sys.executable, "-m", "kb", "ingest", "--data-dir", str(data), "--kb", "crash", str(src)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while manifest.stat().st_mtime_ns == before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = assert_consistent(data / "crash")
        kb = KnowledgeBaseManager(settings).get("crash")
        if state.chunks:
            assert kb.search("subject", top_k=1, threshold=0.0)
    # A final uninterrupted run completes the last round: each name indexed once, latest content.
    subprocess.run([sys.executable, "-m", "kb", "ingest", "--data-dir", str(data), "--kb", "crash", str(src)],
                   cwd=REPO, env=env, check=True, capture_output=True)
    state = assert_consistent(data / "crash")
    indexed = {r["name"]: fid for fid, r in state.manifest["files"].items() if r["status"] == "indexed"}
    assert len(indexed) == 40
    for name, fid in indexed.items():
        assert fid == hashlib.sha256((src / name).read_bytes()).hexdigest()
