"""The storage bugs of the generation-file era, each as a test (issue "Storage on real engines").

Real embedder, real loaders, real SQLite and the real local index; the few monkeypatches make one file's
loader or embedding fail on purpose, which no real file does on demand.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import kb.service as service
from conftest import DOCUMENTS, REPO, make_settings
from kb.service import KnowledgeBase, KnowledgeBaseManager
from kb.types import KBError, LoadError
from tests.rebuild_pause import RebuildThread, pause_before_last_file
from tests.storage_checks import assert_consistent, write_legacy_kb

ZH_MD = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__分布式训练技术原理.md"


def write_docs(folder: Path, n: int, words: int = 30, tag: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        f = folder / f"doc{i:02d}.md"
        f.write_text(f"# Doc {i}\n\n" + f"Document {i}{tag} discusses topic-{i} carefully. " * words, encoding="utf-8")
        out.append(f)
    return out


@pytest.fixture
def mgr(tmp_path: Path) -> KnowledgeBaseManager:
    return KnowledgeBaseManager(make_settings(tmp_path / "data", chunk_size=200, chunk_overlap=0))


# --- bug 3: files replaced each other by display name ------------------------------------------------
def test_same_file_name_in_two_folders_keeps_both(mgr, tmp_path):
    a, b = tmp_path / "docs" / "a", tmp_path / "docs" / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    (a / "README.md").write_text("# A\n\nThe alpha service listens on port 7001.\n", encoding="utf-8")
    (b / "README.md").write_text("# B\n\nThe beta service listens on port 7002.\n", encoding="utf-8")
    kb = mgr.create("folders")
    results = kb.ingest([a / "README.md", b / "README.md"], ["a/README.md", "b/README.md"])
    assert [(r.name, r.status) for r in results] == [("a/README.md", "indexed"), ("b/README.md", "indexed")]
    assert sorted(f["name"] for f in kb.files()) == ["a/README.md", "b/README.md"]
    assert {h.file for h in kb.search("which port does the service listen on", top_k=5, threshold=0.0)} == {
        "a/README.md", "b/README.md"}
    assert_consistent(mgr, kb)


def test_two_uploads_with_one_name_are_both_kept_unless_replace_is_asked(mgr, tmp_path):
    kb = mgr.create("uploads")
    first, second, third = (tmp_path / n for n in ("u1", "u2", "u3"))
    first.write_text("# Report\n\nQ1 revenue was 10 million.\n", encoding="utf-8")
    second.write_text("# Report\n\nQ2 revenue was 12 million.\n", encoding="utf-8")
    third.write_text("# Report\n\nQ3 revenue was 15 million.\n", encoding="utf-8")
    assert kb.ingest([first], ["report.md"])[0].status == "indexed"
    [r] = kb.ingest([second], ["report.md"])
    assert sorted(f["name"] for f in kb.files()) == ["report (2).md", "report.md"]
    assert (r.status, r.name, r.renamed_from) == ("indexed", "report (2).md", "report.md")
    assert "report (2).md" in r.message() and "replace" in r.message()
    [r] = kb.ingest([third], ["report.md"], replace=True)
    assert (r.status, r.name) == ("replaced", "report.md")
    texts = " ".join(h.text for h in kb.search("revenue", top_k=10, threshold=0.0))
    assert "15 million" in texts and "12 million" in texts and "10 million" not in texts
    assert_consistent(mgr, kb)


def test_files_embedded_together_commit_together_and_keep_their_names(mgr, tmp_path, monkeypatch):
    """One transaction and one index add per embedding call, not per file (a commit is an fsync): same-name files
    inside one batch are still numbered, duplicates still found, and every file's rows and results are there."""
    from sqlalchemy import event

    from kb.db import FileRow

    kb = mgr.create("grouped")
    files = write_docs(tmp_path / "many", 24)
    same = []
    for n in range(3):
        same.append(tmp_path / f"same{n}.md")
        same[-1].write_text(f"# Report\n\nQuarter {n} revenue was {10 + n} million.\n", encoding="utf-8")
    paths = files + same + [files[3]]
    names = [f.name for f in files] + ["report.md"] * 3 + ["copy.md"]
    emb, index = kb.embedder, mgr.index
    calls: list[int] = []
    adds: list[int] = []
    inserts: list[object] = []  # the transaction of each new file row (held, so no two share an id())
    real_encode, real_add = emb.encode_documents, index.add

    def encode(texts: list[str]) -> Any:
        calls.append(len(texts))
        return real_encode(texts)

    def add(name: str, dim: int, ids: list[int], *rest: Any) -> None:
        adds.append(len(ids))
        real_add(name, dim, ids, *rest)

    monkeypatch.setattr(emb, "encode_documents", encode)
    monkeypatch.setattr(index, "add", add)

    def on_insert(mapper: object, connection: Any, target: object) -> None:
        inserts.append(connection.get_transaction())

    event.listen(FileRow, "after_insert", on_insert)
    try:
        results = kb.ingest(paths, names)
    finally:
        event.remove(FileRow, "after_insert", on_insert)
    assert adds == calls  # one index add per embedding call, with all of its chunks
    assert len(calls) < len(files)  # the small files were embedded (so committed) several at a time
    assert [r.status for r in results] == ["indexed"] * 27 + ["duplicate"]
    assert [r.name for r in results[24:27]] == ["report.md", "report (2).md", "report (3).md"]
    assert results[27].duplicate_of == files[3].name
    assert sorted(f["name"] for f in kb.files()) == sorted([f.name for f in files] + [r.name for r in results[24:27]])
    assert len(inserts) == 27 and len({id(t) for t in inserts}) == len(calls)  # one transaction per embedding call
    assert_consistent(mgr, kb)


def test_a_rebuild_reads_ahead_and_embeds_files_together(mgr, tmp_path, monkeypatch):
    """A rebuild is ingestion again: files are re-read in a thread ahead of the embedder and embedded and committed
    a batch at a time (it was one call, one transaction and one index add per file, 2x the time on CMRC)."""
    kb = mgr.create("rebuild-batches")
    kb.ingest(write_docs(tmp_path / "src", 24))
    before = kb.info()["chunks"]
    emb, real = kb.embedder, kb.embedder.encode_documents
    calls: list[int] = []
    threads: list[str] = []
    real_load = service.KnowledgeBase._load_and_chunk

    def encode(texts: list[str]) -> Any:
        calls.append(len(texts))
        return real(texts)

    def load(self: KnowledgeBase, *args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_load(self, *args)

    monkeypatch.setattr(emb, "encode_documents", encode)
    monkeypatch.setattr(service.KnowledgeBase, "_load_and_chunk", load)
    results = kb.rebuild()
    assert [r.status for r in results] == ["indexed"] * 24
    assert sum(calls) == before and len(calls) < 24
    assert len(threads) == 24 and all(t.startswith("rebuild-reader") for t in threads)
    assert_consistent(mgr, kb)


# --- bug 4: an embedding error aborted the whole batch ------------------------------------------------
def test_embedding_error_fails_only_its_own_file(mgr, tmp_path, monkeypatch):
    kb = mgr.create("embed-fault")
    files = write_docs(tmp_path / "src", 4)
    poison = tmp_path / "src" / "poison.md"
    poison.write_text("# Poison\n\nThis text contains POISON-PILL that the embedder rejects.\n", encoding="utf-8")
    emb = kb.embedder
    real = emb.encode_documents

    def picky(texts):
        if any("POISON-PILL" in t for t in texts):
            raise RuntimeError("embedding server returned 500")
        return real(texts)

    monkeypatch.setattr(emb, "encode_documents", picky)
    results = kb.ingest([*files[:2], poison, *files[2:]])
    by_name = {r.name: r for r in results}
    assert by_name["poison.md"].status == "failed"
    assert "embedding failed" in by_name["poison.md"].error
    assert [by_name[f.name].status for f in files] == ["indexed"] * 4
    assert kb.info()["files"] == 4
    assert_consistent(mgr, kb)


# --- bugs 1 and 2: rebuild published a partial KB and lost files that failed to re-load -------------------
def test_file_that_fails_to_reload_in_a_rebuild_keeps_its_chunks(mgr, tmp_path, monkeypatch):
    kb = mgr.create("reload-fault")
    files = write_docs(tmp_path / "src", 3)
    kb.ingest(files)
    before = assert_consistent(mgr, kb)
    real_load = KnowledgeBase._load

    def flaky(self, data, name):
        if name == "doc01.md":
            raise LoadError("timed out after 600 s")
        return real_load(self, data, name)

    monkeypatch.setattr(KnowledgeBase, "_load", flaky)
    results = {r.name: r for r in kb.rebuild()}
    assert [h.file for h in kb.search("topic-1", top_k=1, threshold=0.0)] == ["doc01.md"]
    assert assert_consistent(mgr, kb) == before  # every file, with as many chunks as before
    assert results["doc01.md"].status == "failed" and results["doc01.md"].kept_old
    assert "timed out" in results["doc01.md"].error and "kept" in results["doc01.md"].error


def test_failed_rebuild_leaves_the_kb_exactly_as_it_was(mgr, tmp_path, monkeypatch):
    kb = mgr.create("rebuild-fault")
    kb.ingest(write_docs(tmp_path / "src", 4))
    before = assert_consistent(mgr, kb)
    generation = kb.row().generation
    emb = kb.embedder  # the KB's own model
    real = emb.encode_documents
    calls = []

    def dies_on_third_batch(texts):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("out of memory while embedding")
        return real(texts)

    monkeypatch.setattr(emb, "encode_documents", dies_on_third_batch)
    monkeypatch.setattr(service, "_EMBED_BATCH_CHUNKS", 1)  # a file a batch: two are in the shadow when it dies
    with pytest.raises(Exception, match="out of memory"):
        kb.rebuild(chunk_size=120)
    assert len(calls) == 3
    row = kb.row()
    assert (row.generation, row.building, row.chunk_size) == (generation, None, 200)
    assert assert_consistent(mgr, kb) == before
    # The shadow index of the failed rebuild is gone.
    assert len(mgr.index.ids(row.index_name(generation + 1))) == 0


def test_readers_see_the_whole_kb_through_a_rebuild_with_new_chunking(mgr, tmp_path):
    kb = mgr.create("shadow")
    kb.ingest(write_docs(tmp_path / "src", 6))
    before = kb.info()
    resume, paused = threading.Event(), threading.Event()
    t = RebuildThread(kb, pause_before_last_file(resume, paused), chunk_size=100)
    t.start()
    try:
        assert paused.wait(300)
        assert kb.info()["chunks"] == before["chunks"] and kb.info()["chunk_size"] == 200
        for i in range(6):
            assert [h.file for h in kb.search(f"topic-{i}", top_k=1, threshold=0.0)] == [f"doc{i:02d}.md"]
    finally:
        resume.set()
        t.join(300)
    after = kb.info()
    assert after["chunk_size"] == 100 and after["chunks"] > before["chunks"]
    assert_consistent(mgr, kb)


# --- bug 5: a reader got "damaged" while a commit deleted the previous generation -------------------------
def test_readers_in_another_manager_never_error_during_commits_and_rebuilds(tmp_path):
    settings = make_settings(tmp_path / "data", chunk_size=200, chunk_overlap=0)
    writer = KnowledgeBaseManager(settings)
    kb = writer.create("race")
    kb.ingest(write_docs(tmp_path / "seed", 2))
    reader = KnowledgeBaseManager(settings).get("race")  # as another process would
    errors: list[BaseException] = []
    searches = 0
    stop = threading.Event()

    def read() -> None:
        nonlocal searches
        while not stop.is_set():
            try:
                assert reader.search("topic-0", top_k=1, threshold=0.0)[0].file == "doc00.md"
                searches += 1
            except BaseException as e:
                errors.append(e)
                return

    t = threading.Thread(target=read)
    t.start()
    try:
        for i, f in enumerate(write_docs(tmp_path / "more", 12, tag="x")):
            kb.ingest([f], [f"more/{i}.md"])  # one commit each
        for size in (150, 200):  # each switches generations and drops the index the reader was using
            kb.rebuild(chunk_size=size)
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors[0]
    assert searches > 0
    assert_consistent(writer, kb)


# --- bug 6: a second upload to a busy KB failed after a lock timeout -------------------------------------
def test_second_upload_to_a_busy_kb_queues_and_both_finish(mgr, tmp_path):
    kb = mgr.create("queue")
    other = mgr.create("other")
    first_files = write_docs(tmp_path / "first", 3)
    resume, paused = threading.Event(), threading.Event()

    def hold(_frac: float, message: str) -> None:
        if message.startswith("3/3"):
            paused.set()
            assert resume.wait(300)

    results: dict[str, list] = {}
    t = threading.Thread(target=lambda: results.setdefault("first", kb.ingest(first_files, progress=hold)))
    t.start()
    assert paused.wait(300)
    try:
        job = kb.submit_ingest(write_docs(tmp_path / "second", 2, tag="b"), ["s0.md", "s1.md"])
        mgr.jobs.stale_s = 3600.0  # the held job is alive, just slow
        time.sleep(1.0)
        assert mgr.jobs.claim(job["id"]) is None  # it waits behind the running job of its KB...
        assert mgr.jobs.get(job["id"])["status"] == "queued"
        assert [j["id"] for j in mgr.jobs.list(kb.id) if j["status"] == "queued"] == [job["id"]]
        # ...while a job of another KB runs at once.
        other.ingest([tmp_path / "first" / "doc00.md"])
        assert other.info()["files"] == 1
    finally:
        resume.set()
        t.join(300)
    done = mgr.jobs.wait(job["id"])
    assert done["status"] == "done" and [r["status"] for r in done["result"]] == ["indexed", "indexed"]
    assert kb.info()["files"] == 5
    assert_consistent(mgr, kb)


def test_jobs_can_be_cancelled_and_keep_what_was_done(mgr, tmp_path, monkeypatch):
    monkeypatch.setattr("kb.service._EMBED_BATCH_CHUNKS", 1)  # each file is committed on its own
    kb = mgr.create("cancel")
    files = write_docs(tmp_path / "src", 6)
    job = kb.submit_ingest(files)
    mgr.jobs.cancel(job["id"])
    assert mgr.jobs.get(job["id"])["status"] == "cancelled"
    assert kb.info()["files"] == 0

    job = kb.submit_ingest(files)
    claimed = mgr.jobs.claim(job["id"])

    def cancel_midway(_frac: float, message: str) -> None:
        if message.startswith("3/6"):
            mgr.jobs.cancel(job["id"])
            time.sleep(1.0)  # the heartbeat (every 0.2 s here) passes the request to the runner

    mgr.jobs.heartbeat_s = 0.2
    mgr.jobs.run(claimed, cancel_midway)
    final = mgr.jobs.get(job["id"])
    assert final["status"] == "cancelled"
    assert 0 < kb.info()["files"] < 6
    assert_consistent(mgr, kb)


# --- bug 7: chat ignored the KB's search mode; chunking was not recorded with the KB ------------------------
def test_chat_uses_the_kbs_own_search_mode(tmp_path):
    from llm.chat import ChatOptions, ChatService
    from tests.test_chat import FakeLLM

    settings = make_settings(tmp_path / "data", search_mode="hybrid")
    mgr = KnowledgeBaseManager(settings)
    kb = mgr.create("kw", search_mode="keyword")
    kb.ingest([ZH_MD])
    service = ChatService(settings, mgr, FakeLLM(("好的",)))
    hits = service.answer("流水线并行是什么", options=ChatOptions(kb="kw"))[1]
    assert hits and all(h.dense_score is None and h.keyword_score is not None for h in hits)
    hits = service.answer("流水线并行是什么", options=ChatOptions(kb="kw", mode="dense"))[1]
    assert hits and all(h.keyword_score is None for h in hits)  # a request still overrides


def test_kb_prompt_is_kept_with_the_kb_and_added_to_its_answer_prompt(tmp_path):
    """A KB's own prompt (issue: "KBs with their own settings: ... prompt") is stored with the KB, survives a
    restart and an export/import, and is added to the answer's system prompt without replacing its rules."""
    from llm import prompts
    from llm.chat import ChatOptions, ChatService
    from tests.test_chat import FakeLLM

    settings = make_settings(tmp_path / "data")
    kb = KnowledgeBaseManager(settings).create("hr")
    kb.ingest([ZH_MD])
    rule = "回答时称呼用户为“您”，并在最后提醒以官方文档为准。"
    assert kb.update(prompt=rule)["prompt"] == rule

    mgr = KnowledgeBaseManager(settings)  # a restart
    assert mgr.get("hr").info()["prompt"] == rule
    llm = FakeLLM(("好的",))
    ChatService(settings, mgr, llm).answer("流水线并行是什么", options=ChatOptions(kb="hr"))
    system = llm.answer_calls()[-1][0][0]["content"]
    assert system.startswith(prompts.KB_SYSTEM["zh"]) and rule in system

    mgr.export_kb("hr", tmp_path / "hr.zip")
    assert mgr.import_kb(tmp_path / "hr.zip", name="hr2").info()["prompt"] == rule

    assert mgr.get("hr").update(prompt=None)["prompt"] == ""  # back to no KB prompt
    ChatService(settings, mgr, llm).answer("流水线并行是什么", options=ChatOptions(kb="hr"))
    assert llm.answer_calls()[-1][0][0]["content"] == prompts.KB_SYSTEM["zh"]
    with pytest.raises(KBError, match="prompt"):
        mgr.get("hr").update(prompt="x" * 5000)


def test_rebuild_uses_the_chunking_recorded_with_the_kb(tmp_path):
    small = make_settings(tmp_path / "data", chunk_size=120, chunk_overlap=0)
    kb = KnowledgeBaseManager(small).create("chunks")
    kb.ingest([ZH_MD])
    chunks = kb.info()["chunks"]
    # Another process with other app-wide chunking rebuilds it: the KB's own chunking wins.
    big = make_settings(tmp_path / "data", chunk_size=1500, chunk_overlap=100)
    again = KnowledgeBaseManager(big).get("chunks")
    again.rebuild()
    assert again.info()["chunks"] == chunks and again.info()["chunk_size"] == 120


# --- crashes: kill -9 during ingest, rebuild and delete; a restart resumes the job ---------------------------
def _cli(data: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kb", *args, "--data-dir", str(data)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_9_during_ingest_rebuild_and_delete_never_loses_or_corrupts(tmp_path):
    data = tmp_path / "data"
    settings = make_settings(data, chunk_size=200, chunk_overlap=0, job_stale_seconds=2)
    mgr = KnowledgeBaseManager(settings)
    kb = mgr.create("crash")
    env = dict(os.environ, PYTHONPATH=str(REPO), KBCHAT_JOB_STALE_SECONDS="2", KBCHAT_CHUNK_SIZE="200")
    rng = random.Random(11)
    src = write_docs(tmp_path / "src0", 30, words=40)
    ops = ["ingest", "rebuild", "delete", "rebuild", "ingest"]
    for round_, op in enumerate(ops):
        if op == "ingest":
            folder = tmp_path / f"src{round_}"
            write_docs(folder, 30, words=40, tag=f"r{round_}")
            args = ["ingest", "--kb", "crash", "--replace", str(folder)]
        elif op == "rebuild":
            args = ["rebuild", "--kb", "crash", "--chunk-size", str(150 + 10 * round_)]
        else:
            args = ["rm", "--kb", "crash", "doc03.md"]
        proc = _cli(data, *args, env=env)
        time.sleep(rng.uniform(2.0, 9.0))  # model loading takes a few seconds; then it is working
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fresh = KnowledgeBaseManager(settings)  # start-up reconciles
        names = assert_consistent(fresh, fresh.get("crash"))
        if names:
            assert fresh.get("crash").search("topic-1", top_k=1, threshold=0.0)
        fresh.close()
    # An uninterrupted run resumes whatever was killed, then does its own work.
    time.sleep(2.5)
    final = subprocess.run([sys.executable, "-m", "kb", "ingest", "--kb", "crash", "--replace",
                            str(tmp_path / "src0"), "--data-dir", str(data)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    fresh = KnowledgeBaseManager(settings)
    kb = fresh.get("crash")
    names = assert_consistent(fresh, kb)
    assert {f"doc{i:02d}.md" for i in range(30)} <= set(names)
    assert all(j["status"] in ("done", "failed", "cancelled") for j in fresh.jobs.list(kb.id)), fresh.jobs.list(kb.id)
    assert kb.row().building is None
    assert src  # the first round's files are the ones the final run re-ingests


def test_restart_mid_job_resumes_it(tmp_path):
    data = tmp_path / "data"
    settings = make_settings(data, chunk_size=200, chunk_overlap=0, job_stale_seconds=2)
    KnowledgeBaseManager(settings).create("resume")
    folder = tmp_path / "src"
    write_docs(folder, 40, words=40)
    env = dict(os.environ, PYTHONPATH=str(REPO), KBCHAT_JOB_STALE_SECONDS="2")
    proc = _cli(data, "ingest", "--kb", "resume", str(folder), env=env)
    mgr = KnowledgeBaseManager(settings, reconcile=False)
    kb = mgr.get("resume")
    deadline = time.time() + 300
    while kb.info()["files"] < 5:  # killed once a few files are in
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [job] = mgr.jobs.list(kb.id)
    assert job["status"] == "running" and kb.info()["files"] < 40
    # A restarted app's worker takes the orphaned job over and finishes it, skipping the files done.
    restarted = KnowledgeBaseManager(settings, workers=1)
    try:
        deadline = time.time() + 300
        while restarted.jobs.get(job["id"])["status"] == "running":
            assert time.time() < deadline
            time.sleep(0.5)
    finally:
        restarted.close()
    final = mgr.jobs.get(job["id"])
    assert final["status"] == "done", final
    assert sorted(r["name"] for r in final["result"]) == sorted(f"doc{i:02d}.md" for i in range(40))
    assert kb.info()["files"] == 40
    assert_consistent(mgr, kb)


# --- upgrading: KBs written by the generation-file version are imported, not lost --------------------------
def test_kb_folder_of_the_old_format_is_imported_without_reembedding(tmp_path, monkeypatch):
    from kb.embeddings import create_embedder

    data = tmp_path / "data"
    texts = ["流水线并行把模型的不同层放到不同的设备上。", "张量并行把一个层的参数切分到多个设备上。"]
    old = write_legacy_kb(data / "旧库", texts, search_mode="keyword", source=ZH_MD.read_bytes())
    emb = create_embedder("minilm+use", 32, 2)
    calls = []
    monkeypatch.setattr(emb, "encode_documents", lambda t: calls.append(t) or [])
    mgr = KnowledgeBaseManager(make_settings(data))
    kb = mgr.get("旧库")
    assert calls == []  # vectors came from the old index
    assert (kb.info()["files"], kb.info()["chunks"], kb.info()["search_mode"]) == (1, 2, "keyword")
    assert kb.search("张量并行", top_k=1, threshold=0.0)[0].text == texts[1]
    assert not old.exists() and list(mgr.settings.system_dir.glob("imported-旧库-*"))  # moved aside, kept
    assert mgr.read_blob(kb.files()[0]["sha256"]) == ZH_MD.read_bytes()
    assert_consistent(mgr, kb)


def test_a_caller_waiting_for_its_job_runs_it_even_with_background_workers(tmp_path):
    mgr = KnowledgeBaseManager(make_settings(tmp_path / "data"), workers=2)
    try:
        kb = mgr.create("mine")
        seen: list[tuple[int, str]] = []
        files = write_docs(tmp_path / "src", 4)
        kb.ingest(files, progress=lambda _f, m: seen.append((threading.get_ident(), m)))
        # Every step reported, from this thread: the workers left the reserved job to its submitter.
        assert {m.split(" ", 1)[0] for _, m in seen} >= {"1/4", "2/4", "3/4", "4/4", "done"}
        assert {t for t, _ in seen} == {threading.get_ident()}
    finally:
        mgr.close()


def test_progress_reports_chunks_embedded(mgr, tmp_path):
    seen: list[tuple[float, str]] = []
    kb = mgr.create("progress")
    kb.ingest(write_docs(tmp_path / "p", 6, words=60), progress=lambda f, m: seen.append((f, m)))
    counts = [int(m.split(" chunks embedded")[0].rsplit("· ", 1)[-1]) for _, m in seen if "chunks embedded" in m]
    assert counts and counts == sorted(counts) and counts[-1] == kb.info()["chunks"]
    assert seen[-1][0] == 1.0
