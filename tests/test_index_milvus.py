"""MilvusIndex against a real Milvus server (milvus-lite's gRPC server on loopback), plus a PostgreSQL smoke test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kb.index.milvus import MilvusIndex
from kb.keyword import BM25Index
from tests.servers import start_milvus, start_postgres, stop

DIM = 8
CMRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "retrieval" / "cmrc2018-trial"


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uri, proc = start_milvus(tmp_path_factory.mktemp("milvus"))
    try:
        yield uri
    finally:
        stop(proc)
        assert proc.poll() is not None
        stop(proc)  # stopping twice is harmless


@pytest.fixture(scope="module")
def index(milvus_uri: str) -> Iterator[MilvusIndex]:
    idx = MilvusIndex(milvus_uri)
    yield idx
    idx.close()


def _vecs(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    m = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


TEXTS = [
    "苹果手机的电池续航很好",
    "香蕉和苹果都是水果",
    "The quick brown fox jumps over the lazy dog",
    "Milvus is a vector database for similarity search",
    "北京是中国的首都，也是一座历史名城",
]


def test_add_is_an_idempotent_upsert(index: MilvusIndex) -> None:
    ids = [101, 102, 103, 104, 105]
    v = _vecs(5, 1)
    index.add("up_a", DIM, ids, v, TEXTS)
    index.add("up_a", DIM, ids, v, TEXTS)  # replaying an add changes nothing
    assert index.count("up_a") == 5
    assert sorted(index.ids("up_a").tolist()) == ids
    np.testing.assert_allclose(index.vectors("up_a", ids), v, atol=1e-6)

    # Upsert new content for one id: the new vector and text replace the old ones everywhere.
    nv = _vecs(1, 2)
    index.add("up_a", DIM, [103], nv, ["数据库 向量 检索"])
    assert index.count("up_a") == 5
    np.testing.assert_allclose(index.vectors("up_a", [103]), nv, atol=1e-6)
    assert 103 in {c for c, _, _ in index.search("up_a", None, "向量检索", 5, "keyword")}
    assert 103 not in {c for c, _, _ in index.search("up_a", None, "quick brown fox", 5, "keyword")}


def test_delete_count_ids_vectors(index: MilvusIndex) -> None:
    ids = [201, 202, 203, 204, 205]
    v = _vecs(5, 3)
    index.add("del_a", DIM, ids, v, TEXTS)
    index.delete("del_a", [202, 204, 999_999])  # unknown ids are ignored
    index.delete("del_a", [])
    assert index.count("del_a") == 3
    assert index.ids("del_a").tolist() == [201, 203, 205]
    assert index.ids("del_a").dtype == np.int64
    # vectors come back in the order asked for, not storage order
    np.testing.assert_allclose(index.vectors("del_a", [205, 201]), v[[4, 0]], atol=1e-6)
    assert index.vectors("del_a", []).shape == (0, DIM)
    with pytest.raises(KeyError):
        index.vectors("del_a", [202])
    assert 202 not in {c for c, _, _ in index.search("del_a", v[1], "香蕉", 5, "hybrid")}
    # deleting through another index's name must not touch these rows
    index.delete("del_b", [201])
    assert index.count("del_a") == 3
    # unknown index: empty, not an error
    assert index.count("nope") == 0
    assert index.ids("nope").size == 0
    assert index.search("nope", v[0], "香蕉", 5, "hybrid") == []


def test_two_indexes_share_a_collection_without_seeing_each_other(index: MilvusIndex) -> None:
    va, vb = _vecs(3, 4), _vecs(3, 5)
    index.add("iso_a", DIM, [301, 302, 303], va, TEXTS[:3])
    index.add("iso_b", DIM, [311, 312, 313], vb, TEXTS[:3])  # same texts: equal keyword statistics
    assert index.count("iso_a") == index.count("iso_b") == 3
    for mode in ("dense", "keyword", "hybrid"):
        got_a = {c for c, _, _ in index.search("iso_a", vb[0], "苹果", 10, mode)}
        got_b = {c for c, _, _ in index.search("iso_b", vb[0], "苹果", 10, mode)}
        assert got_a and got_a <= {301, 302, 303}, mode
        assert got_b and got_b <= {311, 312, 313}, mode
    # Statistics are per index: the same texts score the same in both, whatever else the collection holds.
    ka = sorted(s for _, _, s in index.search("iso_a", None, "苹果 水果", 10, "keyword"))
    kb = sorted(s for _, _, s in index.search("iso_b", None, "苹果 水果", 10, "keyword"))
    assert ka == pytest.approx(kb)
    index.drop("iso_a")
    assert index.count("iso_a") == 0
    assert index.count("iso_b") == 3
    index.drop("iso_a")  # idempotent


def test_same_chunk_id_in_two_indexes_of_two_deployments_coexists(index: MilvusIndex) -> None:
    # Two databases (two deployments, or eval's scratch one) sharing one Milvus both have a chunk 1.
    va, vb = _vecs(1, 21), _vecs(1, 22)
    index.add("dep_a", DIM, [1], va, [TEXTS[0]])
    index.add("dep_b", DIM, [1], vb, [TEXTS[3]])
    assert index.count("dep_a") == index.count("dep_b") == 1
    np.testing.assert_allclose(index.vectors("dep_a", [1]), va, atol=1e-6)
    np.testing.assert_allclose(index.vectors("dep_b", [1]), vb, atol=1e-6)
    index.delete("dep_a", [1])
    assert (index.count("dep_a"), index.count("dep_b")) == (0, 1)


def test_scores_in_range_and_hybrid_fills_both_halves(index: MilvusIndex) -> None:
    v = _vecs(5, 6)
    ids = [401, 402, 403, 404, 405]
    index.add("hyb", DIM, ids, v, TEXTS)
    q = v[2]  # dense favours 403 (the fox); the text favours the two apple chunks
    text = "苹果 水果"
    dense = index.search("hyb", q, text, 2, "dense")
    keyword = index.search("hyb", q, text, 2, "keyword")
    hybrid = index.search("hyb", q, text, 2, "hybrid")
    assert all(k is None and 0.0 <= d <= 1.0 for _, d, k in dense)
    assert all(d is None and 0.0 < k <= 1.0 for _, d, k in keyword)
    assert dense[0][0] == 403 and dense[0][1] == pytest.approx(1.0, abs=1e-5)
    assert {c for c, _, _ in keyword} == {401, 402}
    # Hybrid: the union, each with both halves computed (not defaulted).
    assert {c for c, _, _ in hybrid} == {c for c, _, _ in dense} | {c for c, _, _ in keyword}
    local = BM25Index()
    local.add(ids, TEXTS)
    want_kw = local.scores_for(text, ids)
    for c, d, k in hybrid:
        assert d is not None and k is not None and 0.0 <= d <= 1.0 and 0.0 <= k <= 1.0
        assert d == pytest.approx(max(0.0, float(v[ids.index(c)] @ q)), abs=1e-5)
        assert k == pytest.approx(want_kw.get(c, 0.0), abs=1e-9)
    with pytest.raises(ValueError):
        index.search("hyb", None, text, 2, "hybrid")
    with pytest.raises(ValueError):
        index.search("hyb", q, text, 2, "fuzzy")


def _cmrc(n_docs: int, n_queries: int) -> tuple[list[str], list[str]]:
    docs = [json.loads(line) for line in (CMRC / "corpus.jsonl").read_text("utf-8").splitlines()[:n_docs]]
    texts = [(d["title"] + "\n" + d["text"]).strip() for d in docs]
    queries = [json.loads(line)["text"] for line in (CMRC / "queries.jsonl").read_text("utf-8").splitlines()]
    return texts, queries[:n_queries]


def test_keyword_scores_agree_with_local_bm25(index: MilvusIndex) -> None:
    """On real Chinese passages the keyword half must be the local BM25's: the same score for every chunk we
    return, and (nearly always) the same top chunks. Scores are computed with the local formula from the
    index's own statistics, so they agree to float rounding (1e-9). The lists can differ only where the
    server's jieba search (which chooses candidates) misses a chunk the local tokeniser matches (boundaries
    of Latin/digit runs, stemming, Traditional/Simplified folding): we allow that at rank 10, never at rank 1."""
    texts, queries = _cmrc(60, 80)
    ids = list(range(1000, 1000 + len(texts)))
    index.add("cmrc", DIM, ids, _vecs(len(texts), 7), texts)
    index.add("cmrc_other", DIM, [5000 + i for i in range(20)], _vecs(20, 8), texts[::3][:20])  # noise
    local = BM25Index()
    local.add(ids, texts)
    top1_same = overlap = total = 0
    for qtext in queries:
        want = local.search(qtext, 10)
        got = sorted(((c, k) for c, _, k in index.search("cmrc", None, qtext, 10, "keyword")),
                     key=lambda ck: (-ck[1], ck[0]))
        exact = local.scores_for(qtext, [c for c, _ in got])
        for c, k in got:
            assert k == pytest.approx(exact[c], abs=1e-9)
        if not want:
            assert not got
            continue
        total += 1
        top1_same += got[0][1] == pytest.approx(want[0][1], abs=1e-9)
        overlap += len({c for c, _ in got} & {c for c, _ in want}) / len(want)
    assert total > 60
    assert top1_same == total
    assert overlap / total >= 0.97


def test_second_client_sees_writes_immediately(milvus_uri: str, index: MilvusIndex) -> None:
    other = MilvusIndex(milvus_uri)  # as another process would: its own connection, no shared cache
    try:
        v = _vecs(2, 9)
        index.add("vis", DIM, [601, 602], v, TEXTS[:2])
        assert other.count("vis") == 2
        assert {c for c, _, _ in other.search("vis", v[0], "香蕉", 5, "hybrid")} == {601, 602}
        other.add("vis", DIM, [603], _vecs(1, 10), ["香蕉 香蕉 香蕉"])
        assert 603 in {c for c, _, _ in index.search("vis", None, "香蕉", 5, "keyword")}
        other.delete("vis", [601])
        assert index.ids("vis").tolist() == [602, 603]
        # The cached average length is refreshed when the count changes under us.
        local = BM25Index()
        local.add([602, 603], [TEXTS[1], "香蕉 香蕉 香蕉"])
        got = dict((c, k) for c, _, k in index.search("vis", None, "香蕉", 5, "keyword"))
        assert got == pytest.approx(dict(local.search("香蕉", 5)), abs=1e-9)
    finally:
        other.close()


def test_ids_pages_past_the_query_window(index: MilvusIndex) -> None:
    """Milvus caps offset + limit at 16384: ids() must page with an iterator to list bigger indexes."""
    n = 20_000
    ids = np.arange(1_000_000, 1_000_000 + n)
    index.add("big", 4, ids.tolist(), _vecs(n, 11, dim=4), [f"w{i % 97}" for i in range(n)])
    assert index.count("big") == n
    np.testing.assert_array_equal(index.ids("big"), ids)
    index.drop("big")
    assert index.count("big") == 0


def test_postgres_with_pgvector(tmp_path: Path) -> None:
    import sqlalchemy as sa

    url, handle = start_postgres(tmp_path / "pg")
    try:
        assert url.startswith("postgresql+psycopg://")
        assert (tmp_path / "pg").is_dir()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
            conn.execute(sa.text("CREATE TABLE t (id int PRIMARY KEY, v vector(3))"))
            conn.execute(sa.text("INSERT INTO t VALUES (1, '[1,0,0]'), (2, '[0,1,0]')"))
            nearest = conn.execute(sa.text("SELECT id FROM t ORDER BY v <=> '[0.9,0.1,0]' LIMIT 1")).scalar()
            assert nearest == 1
        engine.dispose()
    finally:
        handle.cleanup()  # type: ignore[attr-defined]


def test_index_keeps_its_quiet_ping_policy_after_a_default_client_on_the_same_address(milvus_uri: str) -> None:
    """CI bug: pymilvus shares one channel per address and the first client's options win. A default client
    (pings every 10 s even when idle), made and closed earlier in the same process (tests/servers.py did),
    stayed registered; MilvusIndex was handed its channel, milvus-lite answered the idle pings with GOAWAY
    "too many pings", and the next MilvusIndex failed to open with "Too many pings"."""
    from pymilvus import MilvusClient

    other = MilvusClient(uri=milvus_uri, timeout=2)  # any other code in the process, with pymilvus defaults
    other.list_collections()
    idx = MilvusIndex(milvus_uri)
    try:
        handler = idx._client._handler
        assert handler is not other._handler
        assert handler._grpc_options["grpc.keepalive_permit_without_calls"] is False  # no pings while idle
        idx.add("quiet", DIM, [1, 2], _vecs(2, 7), TEXTS[:2])
        assert {h[0] for h in idx.search("quiet", _vecs(1, 7)[0], "苹果", 2, "hybrid")} == {1, 2}
    finally:
        idx.close()
        other.close()
