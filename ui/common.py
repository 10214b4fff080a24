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
    """Markdown-safe display of untrusted text: HTML in prose is escaped so it shows as typed.

    Code spans are left alone because markdown already shows them literally (escaping there would print
    ``&lt;``). The chatbot's HTML sanitizer stays on as the second line of defence.
    """
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append(_escape(text[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _escape(s: str) -> str:
    # '>' stays so markdown quotes still work; without '<' no tag can open.
    return s.replace("&", "&amp;").replace("<", "&lt;")


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
