"""The one CJK detector: Chinese (Han), Japanese kana and Korean Hangul, used wherever the app decides
"is this text CJK" (prompt language, which embedding model reads a chunk, how a query is weighted)."""

from __future__ import annotations

import re

CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def cjk_share(text: str) -> float:
    """Share of the letters of ``text`` that are CJK (0 when it has no letters)."""
    letters = [ch for ch in text if ch.isalpha()]
    return sum(1 for ch in letters if CJK.match(ch)) / max(len(letters), 1)
