"""Chat flow: plain chat, or KB question answering (condense -> retrieve -> sources -> grounded answer)."""

from __future__ import annotations

import html
import itertools
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kb.cjk import CJK
from llm import prompts
from llm.backends.base import GenParams, LLMBackend, complete
from llm.scheduler import Ticket, TurnScheduler

CONDENSE_MAX_TOKENS = 64
log = logging.getLogger(__name__)


class Searchable(Protocol):
    prompt: str  # the KB's own addition to the answer system prompt
    def params(self, top_k: int | None = None, threshold: float | None = None, mode: str | None = None) -> Any:
        """Effective search parameters (``.threshold`` is shown when nothing passes it)."""

    def search(self, query: str, top_k: int | None = None, threshold: float | None = None,
               mode: str | None = None) -> list[Any]: ...


class KBManager(Protocol):
    def get(self, kb_name: str) -> Searchable: ...


@dataclass
class ChatOptions:
    """Per-request overrides; ``None`` means "use the setting"."""

    kb: str | Sequence[str] | None = None  # one KB, or several searched together
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
    # Who asks, for the fair queue (services.chat_user); None: a request of its own, queued FIFO.
    user: str | None = None


@dataclass
class ChatEvent:
    # "queue": waiting for a turn on the model, data {"ahead": n}; sent only when the model is busy, again when
    # n changes. Consumers that do not show it ignore it.
    type: Literal["queue", "query", "sources", "token", "done"]
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


HISTORY_MARGIN = 48  # tokens for the chat template's role markers and for rounding in the estimate


def estimate_tokens(text: str) -> int:
    """For backends without a tokenizer (a remote server): a CJK character is about one token in current
    tokenizers, other text about three characters; errs high, so the trimmed prompt fits."""
    cjk = len(CJK.findall(text))
    return cjk + (len(text) - cjk) // 3 + 1


def kb_names(kb: str | Sequence[str] | None) -> list[str]:
    return [kb] if isinstance(kb, str) else list(dict.fromkeys(kb or []))


def search_all(kbs: Sequence[Searchable], query: str, top_k: int | None = None, threshold: float | None = None,
               mode: str | None = None) -> list[Any]:
    """Search every KB; scores share one meaning, so hits merge by score alone (best first, the largest top-k
    of the KBs kept)."""
    if len(kbs) == 1:
        return kbs[0].search(query, top_k=top_k, threshold=threshold, mode=mode)
    want = max(kb.params(top_k, threshold, mode).top_k for kb in kbs)
    hits = [h for kb in kbs for h in kb.search(query, top_k=top_k, threshold=threshold, mode=mode)]
    return sorted(hits, key=lambda h: -h.score)[:want]


def turn_slots(backend: LLMBackend) -> int | None:
    """Generations the backend runs at once: its ``slots``, 1 for a local backend without any (transformers);
    None (no limit here) for a remote server, which queues by itself."""
    slots = getattr(backend, "slots", None)
    if slots is not None:
        return int(slots)
    return None if backend.info().get("backend") == "openai" else 1


_anonymous = itertools.count()


class ChatService:
    def __init__(self, settings: Any, manager: KBManager | None, backend: LLMBackend):
        self.settings = settings
        self.manager = manager
        self.backend = backend
        slots = turn_slots(backend)
        self.turns: TurnScheduler | None = TurnScheduler(slots) if slots else None

    def _turn(self, ticket: list[Ticket], user: str | None,
              cancel: threading.Event | None) -> Iterator[ChatEvent]:
        """Wait for a turn on the model unless this question holds one (``ticket``: its one-element holder),
        yielding ``queue`` events meanwhile. The turn lasts until ``stream`` ends: condense and answer are one
        turn, so a follow-up does not queue twice and nobody's answer slips in between."""
        if self.turns is None or ticket:
            return
        ticket.append(self.turns.enqueue(user if user is not None else f"anonymous:{next(_anonymous)}"))
        for ahead in ticket[0].wait(cancel):
            yield ChatEvent("queue", {"ahead": ahead})

    def _may_generate(self, ticket: list[Ticket]) -> bool:
        return self.turns is None or (bool(ticket) and ticket[0].granted)

    # --- public API -------------------------------------------------------------------------
    def stream(self, question: str, history: Sequence[tuple[str, str]], options: ChatOptions | None = None,
               cancel: threading.Event | None = None) -> Iterator[ChatEvent]:
        """Events: ``queue`` while waiting for the model, ``query`` and ``sources`` (KB mode, before any token),
        ``token``s, then one ``done`` with ``{"answer", "sources", "query"}`` (also after a cancel, with the
        partial answer)."""
        ticket: list[Ticket] = []  # this question's turn, taken before its first model call
        try:
            yield from self._stream(question, history, options or ChatOptions(), cancel, ticket)
        finally:
            if ticket:
                ticket[0].release()

    def _stream(self, question: str, history: Sequence[tuple[str, str]], opts: ChatOptions,
                cancel: threading.Event | None, ticket: list[Ticket]) -> Iterator[ChatEvent]:
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

        def plain(h: list[tuple[str, str]]) -> list[prompts.Message]:
            return prompts.chat_messages(question, h, lang)

        def generate(messages: list[prompts.Message]) -> Iterator[ChatEvent]:
            # The prompt is built (and token-counted) before queueing: a turn is held for generation only.
            yield from self._turn(ticket, opts.user, cancel)
            if self._may_generate(ticket):  # not when cancelled while queued
                for piece in self.backend.stream(messages, params, cancel):
                    yield run.token(piece)

        if not kb_names(opts.kb):
            yield from generate(self.fit(plain, hist, params.max_tokens))
            yield ChatEvent("done", {"answer": run.text, "sources": [], "query": question})
            return

        if self.manager is None:
            raise ValueError("knowledge-base chat needs a KB manager")
        kbs = [self.manager.get(name) for name in kb_names(opts.kb)]  # KBNotFound: user-facing already
        query = question
        if hist and _pick(opts.condense, s.condense_question):
            yield from self._turn(ticket, opts.user, cancel)
            if self._may_generate(ticket):
                query = self.condense(question, hist, lang, cancel)
        yield ChatEvent("query", query)

        # Unset options follow each KB's own settings (its search mode, threshold...), then the app's.
        threshold = kbs[0].params(opts.top_k, opts.threshold, opts.mode).threshold
        hits = search_all(kbs, query, opts.top_k, opts.threshold, opts.mode)
        yield ChatEvent("sources", hits)

        if not hits:
            if not _pick(opts.allow_general_knowledge, s.allow_general_knowledge):
                # Nothing to ground an answer on: say so without spending a model call.
                yield run.token(prompts.no_hit_message(threshold, lang))
            else:
                yield run.token(prompts.GENERAL_KNOWLEDGE_LABEL[lang] + "\n\n")
                yield from generate(self.fit(plain, hist, params.max_tokens))
        else:
            # The answer prompt gets the original question (history gives it its context) and the retrieved
            # chunks found with the standalone query.
            kb_prompt = "\n".join(p for p in dict.fromkeys(kb.prompt.strip() for kb in kbs) if p)
            yield from generate(self.fit(lambda h: prompts.kb_messages(question, hits, h, lang, kb_prompt), hist,
                                         params.max_tokens))
        answer, cited, invalid = check_citations(run.text, len(hits))
        yield ChatEvent("done", {"answer": answer, "sources": hits, "query": query, "citations": cited,
                                 "invalid_citations": invalid})

    def count_tokens(self, text: str) -> int:
        count = getattr(self.backend, "count_tokens", None)
        if count is not None:
            try:
                return int(count(text))
            except Exception:  # a tokenizer hiccup must not fail the chat: the estimate errs high
                log.warning("token count failed; estimating", exc_info=True)
        return estimate_tokens(text)

    def fit(self, build: Callable[[list[tuple[str, str]]], list[prompts.Message]], history: list[tuple[str, str]],
            max_tokens: int) -> list[prompts.Message]:
        """``build(history)`` with the oldest turns dropped until the prompt and ``max_tokens`` fit the model's
        context window: a long conversation never fails with "prompt too long". The question, the documents and
        the system prompt are never dropped (top_k bounds them)."""
        if not history:
            return build(history)
        n_ctx = self.backend.info().get("n_ctx") or self.settings.n_ctx
        room = n_ctx - max_tokens - HISTORY_MARGIN - sum(self.count_tokens(m["content"]) for m in build([]))
        costs = [self.count_tokens(q) + self.count_tokens(a) + 8 for q, a in history]
        keep = len(history)
        while keep and sum(costs[len(history) - keep:]) > room:
            keep -= 1
        return build(history[len(history) - keep:])

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


CITATION = re.compile(r"[\[【]\s*(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\s*[\]】]")


def citation_numbers(marker: re.Match[str]) -> list[int]:
    """The source numbers of one ``CITATION`` match: ``[2, 9]`` -> [2, 9]."""
    return [int(x) for x in re.split(r"\s*[,，、]\s*", marker.group(1))]


def check_citations(answer: str, n_sources: int) -> tuple[str, list[int], list[int]]:
    """Check the ``[n]`` markers a model wrote against the ``n_sources`` sources it was given.

    Returns the answer with every marker pointing at no source removed (``[2, 9]`` becomes ``[2]``), the source
    numbers cited (in order of first use) and the invalid numbers removed. Small models invent markers
    ("[5]" with three sources); a link to nothing would look like evidence."""
    cited: list[int] = []
    invalid: list[int] = []

    def fix(m: re.Match[str]) -> str:
        nums = citation_numbers(m)
        good = [x for x in nums if 1 <= x <= n_sources]
        invalid.extend(x for x in nums if x not in good and x not in invalid)
        cited.extend(x for x in good if x not in cited)
        return "".join(f"[{x}]" for x in good)

    return CITATION.sub(fix, answer), cited, invalid


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
