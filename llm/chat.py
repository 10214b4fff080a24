"""Chat flow: plain chat, or KB question answering (condense -> retrieve -> sources -> grounded answer)."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from llm import prompts
from llm.backends.base import GenParams, LLMBackend, complete

CONDENSE_MAX_TOKENS = 64


class Searchable(Protocol):
    def params(self, top_k: int | None = None, threshold: float | None = None, mode: str | None = None) -> Any:
        """Effective search parameters (``.threshold`` is shown when nothing passes it)."""

    def search(self, query: str, top_k: int | None = None, threshold: float | None = None,
               mode: str | None = None) -> list[Any]: ...


class KBManager(Protocol):
    def get(self, kb_name: str) -> Searchable: ...


@dataclass
class ChatOptions:
    """Per-request overrides; ``None`` means "use the setting"."""

    kb: str | None = None
    top_k: int | None = None
    threshold: float | None = None
    mode: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    history_turns: int | None = None
    condense: bool | None = None
    allow_general_knowledge: bool | None = None
    stop: list[str] | None = None


@dataclass
class ChatEvent:
    type: Literal["query", "sources", "token", "done"]
    data: Any = None


@dataclass
class _Run:
    pieces: list[str] = field(default_factory=list)

    def token(self, text: str) -> ChatEvent:
        self.pieces.append(text)
        return ChatEvent("token", text)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


class ChatService:
    def __init__(self, settings: Any, manager: KBManager | None, backend: LLMBackend):
        self.settings = settings
        self.manager = manager
        self.backend = backend

    # --- public API -------------------------------------------------------------------------
    def stream(self, question: str, history: Sequence[tuple[str, str]], options: ChatOptions | None = None,
               cancel: threading.Event | None = None) -> Iterator[ChatEvent]:
        """Events: ``query`` and ``sources`` (KB mode, before any token), ``token``s, then one ``done`` with
        ``{"answer", "sources", "query"}`` (also after a cancel, with the partial answer)."""
        opts = options or ChatOptions()
        s = self.settings
        turns = _pick(opts.history_turns, s.history_turns)
        hist = [(str(q), str(a)) for q, a in history][-turns:] if turns > 0 else []
        params = GenParams(
            temperature=_pick(opts.temperature, s.temperature),
            top_p=_pick(opts.top_p, s.top_p),
            max_tokens=_pick(opts.max_tokens, s.max_tokens),
            stop=list(opts.stop or []),
        )
        lang = prompts.detect_lang(question)
        run = _Run()

        if not opts.kb:
            for piece in self.backend.stream(prompts.chat_messages(question, hist, lang), params, cancel):
                yield run.token(piece)
            yield ChatEvent("done", {"answer": run.text, "sources": [], "query": question})
            return

        if self.manager is None:
            raise ValueError("knowledge-base chat needs a KB manager")
        kb = self.manager.get(opts.kb)  # KBNotFound propagates: it is user-facing already
        query = question
        if hist and _pick(opts.condense, s.condense_question):
            query = self.condense(question, hist, lang, cancel)
        yield ChatEvent("query", query)

        # Unset options follow the KB's own settings (its search mode, threshold...), then the app's.
        threshold = kb.params(opts.top_k, opts.threshold, opts.mode).threshold
        hits = kb.search(query, top_k=opts.top_k, threshold=opts.threshold, mode=opts.mode)
        yield ChatEvent("sources", hits)

        if not hits:
            if not _pick(opts.allow_general_knowledge, s.allow_general_knowledge):
                # Nothing to ground an answer on: say so without spending a model call.
                yield run.token(prompts.no_hit_message(threshold, lang))
            else:
                yield run.token(prompts.GENERAL_KNOWLEDGE_LABEL[lang] + "\n\n")
                for piece in self.backend.stream(prompts.chat_messages(question, hist, lang), params, cancel):
                    yield run.token(piece)
        else:
            # The answer prompt gets the original question (history gives it its context) and the retrieved
            # chunks found with the standalone query.
            messages = prompts.kb_messages(question, hits, hist, lang)
            for piece in self.backend.stream(messages, params, cancel):
                yield run.token(piece)
        yield ChatEvent("done", {"answer": run.text, "sources": hits, "query": query})

    def answer(self, question: str, history: Sequence[tuple[str, str]] = (), options: ChatOptions | None = None,
               cancel: threading.Event | None = None) -> tuple[str, list[Any], str]:
        """Non-streaming helper: (answer text, hits, retrieval query)."""
        for event in self.stream(question, history, options, cancel):
            if event.type == "done":
                return event.data["answer"], event.data["sources"], event.data["query"]
        raise RuntimeError("chat stream ended without a done event")  # unreachable unless stream() is broken

    def condense(self, question: str, history: Sequence[tuple[str, str]], lang: prompts.Lang | None = None,
                 cancel: threading.Event | None = None) -> str:
        """Standalone version of a follow-up question (greedy, short); the original on an empty/odd output."""
        lang = lang or prompts.detect_lang(question)
        params = GenParams(temperature=0.0, top_p=1.0, max_tokens=CONDENSE_MAX_TOKENS, stop=["\n\n"])
        out = complete(self.backend, prompts.condense_messages(question, history, lang), params, cancel)
        return prompts.clean_condensed(out, question)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()!#|~<>{}+\-.])")


def escape_markdown(text: str) -> str:
    """Text from documents shown inside markdown: HTML-escaped and markdown-escaped, so neither
    markup (``<img onerror>``) nor markdown (``![x](http://host/track.png)``) takes effect."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def format_sources(hits: Sequence[Any], lang: prompts.Lang = "en", snippet_chars: int = 200) -> str:
    """Markdown list of sources; file names and snippets are shown as literal text."""
    score_word = "相似度" if lang == "zh" else "score"
    blocks = []
    for i, h in enumerate(hits, 1):
        head = [f"\\[{i}\\] {escape_markdown(str(h.file))}"]
        if h.page is not None:
            head.append(f"p.{h.page}")
        head.append(f"{score_word} {float(h.score):.2f}")
        text = " ".join(str(h.text).split())
        if len(text) > snippet_chars:
            text = text[:snippet_chars].rstrip() + "…"
        blocks.append(" · ".join(head) + "\n> " + escape_markdown(text))
    return "\n\n".join(blocks)
