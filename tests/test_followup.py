"""Follow-up questions: the conversation is condensed into a standalone query before retrieval.

Real parts: the default Qwen2.5-1.5B GGUF rewrites the question, the packaged embedder and FAISS
retrieve. Two products with release dates live in one KB; a pronoun-only follow-up must find the
one the conversation was about, where the raw follow-up alone cannot tell them apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_settings
from llm.chat import ChatOptions
from services import Services

DOCS = {
    "星河手表.md": "# 星河手表\n\n星河手表是星河公司推出的智能手表，支持心率监测和离线地图。"
                  "星河手表于2019年5月在杭州首次发布。它的续航时间为十四天。\n",
    "蓝鲸音箱.md": "# 蓝鲸音箱\n\n蓝鲸音箱是海洋科技公司的智能音箱，主打高保真音质。"
                  "蓝鲸音箱于2022年11月在深圳正式发布。它支持多房间播放。\n",
}


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Services:
    root: Path = tmp_path_factory.mktemp("followup")
    settings = make_settings(root / "data", llm_model="qwen2.5-coder-1.5b", condense_question=True,
                             max_tokens=48, score_threshold=0.0)
    settings.prepare_dirs()
    svc = Services(settings)
    kb = svc.kbs.create("products")
    paths = []
    for name, text in DOCS.items():
        p = root / name
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    assert [r.status for r in kb.ingest(paths)] == ["indexed", "indexed"]
    return svc


@pytest.mark.parametrize(("about", "answer", "expected_file"), [
    ("蓝鲸音箱", "蓝鲸音箱是海洋科技公司的智能音箱，主打高保真音质。", "蓝鲸音箱.md"),
    ("星河手表", "星河手表是星河公司推出的智能手表，支持心率监测。", "星河手表.md"),
])
def test_followup_pronoun_retrieves_the_thing_discussed(services, about, answer, expected_file):
    history = [(f"介绍一下{about}", answer)]
    events = list(services.chat.stream("它什么时候发布的？", history, ChatOptions(kb="products", top_k=1)))
    query = next(e.data for e in events if e.type == "query")
    sources = next(e.data for e in events if e.type == "sources")
    assert about in query, f"rewritten query {query!r} lost the subject"
    assert sources and sources[0].file == expected_file
    done = events[-1]
    assert done.type == "done" and done.data["query"] == query and done.data["answer"].strip()


def test_without_condensing_the_followup_is_ambiguous(services):
    # The control: the same follow-up searched as is cannot know which product is meant, so at
    # least one of the two conversations would retrieve the wrong file. This is why we condense.
    kb = services.kbs.get("products")
    raw = kb.search("它什么时候发布的？", top_k=1, threshold=0.0)
    assert raw and raw[0].file in DOCS  # it finds *a* product, necessarily the same one for both
