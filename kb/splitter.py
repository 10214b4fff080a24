"""Chinese-aware text splitting.

Text is cut at the coarsest boundary that makes pieces fit: paragraphs, then lines, then
Chinese sentence ends (。！？；), then Chinese clause marks (，、：), then English sentence ends,
then spaces, then a hard cut. Pieces are merged back up to ``size`` characters with ``overlap``
characters of context carried over. A chunk never exceeds the embedder's maximum input: chunks
over it are split again, so no text is silently truncated by the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from kb.types import Chunk, Document

# Each pattern splits *after* the separator so punctuation stays with its sentence.
_LEVELS: list[re.Pattern[str]] = [
    re.compile(r"(?<=\n)\s*\n"),  # blank line: paragraph
    re.compile(r"(?<=\n)"),  # line
    re.compile(r"(?<=[。！？；!?;])(?![”」』）)\"'])|(?<=[。！？；!?;][”」』）)\"'])"),  # sentence (zh + en !?;)
    re.compile(r"(?<=[.])(?=\s)"),  # English sentence end
    re.compile(r"(?<=[，、：,:])"),  # clause
    re.compile(r"(?<=\s)"),  # word
]


def _pieces(text: str, size: int, level: int = 0) -> Iterator[str]:
    if len(text) <= size:
        yield text
        return
    if level >= len(_LEVELS):
        for i in range(0, len(text), size):
            yield text[i:i + size]
        return
    for part in _LEVELS[level].split(text):
        if not part:
            continue
        if len(part) <= size:
            yield part
        else:
            yield from _pieces(part, size, level + 1)


def split_text(text: str, size: int, overlap: int) -> list[str]:
    """Split ``text`` into stripped chunks of at most ``size`` characters."""
    overlap = min(overlap, size // 2)
    chunks: list[str] = []
    current: list[str] = []
    length = 0
    for piece in _pieces(text, size):
        if current and length + len(piece) > size:
            chunks.append("".join(current))
            # Carry whole trailing pieces (never a half sentence) as overlap.
            carried: list[str] = []
            carried_len = 0
            for prev in reversed(current):
                if carried_len + len(prev) > overlap or carried_len + len(prev) + len(piece) > size:
                    break
                carried.insert(0, prev)
                carried_len += len(prev)
            current, length = carried, carried_len
        current.append(piece)
        length += len(piece)
    if current:
        chunks.append("".join(current))
    return [c.strip() for c in chunks if c.strip()]


def chunk_documents(
    docs: list[Document],
    *,
    file_id: str,
    size: int,
    overlap: int,
    max_tokens: int | None = None,
    fits_tokens: Callable[[str, int], bool] | None = None,
    first_id: int = 0,
) -> list[Chunk]:
    """Turn a file's documents into chunks with consecutive ids starting at ``first_id``. ``fits_tokens(text, n)``
    says whether a text is at most n tokens for the embedder (``kb.embeddings.fits_tokens``)."""
    chunks: list[Chunk] = []
    for doc in docs:
        for text in split_text(doc.text, size, overlap):
            for part in _cap_tokens(text, max_tokens, fits_tokens):
                chunks.append(Chunk(
                    id=first_id + len(chunks), file_id=file_id, text=part,
                    page=doc.page, heading=doc.heading, ordinal=len(chunks),
                ))
    return chunks


def _cap_tokens(text: str, max_tokens: int | None, fits: Callable[[str, int], bool] | None) -> list[str]:
    # Leave room for the title prefix added at embedding time.
    if not max_tokens or fits is None or fits(text, max_tokens - 16):
        return [text]
    half = max(1, len(text) // 2)
    parts = split_text(text, half, 0)
    if len(parts) == 1:  # nothing to split on: fall back to a hard cut
        parts = [text[:half], text[half:]]
    return [p for part in parts for p in _cap_tokens(part, max_tokens, fits)]


def embedding_text(chunk: Chunk, title: str | None) -> str:
    """The text embedded and keyword-indexed for a chunk: its title/heading path, then the text.
    The prefix lets a chunk that never names its subject still match questions about it."""
    label = " > ".join(p for p in (title, chunk.heading) if p and p not in chunk.text[:80])
    return f"{label}\n{chunk.text}" if label else chunk.text
