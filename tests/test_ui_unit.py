"""Fast checks of the UI helpers (no browser, no model)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio.utils import get_type_hints

from configs.settings import Settings
from kb.types import FileResult, Hit
from ui.common import as_text
from ui.i18n import I18N, PREFIX, TEXT, lang_of, msg, t


def test_every_text_has_both_languages() -> None:
    for key, (en, zh) in TEXT.items():
        assert en.strip() and zh.strip(), key
    assert set(I18N.translations["en"]) == set(I18N.translations["zh"]) == {PREFIX + k for k in TEXT}
    with pytest.raises(KeyError):
        t("no_such_label")


@pytest.mark.parametrize(("header", "lang"), [
    ("zh-CN,zh;q=0.9,en;q=0.8", "zh"), ("en-US,en;q=0.9", "en"), ("fr-FR,zh-TW;q=0.5", "zh"), ("", "en"),
])
def test_lang_of_accept_language(header: str, lang: str) -> None:
    assert lang_of(SimpleNamespace(headers={"accept-language": header})) == lang  # type: ignore[arg-type]
    assert lang_of(None) == "en"


def test_as_text_escapes_html_but_not_code() -> None:
    assert as_text("<img src=x onerror=alert(1)> & co") == "&lt;img src=x onerror=alert(1)> &amp; co"
    assert as_text("use `a<b` and\n```\nx = '<div>'\n```") == "use `a<b` and\n```\nx = '<div>'\n```"
    assert as_text("open ```\n<b>") == "open ```\n<b>"  # an unclosed fence while streaming stays code


def test_settings_rendered_from_declaration(settings: Settings) -> None:
    from ui.settings_form import coerce, render_group

    settings.top_k = 7  # the live value, not the declared default, is the widget's start value
    with gr.Blocks():
        retrieval = render_group(settings, "retrieval")
        llm = render_group(settings, "llm")
        kb = render_group(settings, "kb")
    assert list(retrieval) == list(Settings.ui_fields("retrieval"))
    assert set(llm) == {"temperature", "top_p", "max_tokens", "history_turns"}
    assert set(kb) == {"chunk_size", "chunk_overlap"}
    top_k = retrieval["top_k"]
    assert isinstance(top_k, gr.Slider) and (top_k.minimum, top_k.maximum, top_k.step, top_k.value) == (1, 50, 1, 7)
    assert isinstance(retrieval["score_threshold"], gr.Slider) and retrieval["score_threshold"].maximum == 1.0
    assert isinstance(retrieval["search_mode"], gr.Dropdown)
    assert [c[1] for c in retrieval["search_mode"].choices] == ["dense", "keyword", "hybrid"]
    assert isinstance(retrieval["condense_question"], gr.Checkbox)
    assert coerce(settings, "top_k", 5.0) == 5 and isinstance(coerce(settings, "top_k", 5.0), int)
    assert coerce(settings, "temperature", None) == settings.temperature


def test_handlers_receive_the_request(settings: Settings) -> None:
    """Gradio injects gr.Request only when the annotation resolves; a silent failure would drop the language."""
    from services import Services
    from ui.web import build_ui, mount_options

    demo = build_ui(Services(settings))
    assert demo.i18n_instance is I18N
    checked = 0
    for block_fn in demo.fns.values():
        params = inspect.signature(block_fn.fn).parameters if block_fn.fn else {}
        if "request" in params:
            assert get_type_hints(block_fn.fn).get("request") is gr.Request, block_fn.name
            checked += 1
    assert checked >= 10
    opts = mount_options(Services(settings))
    assert opts["i18n"] is I18N and "auth" not in opts


def test_tables_and_sources_are_localised() -> None:
    from ui.chat_tab import sources_html
    from ui.kb_tab import files_table, hits_table, results_table

    res = [FileResult("a.pdf", "indexed", chunks=3, ocr_pages=[2]), FileResult("b.pdf", "failed", error="not a PDF")]
    df = results_table(res, "zh")
    assert list(df.columns) == ["文件", "结果", "OCR 页"]
    assert df.iloc[0].tolist()[:2] == ["a.pdf", "indexed with 3 chunks, OCR on page(s) 2 (0.0s)"]
    assert df.iloc[1, 1] == "failed: not a PDF"
    assert list(files_table([], "en").columns) == ["name", "status", "chunks", "pages", "error"]
    hit = Hit(text="<b>hi</b>", score=0.8123, file="x<y>.md", file_id="f", page=2, heading=None, chunk_id=1)
    assert hits_table([hit], "en").iloc[0].tolist()[:3] == ["0.812", "x<y>.md", 2]

    hit.kb = "docs"
    block = sources_html([hit.source()], "standalone <q>", "q?", "en")
    assert "<b>Retrieval query:</b> standalone &lt;q&gt;" in block and ">[1]</a> x&lt;y&gt;.md p.2" in block
    assert "<b>hi</b>" not in block and "&lt;b&gt;hi&lt;/b&gt;" in block  # document text stays text
    assert '<details class="source">' in block and 'href="/ui/preview/docs/f?chunk=1"' in block
    assert "Retrieval query" not in sources_html([hit.source()], "same", "same", "en")
    assert msg("kb_created", "zh", name="k") == "已新建知识库“k”。"


def test_answer_markers_link_to_their_sources_and_the_model_cannot_make_links() -> None:
    from ui.chat_tab import answer_markdown

    src = {"kb": "k b", "file_id": "abc", "chunk_id": 7, "file": "f.md", "page": None, "score": 0.5, "text": "t"}
    out = answer_markdown("Quartz [1]. Bad [2]. See [x](http://evil.example/?q=1) <img src=x>", [src])
    assert "[\\[1\\]](/ui/preview/k%20b/abc?chunk=7)" in out  # a link to our own preview page
    assert "[2]" not in out.replace("\\[", "[")  # no source 2: the marker is dropped
    assert "\\[x](http\\://evil" in out and "<img" not in out  # the model's own link and tag stay text
