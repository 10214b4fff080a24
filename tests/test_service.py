"""KnowledgeBase service on real files, the real embedding model and real FAISS."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import DOCUMENTS, make_settings
from kb.keyword import tokenize
from kb.service import _EMBED_BATCH_CHUNKS, KnowledgeBaseManager, safe_file_name
from kb.types import FileResult, KBError, KBNotFound
from tests.rebuild_pause import RebuildThread, pause_before_last_file
from tests.storage_checks import assert_consistent, chunk_texts

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


def consistent(kb) -> dict[str, int]:
    return assert_consistent(kb.manager, kb)


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
    consistent(kb)


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
    [rep] = kb.ingest([f], replace=True)
    assert rep.status == "replaced" and calls
    texts = " ".join(h.text for h in kb.search("launch code", top_k=10, threshold=0.0))
    assert "OSPREY-7" in texts and "PELICAN-42" not in texts
    assert [r["name"] for r in kb.files()] == ["notes.md"]
    consistent(kb)


def test_delete_file_and_rebuild(manager, tmp_path):
    kb = manager.create("lifecycle")
    kb.ingest([ZH_MD, ZH_MD2])
    before = kb.info()["chunks"]
    kb.delete_file(ZH_MD2.name)
    assert kb.info()["files"] == 1 and kb.info()["chunks"] < before
    assert all(h.file != ZH_MD2.name for h in kb.search("指令对齐", top_k=10, threshold=0.0))
    chunks = kb.info()["chunks"]
    results = kb.rebuild()
    assert [r.status for r in results] == ["indexed"] and kb.info()["chunks"] == chunks
    with pytest.raises(KBNotFound):
        kb.delete_file("nope.md")
    consistent(kb)


def expected_keyword_scores(query: str, texts: dict[int, str]) -> dict[int, float]:
    """Normalised BM25 written from kb/keyword.py's docstring, sharing only its tokenizer.

    Okapi BM25 (k1 = 1.2, b = 0.75, idf = ln(1 + (N - df + 0.5) / (df + 0.5))) summed over the distinct
    query terms, divided by "the most any chunk could score for this query (every query term present
    with saturated frequency, i.e. sum of idf * (k1 + 1))": terms no chunk has count there too (df = 0).
    Chunks without any query term are left out, as the index leaves them out.
    """
    k1, b = 1.2, 0.75
    docs = {cid: Counter(tokenize(text)) for cid, text in texts.items()}
    avgdl = sum(sum(c.values()) for c in docs.values()) / len(docs)
    terms = set(tokenize(query))
    df = {t: sum(1 for c in docs.values() if t in c) for t in terms}
    idf = {t: math.log(1 + (len(docs) - df[t] + 0.5) / (df[t] + 0.5)) for t in terms}
    best = sum(idf[t] * (k1 + 1) for t in terms)
    out = {}
    for cid, counts in docs.items():
        norm = k1 * (1 - b + b * sum(counts.values()) / avgdl)
        score = sum(idf[t] * counts[t] * (k1 + 1) / (counts[t] + norm) for t in terms if counts[t])
        if score > 0:
            out[cid] = score / best
    return out


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_threshold_has_one_meaning_in_every_mode(tmp_path: Path, mode: str) -> None:
    # No title prefix: the text embedded and keyword-indexed is exactly the chunk text a hit shows, so the
    # expected scores can be computed from the hits' texts. alpha 0.7, not 0.5, so swapped weights show.
    alpha = 0.7
    manager = KnowledgeBaseManager(make_settings(tmp_path / "data", title_prefix=False, hybrid_alpha=alpha))
    kb = manager.create(f"t-{mode}")
    kb.ingest([ZH_MD, ZH_MD2])
    query = "数据并行和模型并行的区别"
    texts = chunk_texts(manager, kb)
    assert len(texts) <= 50  # every chunk is a candidate of each retriever, so the expected top-k is global

    # Expected scores, computed without the retrieval code: cosine from the embedder with numpy (clipped to
    # [0, 1]), BM25 from the function above, hybrid = alpha * dense + (1 - alpha) * keyword.
    ids = list(texts)
    cosines = kb.embedder.encode_documents([texts[i] for i in ids]) @ kb.embedder.encode_query(query)
    dense = {cid: float(np.clip(c, 0.0, 1.0)) for cid, c in zip(ids, cosines, strict=True)}
    keyword = expected_keyword_scores(query, texts)
    expected = {"dense": dense, "keyword": keyword,
                "hybrid": {cid: alpha * dense[cid] + (1 - alpha) * keyword.get(cid, 0.0) for cid in ids}}[mode]

    hits = kb.search(query, top_k=20, threshold=0.0, mode=mode)
    assert len(hits) == min(20, len(expected))
    for h in hits:
        assert h.score == pytest.approx(expected[h.chunk_id], abs=5e-4), h.chunk_id
        assert 0.0 <= h.score < 1.0
    # The parts are reported too: those of the mode's retrievers (in hybrid, a chunk without a query term has
    # keyword 0: both halves are computed for every candidate).
    keyword_full = {cid: keyword.get(cid, 0.0) for cid in ids}
    dense_part, keyword_part = {"dense": (dense, {}), "keyword": ({}, keyword), "hybrid": (dense, keyword_full)}[mode]
    for h in hits:
        assert h.dense_score == (pytest.approx(dense_part[h.chunk_id], abs=5e-4) if h.chunk_id in dense_part else None)
        assert h.keyword_score == (pytest.approx(keyword_part[h.chunk_id], abs=5e-4) if h.chunk_id in keyword_part
                                   else None)
    # The best chunks by the expected score, best first: nothing better was missed.
    best = sorted(expected.values(), reverse=True)[:len(hits)]
    assert [h.score for h in hits] == pytest.approx(best, abs=5e-4)

    # The threshold means "drop hits scoring below it", on that score: a threshold equal to a hit's score
    # keeps it, one between two scores keeps exactly the hits above.
    def kept(threshold: float) -> list[int]:
        return [h.chunk_id for h in kb.search(query, top_k=20, threshold=threshold, mode=mode)]

    middle = hits[len(hits) // 2]
    assert kept(middle.score) == [h.chunk_id for h in hits if h.score >= middle.score]
    assert middle.chunk_id in kept(middle.score)
    cut = next(i for i in range(len(hits) // 2, len(hits) - 1) if hits[i].score > hits[i + 1].score)
    assert kept((hits[cut].score + hits[cut + 1].score) / 2) == [h.chunk_id for h in hits[:cut + 1]]
    assert kept(1.0) == []


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
    consistent(kb)


def test_names_are_validated_and_sanitised(manager, tmp_path):
    for bad in ["../evil", "a/b", "", ".hidden", "x" * 65, "a\x00b"]:
        with pytest.raises(KBError):
            manager.create(bad)
    # A name is a label (the bytes live in the database), but it never climbs out of what was ingested.
    assert safe_file_name("../../etc/passwd") == "etc/passwd"
    assert safe_file_name("..\\..\\win.ini") == "win.ini"
    assert safe_file_name("/abs/./x.md") == "abs/x.md"
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


def test_concurrent_uploads_and_search_during_rebuild(tmp_path: Path) -> None:
    # Ingests commit file by file; a rebuild that (wrongly) did so into the live index would show a KB missing
    # the files it has not re-read yet.
    settings = make_settings(tmp_path / "data", chunk_size=100, chunk_overlap=0)
    kb = KnowledgeBaseManager(settings).create("busy")
    files = []
    for i in range(24):
        f = tmp_path / f"doc{i}.md"
        f.write_text(f"# Doc {i}\n\n" + f"Document number {i} talks about topic-{i} in depth. " * 24, encoding="utf-8")
        files.append(f)
    errors: list[BaseException] = []
    results: list[FileResult] = []

    def upload(batch: list[Path]) -> None:
        try:
            results.extend(kb.ingest(batch))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(files[:12],)), threading.Thread(target=upload, args=(files[12:],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and kb.info()["files"] == 24 and all(r.status == "indexed" for r in results)
    chunks = kb.info()["chunks"]
    # Enough chunks that the rebuild has flushed a full embedding batch before its last file.
    assert chunks - max(r.chunks for r in results) >= _EMBED_BATCH_CHUNKS

    def check_readers_see_the_whole_kb() -> None:
        assert (kb.info()["files"], kb.info()["chunks"]) == (24, chunks)
        for i in (0, 11, 12, 23):
            top = kb.search(f"topic-{i}", top_k=1, threshold=0.0)
            assert [h.file for h in top] == [f"doc{i}.md"], i

    resume, paused = threading.Event(), threading.Event()
    rebuild = RebuildThread(kb, pause_before_last_file(resume, paused))
    rebuild.start()
    try:
        while not paused.is_set():  # searches while the rebuild works
            assert rebuild.is_alive(), "the rebuild ended before its last file"
            check_readers_see_the_whole_kb()
        check_readers_see_the_whole_kb()  # the dangerous moment: all but one file re-read, nothing committed
    finally:
        resume.set()
        rebuild.join(timeout=300)  # re-raises whatever the rebuild thread raised
    assert [r.status for r in rebuild.results] == ["indexed"] * 24
    check_readers_see_the_whole_kb()
    consistent(kb)


def test_same_bytes_twice_in_one_job_are_indexed_once(manager, tmp_path):
    kb = manager.create("twins")
    a = tmp_path / "notes.md"
    a.write_text("# Notes\n\nThe launch code is PELICAN-42.\n", encoding="utf-8")
    b = tmp_path / "copy-of-notes.md"
    b.write_bytes(a.read_bytes())
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7 this is not a pdf")
    bad2 = tmp_path / "broken-again.pdf"
    bad2.write_bytes(bad.read_bytes())
    results = kb.ingest([a, b, bad, bad2])
    assert [r.status for r in results] == ["indexed", "duplicate", "failed", "failed"], [r.message() for r in results]
    assert results[1].duplicate_of == "notes.md"
    assert results[3].error == results[2].error
    assert [f["name"] for f in kb.files() if f["status"] == "indexed"] == ["notes.md"]
    consistent(kb)


def test_parsing_runs_beside_embedding(manager, tmp_path, monkeypatch):
    """The next file is parsed while the previous one is being embedded (not parse, embed, parse, embed)."""
    import time

    import kb.service as service

    monkeypatch.setattr(service, "_EMBED_BATCH_CHUNKS", 1)  # one embedding call per file
    kb = manager.create("pipeline")
    windows: dict[str, list[tuple[float, float]]] = {"load": [], "embed": []}
    real_load, emb = service.KnowledgeBase._load, kb.embedder
    real_encode = emb.encode_documents

    def timed(kind, fn):
        def run(*args, **kwargs):
            t = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                windows[kind].append((t, time.monotonic()))
        return run

    def slow_encode(texts):  # the real model, made slower than parsing so an overlap cannot be missed
        time.sleep(0.5)
        return real_encode(texts)

    def slow_load(*args, **kwargs):  # parsing takes real time too, so a reader that runs ahead must overlap
        time.sleep(0.2)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(service.KnowledgeBase, "_load", timed("load", slow_load))
    monkeypatch.setattr(emb, "encode_documents", timed("embed", slow_encode))
    files = []
    for n in range(4):
        f = tmp_path / f"doc{n}.md"
        f.write_text(f"# Doc {n}\n\n第{n}号文件讲的是流水线并行与数据并行的区别。\n", encoding="utf-8")
        files.append(f)
    results = kb.ingest(files)
    assert [r.status for r in results] == ["indexed"] * 4
    overlapped = [(ls, le) for ls, le in windows["load"] for es, ee in windows["embed"] if ls < ee and es < le]
    assert len(overlapped) >= 2, windows
    consistent(kb)


def test_cheap_files_are_parsed_first_so_embedding_starts_at_once(manager, tmp_path, monkeypatch):
    """A job that starts with a big PDF does not leave the embedder idle while it parses: text files go first,
    smallest first, so the embedder has work at once and the PDF parses behind it. Results keep the order given."""
    import kb.service as service

    kb = manager.create("order")
    order: list[str] = []
    real_load = service.KnowledgeBase._load

    def spy(self, data, name):
        order.append(name)
        return real_load(self, data, name)

    monkeypatch.setattr(service.KnowledgeBase, "_load", spy)
    big = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__langchain.pdf"  # 600 KB: ~1.5 s to parse
    small = tmp_path / "small.md"
    small.write_text("# 小文件\n\n流水线并行把模型按层切分。\n", encoding="utf-8")
    files = [big, ZH_MD, small, ZH_MD2]
    results = kb.ingest(files)
    assert order == ["small.md", ZH_MD2.name, ZH_MD.name, big.name]
    assert [r.name for r in results] == [f.name for f in files]
    assert [r.status for r in results] == ["indexed"] * 4
    consistent(kb)


def test_small_files_are_read_ahead_by_chunks_and_embedded_in_one_call(manager, tmp_path, monkeypatch):
    """While the embedder works, the reader keeps loading up to ``AHEAD_CHUNKS`` chunks, not a fixed count of files:
    with 4 files ahead, small files reached the embedder 12 chunks at a time, each call with its own commit."""
    import kb.service as service

    kb = manager.create("ahead")
    files = []
    for i in range(40):
        files.append(tmp_path / f"note{i:02d}.md")
        files[-1].write_text(f"# 笔记 {i}\n\n第{i}条笔记：流水线并行把模型按层切分。\n", encoding="utf-8")
    loaded: list[str] = []
    real_load = service.KnowledgeBase._load_and_chunk

    def counting(self, i, item, *rest):
        out = real_load(self, i, item, *rest)
        loaded.append(item["name"])
        return out

    monkeypatch.setattr(service.KnowledgeBase, "_load_and_chunk", counting)
    emb = kb.embedder
    real_encode = emb.encode_documents
    calls: list[int] = []
    read_during_first_call: list[int] = []

    def encode(texts):
        if not calls:  # the first call (one file): give the reader time to fill its room
            deadline = time.monotonic() + 30
            while len(loaded) < len(files) and time.monotonic() < deadline:
                time.sleep(0.02)
            read_during_first_call.append(len(loaded))
        calls.append(len(texts))
        return real_encode(texts)

    monkeypatch.setattr(emb, "encode_documents", encode)
    results = kb.ingest(files)
    assert [r.status for r in results] == ["indexed"] * 40 and sum(r.chunks for r in results) == 40
    assert read_during_first_call == [40]  # the reader did not stop at a few files
    assert calls == [calls[0], 40 - calls[0]]  # the rest in one call
    consistent(kb)


def test_keyword_terms_are_counted_beside_the_embedder_not_in_the_commit(manager, tmp_path, monkeypatch):
    """jieba is most of a commit's time on Chinese text: ingestion counts terms in the reader thread, and the
    commit (on the thread that embeds) only stores them. With no core beyond the embedder's threads, in the reader
    thread itself: a loader process at its lower priority would be starved."""
    import kb.index.local as local
    import kb.keyword as keyword
    import kb.service as service

    monkeypatch.setattr(service, "usable_cores", lambda: manager.settings.n_threads)
    where: list[str] = []
    real = keyword.tokenize

    def spy(text):
        where.append(threading.current_thread().name)
        return real(text)

    monkeypatch.setattr(keyword, "tokenize", spy)
    monkeypatch.setattr(local, "tokenize", spy)
    kb = manager.create("terms")
    f = tmp_path / "zh.md"
    f.write_text("# 流水线\n\n流水线并行把模型按层切分到多张显卡上，每张卡只保存一部分层的参数。\n", encoding="utf-8")
    assert [r.status for r in kb.ingest([f])] == ["indexed"]
    assert where and all(name.startswith("ingest-reader") for name in where), where
    assert [h.text for h in kb.search("显卡", mode="keyword")]  # and the stored terms are searchable


def test_keyword_terms_are_counted_in_a_loader_process_when_a_core_is_free(manager, tmp_path, monkeypatch):
    """jieba is pure Python. Counted in the app, it holds the GIL that the embedding thread needs between torch
    ops: beside a busy Python thread a one-thread encode took 45x as long, beside a busy process 1.04x. So when
    the embedder's threads leave a core free, a loader process counts each chunk's keyword terms, the commit only
    stores them, and they are exactly what the app would count (Traditional folding, stems and bigrams included)."""
    import kb.index.local as local
    import kb.keyword as keyword
    import kb.service as service

    monkeypatch.setattr(service, "usable_cores", lambda: manager.settings.n_threads + 1)

    in_app: list[str] = []
    real = keyword.tokenize

    def spy(text):
        in_app.append(text)
        return real(text)

    monkeypatch.setattr(keyword, "tokenize", spy)
    monkeypatch.setattr(local, "tokenize", spy)
    given: list[tuple[list[str], list[Counter[str]] | None]] = []
    add = manager.index.add

    def recording(index, dim, ids, vectors, texts, terms=None):
        given.append((list(texts), terms))
        return add(index, dim, ids, vectors, texts, terms)

    monkeypatch.setattr(manager.index, "add", recording)
    kb = manager.create("terms")
    f = tmp_path / "zh.md"
    f.write_text("# 流水线\n\n流水线并行把模型按层切分到多张显卡上，每张卡只保存一部分层的参数。\n\n"
                 "資料並行 replicates the running models; ЗАГРУЗКА カタカナ 2024 v1.5\n", encoding="utf-8")
    assert [r.status for r in kb.ingest([f, ZH_MD])] == ["indexed", "indexed"]
    assert in_app == []
    texts = [t for batch, _ in given for t in batch]
    assert len(texts) > 10 and all(terms is not None for _, terms in given)
    monkeypatch.setattr(keyword, "tokenize", real)
    assert [c for _, terms in given for c in terms] == [keyword.term_counts(t) for t in texts]
    assert [h.file for h in kb.search("显卡", mode="keyword")][:1] == ["zh.md"]  # and the stored terms are searchable
    assert [h.file for h in kb.search("资料并行", mode="keyword")][:1] == ["zh.md"]


@pytest.mark.parametrize("free_core", [False, True])
def test_warm_loads_jieba_into_the_loader_process_only_when_it_will_count_terms(manager, monkeypatch, free_core):
    """jieba's dictionary costs a loader process 0.9 s and ~43 MiB: loaded at start-up (before the worker's memory
    baseline) where that process will count terms, and not at all where the app counts them."""
    import kb.service as service
    from kb.loaders import worker

    monkeypatch.setattr(service, "usable_cores", lambda: manager.settings.n_threads + free_core)
    pool = worker._idle_queue(service._loader_options(manager.settings).max_memory_mb)
    while not pool.empty():  # other tests' workers
        pool.get_nowait().kill()
    manager.warm()
    [w] = [pool.get_nowait() for _ in range(pool.qsize())]
    pool.put(w)
    assert w.uses == (1 if free_core else 0)
    assert (w.rss_first is not None) == free_core


def test_terms_are_counted_in_the_app_when_the_loader_process_cannot(manager, tmp_path, monkeypatch):
    """A worker that dies while counting costs no file: the terms are counted in the app instead."""
    import kb.loaders.worker as worker
    import kb.service as service

    monkeypatch.setattr(service, "usable_cores", lambda: manager.settings.n_threads + 1)

    def dead(texts, options=None):
        raise worker.LoadError("loader crashed (exit code -9; probably out of memory)")

    monkeypatch.setattr(worker, "count_terms_pooled", dead)
    kb = manager.create("fallback")
    f = tmp_path / "zh.md"
    f.write_text("# 流水线\n\n流水线并行把模型按层切分到多张显卡上。\n", encoding="utf-8")
    assert [r.status for r in kb.ingest([f])] == ["indexed"]
    assert [h.file for h in kb.search("显卡", mode="keyword")] == ["zh.md"]


def test_a_model_that_changed_size_is_a_clear_error_not_a_crash(settings, tmp_path):
    """A remote server (or a local model directory) that now serves another dimension than the KB holds."""
    from kb.db import KBRow

    manager = KnowledgeBaseManager(settings.model_copy(update={"embedding_model": "use-multilingual"}))
    kb = manager.create("resized")
    f = tmp_path / "a.md"
    f.write_text("# A\n\nThe launch code is PELICAN-42.\n", encoding="utf-8")
    assert kb.ingest([f])[0].status == "indexed"
    with manager.db.session() as s:  # what a KB built when the model gave 384-dimensional vectors looks like
        s.get(KBRow, kb.id).dim = 384
    with pytest.raises(KBError, match=r"now gives 512-dimensional vectors.*holds 384.*rebuild it"):
        kb.search("launch code", mode="dense")
    g = tmp_path / "b.md"
    g.write_text("# B\n\nAnother file.\n", encoding="utf-8")
    with pytest.raises(KBError, match="rebuild it"):
        kb.ingest([g])
    assert kb.search("launch code", mode="keyword", threshold=0.0)[0].file == "a.md"  # keyword needs no vectors
    assert [f["name"] for f in kb.files()] == ["a.md"]
