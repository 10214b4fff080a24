"""Chat tab: plain LLM chat or question answering over one knowledge base, streamed, with sources."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from kb.types import KBError
from services import Busy, Services
from ui.common import as_text, user_errors
from ui.i18n import Lang, lang_of, msg, t
from ui.settings_form import coerce, render_group

log = logging.getLogger(__name__)

History = list[tuple[str, str]]
Messages = list[dict[str, Any]]

# Setting name -> ChatOptions field (the two names differ for historical reasons in a few places).
_OPTION_OF = {
    "temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens", "history_turns": "history_turns",
    "top_k": "top_k", "score_threshold": "threshold", "search_mode": "mode", "condense_question": "condense",
    "allow_general_knowledge": "allow_general_knowledge",
}


def sources_block(question: str, query: str | None, hits: list[Any], lang: Lang) -> str:
    """The markdown shown under a KB answer: the rewritten query (when it differs) and the numbered sources."""
    from llm.chat import format_sources

    parts = []
    if query and query.strip() != question.strip():
        parts.append(f"**{msg('query_rewritten', lang)}:** {as_text(query)}")
    if hits:
        parts.append(f"**{msg('sources', lang)}**\n\n{format_sources(hits, lang)}")
    return "\n\n---\n\n" + "\n\n".join(parts) if parts else ""


@dataclass
class ChatTab:
    kb: gr.Dropdown
    mode: gr.Radio
    no_kb: gr.Markdown  # how to make a first KB, shown while there is none

    def refresh_outputs(self) -> list[gr.components.Component]:
        return [self.mode, self.kb, self.no_kb]


class _Cancels:
    """One cancel Event per browser session, so Stop ends only that session's generation."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def new(self, session: str) -> threading.Event:
        with self._lock:
            event = self._events[session] = threading.Event()
            return event

    def cancel(self, session: str) -> None:
        with self._lock:
            event = self._events.pop(session, None)
        if event is not None:
            event.set()

    def done(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]


def build_chat_tab(services: Services) -> ChatTab:
    settings = services.settings
    cancels = _Cancels()

    # The KB choices depend on who is looking: they are filled when the page loads (refresh_kbs), never baked
    # into the page config that every visitor receives.
    with gr.Row(equal_height=True):
        mode = gr.Radio(
            [(t("mode_llm"), "llm"), (t("mode_kb"), "kb")], value="kb",
            label=t("chat_mode"), elem_id="chat-mode", scale=2,
        )
        kb = gr.Dropdown(choices=[], value=None, label=t("chat_kb"), elem_id="chat-kb", interactive=True,
                         visible=False, scale=3, allow_custom_value=True)
    no_kb = gr.Markdown(t("chat_no_kb"), elem_id="chat-no-kb", visible=False)
    chatbot = gr.Chatbot(label=t("chatbot"), show_label=False, elem_id="chatbot", height=460, sanitize_html=True,
                         render_markdown=True, buttons=["copy"], feedback_options=None)
    history = gr.State([])  # (question, raw answer) pairs: what the model sees, without the sources footer
    with gr.Row(equal_height=True):
        question = gr.Textbox(label=t("question"), placeholder=t("question_ph"), elem_id="chat-input",
                              lines=1, max_lines=6, scale=8, show_label=False)
        send = gr.Button(t("send"), variant="primary", elem_id="chat-send", scale=1, min_width=80)
        stop = gr.Button(t("stop"), variant="stop", elem_id="chat-stop", scale=1, min_width=80)
        clear = gr.Button(t("clear"), elem_id="chat-clear", scale=1, min_width=80)
    with gr.Accordion(t("params"), open=False, elem_id="chat-params"):
        with gr.Row():
            with gr.Column():
                gr.Markdown(t("params_retrieval"))
                retrieval = render_group(settings, "retrieval")
            with gr.Column():
                gr.Markdown(t("params_llm"))
                generation = render_group(settings, "llm")
    params = retrieval | generation
    param_names = list(params)

    # The request comes first: Gradio injects it only into positional parameters placed before *values.
    def respond(request: gr.Request, text: str, hist: History, messages: Messages | None, mode_value: str,
                kb_name: str | None, *values: Any) -> Iterator[tuple[Messages, History, str]]:
        from llm.chat import ChatOptions

        lang = lang_of(request)
        messages = list(messages or [])
        text = (text or "").strip()
        if not text:
            gr.Warning(msg("empty_question", lang))
            yield messages, hist, ""
            return
        if len(text) > settings.max_message_chars:
            gr.Warning(msg("chat_too_long", lang, limit=settings.max_message_chars))
            yield messages, hist, text
            return
        use_kb = mode_value == "kb"
        if use_kb and not kb_name:
            gr.Warning(msg("no_kb_chosen", lang))
            yield messages, hist, text
            return
        if use_kb:
            try:
                services.kb(services.ui_user(request), kb_name)  # one the user may read (404 otherwise)
            except KBError as e:
                gr.Warning(str(e))
                yield messages, hist, text
                return
        options = ChatOptions(kb=kb_name if use_kb else None)
        for name, value in zip(param_names, values, strict=True):
            setattr(options, _OPTION_OF[name], coerce(settings, name, value))

        messages += [{"role": "user", "content": as_text(text)}, {"role": "assistant", "content": "…"}]
        yield messages, hist, ""

        session = request.session_hash or "default"
        try:
            services.chat_slots.acquire()  # shared with the API: both feed the same model
        except Busy as e:
            gr.Warning(str(e))
            messages[-1] = {"role": "assistant", "content": f"*{as_text(str(e))}*"}
            yield messages, hist, text
            return
        cancel = cancels.new(session)
        answer, footer = "", ""
        try:
            for event in services.chat.stream(text, hist, options, cancel):
                if event.type == "token":
                    answer += event.data
                    messages[-1] = {"role": "assistant", "content": as_text(answer)}
                    yield messages, hist, ""
                elif event.type == "done":
                    answer = event.data["answer"]
                    if use_kb:
                        footer = sources_block(text, event.data.get("query"), list(event.data["sources"]), lang)
        except GeneratorExit:  # the browser went away mid-answer: stop the model too, not just the UI updates
            cancel.set()
            raise
        except (KBError, _llm_error()) as e:  # user-facing: shown in the conversation, not as a traceback
            gr.Warning(str(e))
            footer = f"\n\n*{as_text(str(e))}*"
        except Exception as e:
            log.exception("chat failed")
            footer = f"\n\n*{msg('internal_error', lang, kind=type(e).__name__)}*"
        finally:
            cancels.done(session, cancel)
            services.chat_slots.release()
        stopped = f" {msg('stopped', lang)}" if cancel.is_set() else ""
        messages[-1] = {"role": "assistant", "content": as_text(answer) + stopped + footer}
        if answer:
            hist = [*hist, (text, answer)]
        yield messages, hist, ""

    def stop_generation(request: gr.Request) -> None:
        cancels.cancel(request.session_hash or "default")

    def clear_chat(request: gr.Request) -> tuple[Messages, History, str]:
        cancels.cancel(request.session_hash or "default")
        return [], [], ""

    inputs = [question, history, chatbot, mode, kb, *params.values()]
    outputs = [chatbot, history, question]
    send.click(respond, inputs, outputs, concurrency_id="chat", api_name="chat")
    question.submit(respond, inputs, outputs, concurrency_id="chat", api_name=False)
    # Not queued: Stop must get through while the generation occupies the chat worker.
    stop.click(stop_generation, None, None, queue=False)
    clear.click(clear_chat, None, outputs, queue=False)
    mode.change(lambda m: gr.update(visible=m == "kb"), mode, kb, queue=False)
    return ChatTab(kb=kb, mode=mode, no_kb=no_kb)


def _llm_error() -> type[Exception]:
    """LLMError without importing the LLM stack at UI build time."""
    try:
        from llm.backends.base import LLMError
    except ImportError:  # pragma: no cover - the LLM layer is part of the app
        return KBError
    return LLMError


@user_errors
def refresh_kbs(services: Services, request: gr.Request, mode_value: str, current: str | None
                ) -> tuple[Any, Any, Any]:
    """New KB choices for the chat tab (mode, KB dropdown, no-KB hint) of the KBs this user may read, keeping
    ``current`` when it is one of them."""
    names = services.kb_names(services.ui_user(request))
    value = current if current in names else (names[0] if names else None)
    if not names and mode_value == "kb":
        mode_value = "llm"
    return (gr.update(value=mode_value), gr.update(choices=names, value=value, visible=mode_value == "kb"),
            gr.update(visible=not names))
