"""Tables -> markdown row groups that each repeat the header row; CSV/TSV and XLSX loaders."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kb.loaders.base import Collector, LoaderOptions
from kb.loaders.text import read_text
from kb.types import LoadedFile

ROWS_PER_GROUP = 20
MAX_GROUP_CHARS = 6000  # wide tables get fewer rows per group so a group stays chunkable
MAX_CELL_CHARS = 1000


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, dt.datetime) and value.time() == dt.time():
        value = value.date()
    text = str(value).replace("\r", " ").replace("\n", " ").replace("|", "\\|").strip()
    return text[:MAX_CELL_CHARS]


def _row_line(cells: Sequence[str], width: int) -> str:
    cells = list(cells) + [""] * (width - len(cells))
    return "| " + " | ".join(cells[:width]) + " |"


def clean_rows(rows: Iterable[Sequence[Any]]) -> list[list[str]]:
    """Stringify cells, drop empty rows and trailing empty columns."""
    out = [[cell_text(c) for c in row] for row in rows]
    out = [r for r in out if any(r)]
    width = max((max((i + 1 for i, c in enumerate(r) if c), default=0) for r in out), default=0)
    return [r[:width] + [""] * (width - len(r[:width])) for r in out]


def table_groups(rows: Sequence[Sequence[str]]) -> Iterator[tuple[str, int, int]]:
    """Yield (markdown, first_row, last_row) groups; the first row is the header and starts every group.

    Row numbers are 1-based data rows (the header is row 0)."""
    if not rows:
        return
    width = max(len(r) for r in rows)
    header = [c or f"column {i + 1}" for i, c in enumerate(list(rows[0]) + [""] * (width - len(rows[0])))]
    head = _row_line(header, width) + "\n" + _row_line(["---"] * width, width)
    body = rows[1:]
    if not body:
        yield head, 0, 0
        return
    group: list[str] = []
    size, first = len(head), 1
    for i, row in enumerate(body, start=1):
        line = _row_line(row, width)
        if group and (len(group) >= ROWS_PER_GROUP or size + len(line) > MAX_GROUP_CHARS):
            yield head + "\n" + "\n".join(group), first, i - 1
            group, size, first = [], len(head), i
        group.append(line)
        size += len(line) + 1
    if group:
        yield head + "\n" + "\n".join(group), first, len(body)


def add_table(out: Collector, rows: Iterable[Sequence[Any]], *, page: int | None = None, heading: str | None = None,
              meta: dict | None = None) -> int:
    """Add a table as row-group Documents (kind="table"); returns how many were added."""
    cleaned = clean_rows(rows)
    if not cleaned or (len(cleaned) == 1 and sum(1 for c in cleaned[0] if c) < 2):
        return 0
    n = 0
    for text, first, last in table_groups(cleaned):
        out.add(text, page=page, heading=heading, kind="table",
                meta={**(meta or {}), "rows": f"{first}-{last}", "total_rows": len(cleaned) - 1}, clean=False)
        n += 1
    return n


def load_csv(path: Path, ext: str, options: LoaderOptions) -> LoadedFile:
    text, encoding = read_text(path)
    out = Collector(options)
    if ext == ".tsv":
        delimiter = "\t"
    else:
        try:  # Excel in many locales writes ';'-separated "CSV"
            delimiter = csv.Sniffer().sniff(text[:20_000], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    csv.field_size_limit(10 * 1024 * 1024)
    reader = csv.reader(io.StringIO(text.replace("\x00", "")), delimiter=delimiter)
    rows: list[list[str]] = []
    chars = 0
    for row in reader:
        rows.append(row)
        chars += sum(len(c) for c in row)
        if chars > options.max_chars:
            out.warnings.append("table truncated: too many characters")
            break
    add_table(out, rows, meta={"encoding": encoding})
    return out.finish()


def load_xlsx(path: Path, options: LoaderOptions) -> LoadedFile:
    import openpyxl

    out = Collector(options)
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        names = wb.sheetnames
        for name in names:
            if out.full:
                break
            ws = wb[name]
            if getattr(ws, "sheet_state", "visible") != "visible":
                continue
            rows: list[tuple] = []
            chars = 0
            for row in ws.iter_rows(values_only=True):
                rows.append(row)
                chars += sum(len(str(c)) for c in row if c is not None)
                if chars > options.max_chars:
                    out.warnings.append(f"sheet {name!r} truncated: too many characters")
                    break
            add_table(out, rows, heading=name, meta={"sheet": name})
        title = wb.properties.title if wb.properties else None
    finally:
        wb.close()
    return out.finish(title=title, pages=len(names), empty_reason="empty: no cells with text found")
