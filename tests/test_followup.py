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


FOLLOW_UP = "它什么时候发布的？"
CONVERSATIONS = [  # (what the conversation is about, the assistant's last answer, the file that answers the follow-up)
    ("蓝鲸音箱", "蓝鲸音箱是海洋科技公司的智能音箱，主打高保真音质。", "蓝鲸音箱.md"),
    ("星河手表", "星河手表是星河公司推出的智能手表，支持心率监测。", "星河手表.md"),
]


@pytest.mark.parametrize(("about", "answer", "expected_file"), CONVERSATIONS)
def test_followup_pronoun_retrieves_the_thing_discussed(services, about, answer, expected_file):
    history = [(f"介绍一下{about}", answer)]
    events = list(services.chat.stream(FOLLOW_UP, history, ChatOptions(kb="products", top_k=1)))
    query = next(e.data for e in events if e.type == "query")
    sources = next(e.data for e in events if e.type == "sources")
    assert about in query, f"rewritten query {query!r} lost the subject"
    assert sources and sources[0].file == expected_file
    done = events[-1]
    assert done.type == "done" and done.data["query"] == query and done.data["answer"].strip()


def first_source(services: Services, history: list[tuple[str, str]], condense: bool) -> tuple[str, str]:
    """(retrieval query, top file) of the chat flow; one answer token is enough, only retrieval matters."""
    events = list(services.chat.stream(FOLLOW_UP, history, ChatOptions(kb="products", top_k=1, condense=condense,
                                                                      max_tokens=1)))
    query = next(e.data for e in events if e.type == "query")
    sources = next(e.data for e in events if e.type == "sources")
    assert len(sources) == 1
    return query, sources[0].file


def test_without_condensing_the_followup_is_ambiguous(services: Services) -> None:
    # The control for the test above: the same two conversations, with condensing off and on.
    raw = {expected: first_source(services, [(f"介绍一下{about}", answer)], condense=False)
           for about, answer, expected in CONVERSATIONS}
    # Off: the follow-up is searched as typed, so it cannot know which product is meant: both conversations
    # get the same file, which is the wrong one for exactly one of them.
    assert {query for query, _ in raw.values()} == {FOLLOW_UP}
    assert len({file for _, file in raw.values()}) == 1
    assert sum(file != expected for expected, (_, file) in raw.items()) == 1
    # On: the rewritten query names the product and each conversation gets its own file.
    for about, answer, expected in CONVERSATIONS:
        query, file = first_source(services, [(f"介绍一下{about}", answer)], condense=True)
        assert about in query and file == expected, (about, query, file)
