"""The one CJK detector: Chinese (Han), Japanese kana and Korean Hangul, used wherever the app decides
"is this text CJK" (prompt language, which embedding model reads a chunk, how a query is weighted)."""

from __future__ import annotations

import re

CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def cjk_share(text: str) -> float:
    """Share of the letters of ``text`` that are CJK (0 when it has no letters)."""
    letters = [ch for ch in text if ch.isalpha()]
    return sum(1 for ch in letters if CJK.match(ch)) / max(len(letters), 1)


# A word an English-only model can read inside CJK text: Latin letters (with accents) and digits, joined by
# the marks that keep a term whole ("GPT-4", "3.5", "O'Neil").
_LATIN_WORD = re.compile(r"[0-9A-Za-z\u00c0-\u024f]+(?:[.\-'+][0-9A-Za-z\u00c0-\u024f]+)*")


def latin_view(text: str) -> str:
    """What an English-only model should read of ``text``: the text itself when it has no CJK, else only its
    Latin words and numbers (names, terms, years), "" when it has none."""
    if not CJK.search(text):
        return text
    return " ".join(_LATIN_WORD.findall(text))
