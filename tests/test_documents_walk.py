"""Load every real-world test document in an isolated child: each one indexes or is refused cleanly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kb.loaders import LoaderOptions, load_file, load_file_isolated
from kb.types import LoadedFile, LoadError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import DOCUMENTS as DOCS

FILES = sorted(p for p in DOCS.rglob("*") if p.is_file() and p.name != "MANIFEST.tsv")
assert FILES, f"test documents not found at {DOCS}"

pytestmark = [
    pytest.mark.timeout(900),  # the whole walk (incl. OCR of the scanned PDFs) runs in the first test
]

Result = LoadedFile | LoadError | BaseException


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[Result, float]]:
    out: dict[str, tuple[Result, float]] = {}
    options = LoaderOptions()  # defaults, OCR on
    for path in FILES:
        start = time.monotonic()
        try:
            result: Result = load_file_isolated(path, options=options)
        except LoadError as exc:
            result = exc
        except Exception as exc:  # recorded, then reported as a failure below
            result = exc
        out[path.relative_to(DOCS).as_posix()] = (result, time.monotonic() - start)
    return out


def _describe(result: Result) -> str:
    if isinstance(result, LoadedFile):
        tables = sum(d.kind == "table" for d in result.docs)
        ocr = f", OCR pages {result.ocr_pages}" if result.ocr_pages else ""
        return f"indexed {len(result.docs)} docs ({tables} tables){ocr}"
    if isinstance(result, LoadError):
        return f"rejected: {result.reason}"
    return f"CRASHED: {type(result).__name__}: {result}"


def _loaded(results: dict, rel: str) -> LoadedFile:
    result, _ = results[rel]
    assert isinstance(result, LoadedFile), f"{rel}: {_describe(result)}"
    return result


def _rejected(results: dict, rel: str) -> str:
    result, _ = results[rel]
    assert isinstance(result, LoadError), f"{rel}: expected a rejection, got {_describe(result)}"
    return result.reason


def _text(loaded: LoadedFile) -> str:
    return "\n".join(d.text for d in loaded.docs)


def test_every_file_indexes_or_is_rejected(results: dict) -> None:
    width = max(len(rel) for rel in results)
    print("\n" + "\n".join(f"{rel:<{width}}  {seconds:5.1f}s  {_describe(res)}"
                           for rel, (res, seconds) in results.items()))
    assert len(results) == len(FILES) >= 50
    for rel, (res, _) in results.items():
        assert isinstance(res, LoadedFile | LoadError), f"{rel}: {_describe(res)}"
        if isinstance(res, LoadedFile):
            assert res.docs and all(d.text.strip() for d in res.docs), rel
            assert all(isinstance(d.page, int | None) and d.kind in ("text", "table") for d in res.docs), rel
        else:
            assert res.reason.strip(), rel
            assert "timed out" not in res.reason and "crashed" not in res.reason, f"{rel}: {res.reason}"


def test_loading_work_grows_linearly_with_the_text(tmp_path: Path) -> None:
    # Not a speed test (bench/ measures speed): it compares the loader with itself on the same text at two
    # sizes, in the same run, so a loaded machine slows both. Linear work takes ~16x as long for 16x the
    # text; a loader that rescans or copies what it has left per line or per section takes ~256x.
    book = DOCS / "txt_encodings" / "unstructured__book-war-and-peace-1225p.txt"
    data = book.read_bytes()
    part = tmp_path / "part.txt"
    part.write_bytes(data[:data.index(b"\n\n", len(data) // 16)])  # the first 1/16, cut between paragraphs
    size_ratio = len(data) / part.stat().st_size

    def seconds(path: Path) -> float:  # best of 5: the run least disturbed by other processes
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            load_file(path)
            runs.append(time.perf_counter() - start)
        return min(runs)

    ratio = seconds(book) / seconds(part)
    assert ratio < 3 * size_ratio, f"{size_ratio:.0f}x the text took {ratio:.0f}x as long"


@pytest.mark.parametrize("name", ["pypdf__r2-user-password.pdf", "pdfminer_six__aes-128.pdf"])
def test_password_protected_pdfs_rejected(results: dict, name: str) -> None:
    assert "password" in _rejected(results, f"pdf_encrypted/{name}")


@pytest.mark.parametrize("name", ["pypdf__r6-owner-password.pdf", "unstructured__copy-protected.pdf",
                                  "private-gpt__pdf_encrypted.pdf"])
def test_empty_password_pdfs_load(results: dict, name: str) -> None:
    assert _text(_loaded(results, f"pdf_encrypted/{name}")).strip()


def test_empty_and_whitespace_rejected(results: dict) -> None:
    assert "empty" in _rejected(results, "pdf_broken/pdfplumber__empty.pdf")
    assert "empty" in _rejected(results, "txt_encodings/unstructured__fake-text-all-whitespace.txt")


def test_fake_doc_rejected(results: dict) -> None:
    reason = _rejected(results, "docx/unstructured__fake.doc")
    assert "legacy" in reason and ".docx" in reason


def test_chinese_markdown_kb(results: dict) -> None:
    md = [rel for rel in results if rel.startswith("md_kb_zh/") and rel.endswith(".md") and "Chatchat" in rel]
    assert len(md) == 3
    for rel in md:
        loaded = _loaded(results, rel)
        text = _text(loaded)
        assert sum("\u4e00" <= ch <= "\u9fff" for ch in text) > 30, rel
        assert loaded.title and loaded.docs[0].heading, rel
    policy = _loaded(results, "md_kb_zh/kotaemon__policy.md")
    assert any(d.heading and " > " in d.heading for d in policy.docs)


def test_chinese_pdfs_have_text(results: dict) -> None:
    expected = {
        "pdf_zh_text/PyMuPDF__chinese-tables.pdf": "第七章企业资信状况",
        "pdf_zh_text/PyMuPDF__test_4182.pdf": "数字拟人品",
        "pdf_zh_text/pdfplumber__issue-336-example.pdf": "安徽省建设用地使用标准",
        "pdf_zh_text/pypdf__issue-914-xmp-data.pdf": "华联绿豆",
    }
    for rel, needle in expected.items():
        loaded = _loaded(results, rel)
        assert any(needle in d.text and d.page == 1 for d in loaded.docs), rel
    tables = [d for d in _loaded(results, "pdf_zh_text/pdfplumber__issue-336-example.pdf").docs if d.kind == "table"]
    assert tables and all(d.text.startswith("| ") and "| --- |" in d.text for d in tables)


@pytest.mark.parametrize(("name", "needle"), [
    ("private-gpt__file_scanned.pdf", "facsimile"),
    ("unstructured__loremipsum-flat.pdf", "Lorem"),
    ("Langchain-Chatchat__ocr_test.pdf", "横向文本框"),
])
def test_scanned_pdfs_are_ocred(results: dict, name: str, needle: str) -> None:
    result, _ = results[f"pdf_scanned/{name}"]
    if isinstance(result, LoadError):  # acceptable only as an explicit "no text layer" refusal
        assert "no text layer" in result.reason
        pytest.fail(f"{name}: OCR found nothing: {result.reason}")
    assert result.ocr_pages == [1]
    assert needle in _text(result)


def test_encodings_decoded(results: dict) -> None:
    for rel, needle in {
        "txt_encodings/chardet___ude_euc-tw1.txt": "維基大典",
        "txt_encodings/chardet__lily.blogsome.com.xml": "午后红茶",
        "txt_encodings/chardet__softsea.net.xml": "系统工具",
        "txt_encodings/chardet___chromium_gb18030_with_no_encoding_specified.html.xml": "中国制造的领军者",
        "txt_encodings/unstructured__umlauts-non-utf8.md": "können",
        "txt_encodings/unstructured__fake-text-utf-16-le.txt": "This is a test document",
        "txt_encodings/unstructured__fake-text-utf-32.txt": "This is a test document",
        "md_misc/PyMuPDF__test_markdown_bad_unicode.md": "Boiling Points °C",
    }.items():
        assert needle in _text(_loaded(results, rel)), rel


def test_docx_files(results: dict) -> None:
    ocr_docx = _loaded(results, "docx/Langchain-Chatchat__ocr_test.docx")
    assert "我是文字" in _text(ocr_docx)
    assert any(d.kind == "table" and "我是表格1" in d.text for d in ocr_docx.docs)
    pages = {d.page for d in _loaded(results, "docx/unstructured__page-breaks.docx").docs}
    assert pages == {1, 2, 3, 5, 6}
    assert "<floating-shape>" in _text(_loaded(results, "docx/unstructured__docx-shapes.docx"))
