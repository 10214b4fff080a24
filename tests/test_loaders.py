"""Loader tests on real third-party files (shared/data/documents) and on files generated here."""

from __future__ import annotations

import csv
import os
import re
import struct
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from kb.loaders import SUPPORTED_EXTENSIONS, LoaderOptions, load_file, load_file_isolated, sniff
from kb.types import LoadedFile, LoadError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import DOCUMENTS as DOCS

CJK = DOCS / "txt_encodings" / "cpython_cjkencodings"
NO_OCR = LoaderOptions(ocr=False)

assert DOCS.is_dir(), f"test documents not found at {DOCS}"


def all_text(loaded: LoadedFile) -> str:
    return "\n".join(d.text for d in loaded.docs)


def reason_of(path: Path, **kwargs) -> str:
    with pytest.raises(LoadError) as info:
        load_file(path, **kwargs)
    assert info.value.reason, "LoadError without a reason"
    return info.value.reason


# --- encodings -------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


@pytest.mark.parametrize("enc", sorted(p.stem for p in CJK.glob("*.txt") if not p.stem.endswith("-utf8")))
def test_cjkencodings_match_reference(enc: str) -> None:
    loaded = load_file(CJK / f"{enc}.txt")
    expected = _norm((CJK / f"{enc}-utf8.txt").read_text(encoding="utf-8"))
    assert _norm(all_text(loaded)) == expected
    assert loaded.docs[0].meta["encoding"] in {"gb18030", "big5", "cp950", "big5hkscs"}


def test_cjkencodings_has_pairs() -> None:
    assert len(list(CJK.glob("*-utf8.txt"))) >= 3  # guards the parametrisation above against an empty glob


def test_utf16le_without_bom() -> None:
    loaded = load_file(DOCS / "txt_encodings" / "unstructured__fake-text-utf-16-le.txt")
    assert loaded.docs[0].text.startswith("This is a test document to use for unit tests.")
    assert "\x00" not in all_text(loaded)
    assert loaded.docs[0].meta["encoding"] == "utf-16-le"


def test_utf32_with_bom() -> None:
    loaded = load_file(DOCS / "txt_encodings" / "unstructured__fake-text-utf-32.txt")
    assert loaded.docs[0].text.startswith("This is a test document to use for unit tests.")
    assert loaded.docs[0].meta["encoding"].startswith("utf-32")


def test_latin1_umlauts() -> None:
    loaded = load_file(DOCS / "txt_encodings" / "unstructured__umlauts-non-utf8.md")
    text = all_text(loaded)
    assert "können" in text and "äöüß" in text
    assert loaded.docs[0].heading == "können"


def test_euc_tw_via_iconv() -> None:
    text = all_text(load_file(DOCS / "txt_encodings" / "chardet___ude_euc-tw1.txt"))
    assert text.startswith("維基大典（Wikipedia）者")


@pytest.mark.parametrize(("name", "expected"), [
    ("chardet__softsea.net.xml", "系统工具"),
    ("chardet__lily.blogsome.com.xml", "午后红茶"),
    ("chardet___chromium_gb18030_with_no_encoding_specified.html.xml", "中国制造的领军者"),
])
def test_gb_xml_feeds(name: str, expected: str) -> None:
    loaded = load_file(DOCS / "txt_encodings" / name)
    assert expected in all_text(loaded)
    assert loaded.docs[0].meta["encoding"] == "gb18030"
    assert "<item>" not in all_text(loaded)


@pytest.mark.parametrize("enc", ["utf-16-be", "utf-32-le", "gbk", "big5", "shift_jis"])
def test_generated_encodings(tmp_path: Path, enc: str) -> None:
    samples = {"shift_jis": "日本語のテキストです。これはテストです。\n", "big5": "繁體中文的測試文件，這是第二句。\n"}
    text = samples.get(enc, "简体中文测试文本，第二句话在这里。Hello!\n") * 20
    path = tmp_path / "doc.txt"
    path.write_bytes(text.encode(enc))
    assert _norm(all_text(load_file(path))) == _norm(text)


def test_text_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"line one\r\nline\x00 two\r\n\r\n\r\n\r\nline three\r\n")
    assert load_file(path).docs[0].text == "line one\nline two\n\nline three"


def test_war_and_peace_is_fast() -> None:
    start = time.monotonic()
    loaded = load_file(DOCS / "txt_encodings" / "unstructured__book-war-and-peace-1225p.txt")
    assert time.monotonic() - start < 10
    assert len(all_text(loaded)) > 3_000_000
    assert max(len(d.text) for d in loaded.docs) <= 20_000
    assert loaded.docs[0].heading == "CHAPTER I"


# --- markdown / html -----------------------------------------------------------------------------


def test_markdown_heading_paths(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("# Guide\nintro\n\n## Install\nrun pip\n\n```\n# not a heading\n```\n\n### Linux\napt\n\n"
                    "## Use\nclick\n\nSetext\n------\nbody\n", encoding="utf-8")
    loaded = load_file(path)
    by_heading = {d.heading: d.text for d in loaded.docs}
    assert loaded.title == "Guide"
    assert "# not a heading" in by_heading["Guide > Install"]
    assert "apt" in by_heading["Guide > Install > Linux"]
    assert "click" in by_heading["Guide > Use"]
    assert "body" in by_heading["Guide > Setext"]


def test_chinese_markdown_kb() -> None:
    loaded = load_file(DOCS / "md_kb_zh" / "Langchain-Chatchat__分布式训练技术原理.md")
    assert loaded.title == "分布式训练技术原理"
    assert "数据并行" in all_text(loaded)
    assert all(d.heading and d.heading.startswith("分布式训练技术原理") for d in loaded.docs)


def test_html(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text("<html><head><title>T 标题</title><style>p{color:red}</style></head><body>"
                    "<h1>Top</h1><p>alpha</p><script>var x = 'secret';</script><h2>Sub</h2><p>beta</p>"
                    "<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table></body></html>",
                    encoding="utf-8")
    loaded = load_file(path)
    assert loaded.title == "T 标题"
    text = all_text(loaded)
    assert "secret" not in text and "color" not in text
    by_heading = {d.heading: d for d in loaded.docs if d.kind == "text"}
    assert "alpha" in by_heading["Top"].text and "beta" in by_heading["Top > Sub"].text
    table = next(d for d in loaded.docs if d.kind == "table")
    assert table.text.splitlines()[0] == "| k | v |" and table.heading == "Top > Sub"


# --- PDF -----------------------------------------------------------------------------------------


def test_chinese_pdf_text_and_tables() -> None:
    loaded = load_file(DOCS / "pdf_zh_text" / "PyMuPDF__chinese-tables.pdf", options=NO_OCR)
    assert loaded.pages == 1
    text_docs = [d for d in loaded.docs if d.kind == "text"]
    assert text_docs[0].page == 1 and "第七章企业资信状况" in text_docs[0].text
    tables = [d for d in loaded.docs if d.kind == "table"]
    assert tables and all(t.page == 1 for t in tables)
    assert any(t.text.startswith("| 年份 |") and "中诚信国际信" in t.text for t in tables)


def _ruled_table_page(doc: Any) -> None:
    page = doc.new_page()
    page.insert_text((72, 60), "一张有框线的表格", fontname="china-s", fontsize=12)
    for r, row in enumerate([("名称", "数量"), ("苹果", "3"), ("香蕉", "5")]):
        for c, cell in enumerate(row):
            x, y = 72 + 150 * c, 80 + 30 * r
            page.draw_rect((x, y, x + 150, y + 30))
            page.insert_text((x + 5, y + 20), cell, fontname="china-s", fontsize=12)


def test_pdf_rules_that_cannot_form_a_table_skip_the_table_finder(tmp_path: Path, monkeypatch) -> None:
    """The table finder needs horizontal and vertical rules that cross; a page with only horizontal rules
    (underlines, a header rule) is not handed to it, nor are its characters extracted for it."""
    import pymupdf

    from kb.loaders import pdf

    calls: list[int] = []
    real = pdf._ruled_tables
    monkeypatch.setattr(pdf, "_ruled_tables", lambda page, drawings: calls.append(page.number) or real(page, drawings))
    doc = pymupdf.open()
    lined = doc.new_page()
    lined.insert_text((72, 72), "只有横线的一页：页眉线和下划线。", fontname="china-s", fontsize=12)
    for y in (80, 120, 160, 200, 240):
        lined.draw_line((72, y), (520, y))
    _ruled_table_page(doc)
    path = tmp_path / "rules.pdf"
    doc.save(path)
    loaded = load_file(path, options=NO_OCR)
    assert calls == [1]  # only the ruled page
    [table] = [d for d in loaded.docs if d.kind == "table"]
    assert table.page == 2 and "| 香蕉 | 5 |" in table.text


def test_pdf_tables_come_without_parsing_the_page_again(tmp_path: Path, monkeypatch) -> None:
    """The table finder reads the characters and rules PyMuPDF already parsed: pdfplumber's own parse of the page
    (pdfminer, pure Python) was ~90% of the table pass, ~0.5 s on a page of 1,100 characters."""
    import pdfplumber
    import pymupdf

    def no_reparse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the page was parsed again")

    monkeypatch.setattr(pdfplumber, "open", no_reparse)
    doc = pymupdf.open()
    _ruled_table_page(doc)
    doc.save(tmp_path / "t.pdf")
    [table] = [d for d in load_file(tmp_path / "t.pdf", options=NO_OCR).docs if d.kind == "table"]
    assert table.text.splitlines() == ["| 名称 | 数量 |", "| --- | --- |", "| 苹果 | 3 |", "| 香蕉 | 5 |"]


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_table_on_a_rotated_page_is_read_as_written(tmp_path: Path, rotation: int) -> None:
    """pdfplumber read a table on a page turned by /Rotate in the turned frame: columns as rows at 90 degrees,
    every cell's text reversed at 180 ("蕉香")."""
    import pymupdf

    doc = pymupdf.open()
    _ruled_table_page(doc)
    doc[0].set_rotation(rotation)
    doc.save(tmp_path / "turned.pdf")
    [table] = [d for d in load_file(tmp_path / "turned.pdf", options=NO_OCR).docs if d.kind == "table"]
    assert table.text.splitlines() == ["| 名称 | 数量 |", "| --- | --- |", "| 苹果 | 3 |", "| 香蕉 | 5 |"]


def test_ruled_tables_are_pdfplumbers_own_on_real_pdfs() -> None:
    """On every ruled page of the shared PDFs the tables are the ones pdfplumber finds parsing the page itself."""
    import pdfplumber
    import pymupdf

    from kb.loaders import pdf

    compared = 0
    for path in sorted(DOCS.rglob("*.pdf")):
        if "pdf_broken" in path.parts or "pdf_encrypted" in path.parts:
            continue
        with pymupdf.open(path) as doc, pdfplumber.open(path) as plumber:
            for page in doc:
                drawings = page.get_cdrawings()
                if pdf._may_have_ruled_table(drawings):
                    theirs = [t for t in plumber.pages[page.number].extract_tables() if len(t) >= 2 and len(t[0]) >= 2]
                    assert pdf._ruled_tables(page, drawings) == theirs, (path.name, page.number)
                    compared += len(theirs)
    assert compared >= 9


def test_generated_multipage_chinese_pdf(tmp_path: Path) -> None:
    import pymupdf

    pages = ["第一页：北京的天气很好", "第二页：上海的经济发展", "", "第四页：广州的美食文化"]
    doc = pymupdf.open()
    for text in pages:
        page = doc.new_page()
        if text:
            page.insert_text((72, 100), text, fontname="china-s", fontsize=14)
    doc.set_metadata({"title": "测试文档"})
    path = tmp_path / "zh.pdf"
    doc.save(path)
    loaded = load_file(path, options=NO_OCR)
    assert loaded.pages == 4 and loaded.title == "测试文档"
    assert [(d.page, d.text) for d in loaded.docs] == [(i + 1, t) for i, t in enumerate(pages) if t]


def test_pdf_max_pages(tmp_path: Path) -> None:
    import pymupdf

    doc = pymupdf.open()
    for i in range(5):
        doc.new_page().insert_text((72, 100), f"page number {i + 1}")
    path = tmp_path / "five.pdf"
    doc.save(path)
    loaded = load_file(path, options=LoaderOptions(max_pages=2, ocr=False))
    assert [d.page for d in loaded.docs] == [1, 2]
    assert loaded.pages == 5 and any("first 2 of 5" in w for w in loaded.warnings)


@pytest.mark.parametrize("name", ["pypdf__r6-owner-password.pdf", "unstructured__copy-protected.pdf",
                                  "private-gpt__pdf_encrypted.pdf"])
def test_encrypted_pdf_with_empty_password_loads(name: str) -> None:
    loaded = load_file(DOCS / "pdf_encrypted" / name, options=NO_OCR)
    assert all_text(loaded).strip()


@pytest.mark.parametrize("name", ["pypdf__r2-user-password.pdf", "pdfminer_six__aes-128.pdf"])
def test_encrypted_pdf_needs_password(name: str) -> None:
    assert "password" in reason_of(DOCS / "pdf_encrypted" / name)


def test_broken_pdfs() -> None:
    assert reason_of(DOCS / "pdf_broken" / "pdfplumber__empty.pdf") == "empty file"
    # PyMuPDF opens 0 pages here; the pdfplumber fallback recovers the text
    loaded = load_file(DOCS / "pdf_broken" / "sample-files__unreadablemetadata.pdf", options=NO_OCR)
    assert "Rotary Potentiometer" in all_text(loaded)
    # no xref table: MuPDF repairs it
    assert "Hello" in all_text(load_file(DOCS / "pdf_broken" / "pdfminer_six__simple1.pdf", options=NO_OCR))


def test_not_a_pdf(tmp_path: Path) -> None:
    fake = tmp_path / "x.pdf"
    fake.write_text("just some text, not a PDF")
    assert reason_of(fake) == "not a PDF"
    truncated = tmp_path / "t.pdf"
    truncated.write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog")
    assert reason_of(truncated).startswith(("damaged PDF", "empty"))


def test_overprinted_pdf_deduplicated() -> None:
    text = all_text(load_file(DOCS / "pdf_zh_text" / "pdfplumber__issue-842-example.pdf", options=NO_OCR))
    assert text.count("安徽安利合成革股份有限公司") == 1
    assert text.count("ANHUI ANLI ARTIFICIAL LEATHER CO.,LTD.") == 1


def test_multi_column_reading_order() -> None:
    loaded = load_file(DOCS / "pdf_layout" / "unstructured__multi-column-2p.pdf", options=NO_OCR)
    page2 = next(d.text for d in loaded.docs if d.page == 2)
    # the left column's sentence continues on the next line, not interleaved with the right column
    assert "QA datasets, it also suffers from two weaknesses.\nFirst, ICT pretraining" in page2


def test_scanned_pdf_ocr() -> None:
    loaded = load_file(DOCS / "pdf_scanned" / "private-gpt__file_scanned.pdf")
    assert loaded.ocr_pages == [1]
    text = all_text(loaded)
    assert "SLEREXE" in text.upper() and "facsimile" in text
    assert loaded.docs[0].page == 1


def test_scanned_pdf_without_ocr() -> None:
    reason = reason_of(DOCS / "pdf_scanned" / "private-gpt__file_scanned.pdf", options=NO_OCR)
    assert "no text layer" in reason


def test_partial_text_layer_gets_ocr() -> None:
    # '我是文字' is real text; the text-box words only exist inside an image
    loaded = load_file(DOCS / "pdf_scanned" / "Langchain-Chatchat__ocr_test.pdf")
    text = all_text(loaded)
    assert loaded.ocr_pages == [1] and "我是文字" in text and "English text" in text
    assert text.count("我是文字") == 1


def test_image_ocr(tmp_path: Path) -> None:
    import pymupdf

    doc = pymupdf.open()
    doc.new_page(width=400, height=150).insert_text((20, 80), "Invoice 4711 paid", fontsize=28)
    path = tmp_path / "scan.png"
    doc[0].get_pixmap(dpi=150).save(path)
    loaded = load_file(path)
    assert "Invoice 4711" in all_text(loaded) and loaded.ocr_pages == [1]
    assert "OCR" in reason_of(path, options=NO_OCR)


# --- Office --------------------------------------------------------------------------------------


def test_docx_chinese_text_and_table() -> None:
    loaded = load_file(DOCS / "docx" / "Langchain-Chatchat__ocr_test.docx", options=NO_OCR)
    assert "我是文字" in all_text(loaded)
    tables = [d for d in loaded.docs if d.kind == "table"]
    assert len(tables) == 1 and "我是表格1" in tables[0].text and "我是表格4" in tables[0].text


def test_docx_text_boxes_once() -> None:
    text = all_text(load_file(DOCS / "docx" / "unstructured__docx-shapes.docx"))
    # text-box text that python-docx's paragraph.text misses; the mc:Choice copy only, not the VML fallback too
    for label in ("<inline-image>", "<inline-image1>", "<inline-image2>", "<floating-shape>"):
        assert text.count(label) == 1, label


def test_docx_real_page_breaks() -> None:
    loaded = load_file(DOCS / "docx" / "unstructured__page-breaks.docx")
    pages = {d.page: d.text for d in loaded.docs}
    assert "First page" in pages[1] and "<<Text on second page" in pages[2]
    assert "<<producing two page-breaks to get from page-3 to page-5" in pages[5]


def test_generated_docx(tmp_path: Path) -> None:
    import docx
    from docx.enum.text import WD_BREAK

    d = docx.Document()
    d.add_heading("Handbook", level=0)
    d.add_heading("Chapter A", level=1)
    d.add_paragraph("alpha text")
    d.add_heading("Part A.1", level=2)
    p = d.add_paragraph("before break")
    p.add_run().add_break(WD_BREAK.PAGE)
    p.add_run("after break")
    table = d.add_table(rows=3, cols=2)
    for r, row in enumerate([("名称", "数量"), ("苹果", "3"), ("香蕉", "5")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    d.add_heading("Chapter B", level=1)
    d.add_paragraph("beta text")
    path = tmp_path / "gen.docx"
    d.save(path)
    loaded = load_file(path)
    docs = [(x.page, x.heading, x.kind, x.text) for x in loaded.docs]
    assert (1, "Handbook > Chapter A", "text", "Chapter A\nalpha text") in docs
    assert (1, "Handbook > Chapter A > Part A.1", "text", "Part A.1\nbefore break") in docs
    assert (2, "Handbook > Chapter A > Part A.1", "text", "after break") in docs
    table_doc = next(x for x in loaded.docs if x.kind == "table")
    assert table_doc.page == 2 and table_doc.heading == "Handbook > Chapter A > Part A.1"
    assert table_doc.text.splitlines()[0] == "| 名称 | 数量 |" and "| 香蕉 | 5 |" in table_doc.text
    assert loaded.docs[-1].heading == "Handbook > Chapter B" and loaded.docs[-1].page == 2
    assert loaded.title == "Handbook"


def test_legacy_and_disguised_office_files(tmp_path: Path) -> None:
    fake_doc = DOCS / "docx" / "unstructured__fake.doc"
    reason = reason_of(fake_doc)
    assert "legacy" in reason and ".docx" in reason
    # the same bytes uploaded as .docx (temp path, user's name says .docx)
    reason = reason_of(fake_doc, name="report.docx")
    assert reason.startswith("not a DOCX file") and "legacy Word .doc" in reason
    odt = tmp_path / "upload.tmp"
    with zipfile.ZipFile(odt, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        z.writestr("content.xml", "<office:document-content/>")
    assert "OpenDocument" in reason_of(odt, name="notes.docx")
    text_as_docx = tmp_path / "t.docx"
    text_as_docx.write_text("hello")
    assert reason_of(text_as_docx).startswith("not a DOCX file")


def _rows(n: int) -> list[list[str]]:
    return [["id", "城市", "value"]] + [[str(i), f"城市{i}", f"{i * 1.5}"] for i in range(1, n + 1)]


def _check_groups(loaded: LoadedFile, n_rows: int) -> None:
    tables = [d for d in loaded.docs if d.kind == "table"]
    assert len(tables) == (n_rows + 19) // 20
    for t in tables:
        lines = t.text.splitlines()
        assert lines[0] == "| id | 城市 | value |" and lines[1] == "| --- | --- | --- |"
        assert 1 <= len(lines) - 2 <= 20
    body = [line for t in tables for line in t.text.splitlines()[2:]]
    assert len(body) == n_rows and body[-1].startswith(f"| {n_rows} |")


def test_csv_header_in_every_group(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    with open(path, "w", newline="", encoding="gbk") as fh:
        csv.writer(fh).writerows(_rows(60))
    loaded = load_file(path)
    _check_groups(loaded, 60)
    assert loaded.docs[0].meta["encoding"] == "gb18030"


def test_tsv(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    path.write_text("\n".join("\t".join(r) for r in _rows(25)), encoding="utf-8")
    _check_groups(load_file(path), 25)


def test_xlsx_header_in_every_group(tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "销售"
    for row in _rows(60):
        ws.append([int(c) if c.isdigit() else c for c in row])
    wb.create_sheet("empty")
    path = tmp_path / "book.xlsx"
    wb.save(path)
    loaded = load_file(path)
    _check_groups(loaded, 60)
    assert {d.heading for d in loaded.docs} == {"销售"}


def test_pptx(tmp_path: Path) -> None:
    import pptx
    from pptx.util import Inches

    prs = pptx.Presentation()
    s1 = prs.slides.add_slide(prs.slide_layouts[1])
    s1.shapes.title.text = "Quarterly review"
    s1.placeholders[1].text = "Revenue grew"
    s1.notes_slide.notes_text_frame.text = "speaker note here"
    s2 = prs.slides.add_slide(prs.slide_layouts[5])
    s2.shapes.title.text = "Numbers"
    table = s2.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    for (r, c), v in zip([(0, 0), (0, 1), (1, 0), (1, 1)], ["k", "v", "a", "1"], strict=True):
        table.cell(r, c).text = v
    path = tmp_path / "deck.pptx"
    prs.save(path)
    loaded = load_file(path)
    assert loaded.pages == 2
    first = next(d for d in loaded.docs if d.page == 1)
    assert first.heading == "Quarterly review" and "Revenue grew" in first.text and "speaker note" in first.text
    table_doc = next(d for d in loaded.docs if d.kind == "table")
    assert table_doc.page == 2 and table_doc.heading == "Numbers" and table_doc.text.startswith("| k | v |")


def test_epub(tmp_path: Path) -> None:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("id1")
    book.set_title("小书")
    book.set_language("zh")
    chapters = []
    for i, body in enumerate(["<h1>第一章</h1><p>春天来了。</p>", "<h1>第二章</h1><p>夏天到了。</p>"], start=1):
        ch = epub.EpubHtml(title=f"c{i}", file_name=f"c{i}.xhtml", lang="zh")
        ch.content = f"<html><body>{body}</body></html>"
        book.add_item(ch)
        chapters.append(ch)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = chapters
    path = tmp_path / "book.epub"
    epub.write_epub(str(path), book)
    loaded = load_file(path)
    assert loaded.title == "小书"
    by_heading = {d.heading: d.text for d in loaded.docs}
    assert "春天来了。" in by_heading["第一章"] and "夏天到了。" in by_heading["第二章"]


# --- rejections and defences -----------------------------------------------------------------------


def test_empty_and_whitespace_files(tmp_path: Path) -> None:
    assert "empty" in reason_of(DOCS / "txt_encodings" / "unstructured__fake-text-all-whitespace.txt")
    for name, data in [("a.txt", b""), ("b.md", b" \n\t\r\n"), ("c.txt", "\u3000\n".encode()),
                       ("d.csv", b",,\n,,\n"), ("e.html", b"<html><body><script>x()</script></body></html>")]:
        (tmp_path / name).write_bytes(data)
        assert "empty" in reason_of(tmp_path / name), name


def test_unsupported_and_limits(tmp_path: Path) -> None:
    exe = tmp_path / "tool.exe"
    exe.write_bytes(b"MZ...")
    assert reason_of(exe) == "unsupported file type .exe"
    assert reason_of(tmp_path / "missing.txt").startswith("cannot read file")
    big = DOCS / "txt_encodings" / "unstructured__book-war-and-peace-1225p.txt"
    assert reason_of(big, options=LoaderOptions(max_file_mb=1)) == "too large: 3.1 MB > limit 1 MB"
    loaded = load_file(big, options=LoaderOptions(max_chars=50_000))
    assert sum(len(d.text) for d in loaded.docs) == 50_000 and loaded.warnings
    assert {".pdf", ".docx", ".txt", ".md", ".csv", ".xlsx", ".png"} <= SUPPORTED_EXTENSIONS
    # the user's file name decides the type, not the temp path
    tmp = tmp_path / "upload-123"
    tmp.write_text("# Hello\nworld")
    assert load_file(tmp, name="readme.md").docs[0].heading == "Hello"


@pytest.mark.parametrize("ext", [".pdf", ".docx", ".xlsx", ".pptx", ".epub", ".png", ".jpg", ".csv", ".html", ".txt"])
def test_garbage_only_raises_loaderror(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"junk{ext}"
    path.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(LoadError):
        load_file(path)
    truncated = tmp_path / f"cut{ext}"  # valid magic, truncated body
    magic = {".pdf": b"%PDF-1.4\n", ".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff\xe0"}.get(ext, b"PK\x03\x04")
    truncated.write_bytes(magic + b"\x00\x01" * 100)
    with pytest.raises(LoadError):
        load_file(truncated)


def _zip_bomb(path: Path, size_mb: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        chunk = b"\0" * (1 << 20)
        with z.open("word/document.xml", "w", force_zip64=True) as fh:
            for _ in range(size_mb):
                fh.write(chunk)


def test_zip_bomb_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.docx"
    _zip_bomb(bomb, 1024)
    start = time.monotonic()
    reason = reason_of(bomb)
    assert reason.startswith("refused: zip bomb (uncompressed size 1,024 MB")
    assert time.monotonic() - start < 2
    ratio_bomb = tmp_path / "ratio.xlsx"  # under the size cap but compressed > 100:1
    _zip_bomb(ratio_bomb, 60)
    assert reason_of(ratio_bomb).startswith("refused: zip bomb")


LIE = 4096  # bytes the lying bomb declares for its big entry


def _lying_zip_bomb(path: Path, size_mb: int) -> None:
    """A bomb whose headers lie: the local header and the central directory both declare LIE bytes (with
    the CRC-32 of LIE zero bytes) for word/document.xml, whose deflate stream inflates to ``size_mb`` MB."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:  # < 2 GiB: plain 32-bit size fields
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("word/document.xml", "w") as fh:
            for _ in range(size_mb):
                fh.write(b"\0" * (1 << 20))
    with zipfile.ZipFile(path) as z:
        local, pos = z.getinfo("word/document.xml").header_offset, z.start_dir
    data = bytearray(path.read_bytes())
    while True:  # walk the central directory to the entry's record
        assert data[pos:pos + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46:pos + 46 + name_len] == b"word/document.xml":
            break
        pos += 46 + name_len + extra_len + comment_len
    crc = zlib.crc32(b"\0" * LIE)
    struct.pack_into("<I", data, local + 14, crc)  # local header: CRC-32 at 14, uncompressed size at 22
    struct.pack_into("<I", data, local + 22, LIE)
    struct.pack_into("<I", data, pos + 16, crc)  # central directory: CRC-32 at 16, uncompressed size at 24
    struct.pack_into("<I", data, pos + 24, LIE)
    path.write_bytes(data)


def test_lying_zip_bomb_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "liar.zip"
    _lying_zip_bomb(bomb, 200)
    with zipfile.ZipFile(bomb) as z:  # the lie is consistent: a reader trusting the headers sees a small file
        assert sum(i.file_size for i in z.infolist()) < 5000
        assert z.read("word/document.xml") == b"\0" * LIE
    for ext in (".docx", ".xlsx", ".pptx", ".epub"):  # every zip-based format goes through the same check
        reason = reason_of(bomb, name=f"liar{ext}")
        match = re.fullmatch(r"refused: zip bomb \(inflates to over ([\d,]+) MB, declares 0 MB\)", reason)
        assert match, reason
        # It stopped inflating at the limit instead of inflating all 200 MB.
        assert sniff.ZIP_RATIO_MIN_SIZE / 2**20 <= int(match[1].replace(",", "")) < 200
    with pytest.raises(LoadError, match=r"^refused: zip bomb \(inflates to over"):
        load_file_isolated(bomb, name="liar.docx")  # the path the server uses for Office files


# --- isolation -------------------------------------------------------------------------------------


def test_isolated_matches_in_process() -> None:
    path = DOCS / "pdf_zh_text" / "PyMuPDF__chinese-tables.pdf"
    assert load_file_isolated(path, options=NO_OCR) == load_file(path, options=NO_OCR)


def test_isolated_errors_pass_through() -> None:
    with pytest.raises(LoadError, match="password"):
        load_file_isolated(DOCS / "pdf_encrypted" / "pdfminer_six__aes-128.pdf")


def _isolated_children() -> list[str]:
    """Command lines of this process's children that run the isolated loader."""
    me = str(os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = stat.read_text().rpartition(")")[2].split()[1]
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # the process ended while we looked
            continue
        if ppid == me and "kb.loaders.isolate" in cmdline:
            found.append(cmdline)
    return found


def test_isolated_parser_stuck_on_input_times_out(tmp_path: Path) -> None:
    # 4 MB of nested HTML markup keeps the HTML parser busy for tens of seconds (about 25 s on the reference
    # machine), far past the limit.
    stuck = tmp_path / "stuck.html"
    stuck.write_text("<html><body>" + "<div><p>para <b>bold</b> <i>x</i></p></div>\n" * 100_000
                     + "<p>body text</p></body></html>", encoding="utf-8")
    # The control: a file of the same size that is cheap to parse. It loads well within the limit, so the
    # limit leaves room for the child's start-up and a refusal of the stuck file is the parser's doing.
    benign = tmp_path / "benign.txt"
    benign.write_text("para bold x. " * 340_000 + "\n\nbody text\n", encoding="utf-8")
    assert abs(benign.stat().st_size - stuck.stat().st_size) < stuck.stat().st_size // 10
    options = LoaderOptions(timeout_s=3)
    assert "body text" in all_text(load_file_isolated(benign, options=options))

    start = time.monotonic()
    with pytest.raises(LoadError) as info:
        load_file_isolated(stuck, options=options)
    waited = time.monotonic() - start
    assert info.value.reason == "timed out after 3 s"
    assert 3 <= waited < 15  # it waited for the limit, then did not wait for the parser to finish
    assert _isolated_children() == []  # the stuck child was killed, not left spinning
    # The calling process carries on: the next file loads normally.
    assert "body text" in all_text(load_file_isolated(benign, options=options))


def test_isolated_memory_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("lorem ipsum dolor sit amet\n" * 2_000_000)  # 54 MB: decoding needs a few copies
    with pytest.raises(LoadError) as info:
        load_file_isolated(path, options=LoaderOptions(max_memory_mb=120))
    assert info.value.reason == "too large to load in memory"


@pytest.mark.parametrize("name, line", [
    ("heading.md", "# a" + " " * 100_000 + "b"),  # the old heading regex: minutes
    ("blanks.txt", "a" + " \t" * 100_000 + "b"),  # the old trailing-blank regex: about 30 s
])
def test_long_blank_runs_load_in_linear_time(tmp_path: Path, name: str, line: str) -> None:
    """Runs of blanks once made two loader regexes backtrack quadratically; a file of such lines must cost
    about what a same-size file without them costs (measured in the same run)."""
    crafted = tmp_path / name
    crafted.write_text(line + "\n\nbody text\n", encoding="utf-8")
    control = tmp_path / ("control" + Path(name).suffix)
    control.write_text(line[:3] + "x" * (len(line) - 3) + "\n\nbody text\n", encoding="utf-8")

    def seconds(path: Path) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            assert "body text" in all_text(load_file(path))
            best = min(best, time.perf_counter() - t)
        return best

    ratio = seconds(crafted) / seconds(control)
    assert ratio < 20, f"{name}: {ratio:.0f}x the time of a same-size file"
