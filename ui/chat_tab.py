"""Chat tab: conversations kept in the database (list, open, rename, delete, search), plain LLM chat or questions
over one or more knowledge bases, streamed, with sources shown as soon as retrieval is done, ``[n]`` markers
that open the cited page, thumbs up/down with a comment, regenerate and edit-and-re-ask."""

from __future__ import annotations

import html
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from kb.conversations import AnswerRecorder
from kb.types import KBError
from services import Busy, Services
from ui.common import as_text, user_errors
from ui.i18n import Lang, lang_of, msg, t
from ui.settings_form import coerce, render_group

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]

# Setting name -> ChatOptions field (the two names differ for historical reasons in a few places).
# The answer bubble while the model is busy with others: (next in line, n ahead).
_QUEUED = {"en": ("⏳ Waiting for the model: you are next", "⏳ {n} ahead of you in the queue"),
           "zh": ("⏳ 正在排队：下一个就是你", "⏳ 前面还有 {n} 个请求在排队")}
_OPTION_OF = {
    "temperature": "temperature", "top_p": "top_p", "max_tokens": "max_tokens", "history_turns": "history_turns",
    "top_k": "top_k", "score_threshold": "threshold", "search_mode": "mode", "condense_question": "condense",
    "allow_general_knowledge": "allow_general_knowledge",
}


def preview_url(source: dict[str, Any]) -> str:
    q = urllib.parse.quote
    return f"/ui/preview/{q(source['kb'])}/{q(source['file_id'])}?chunk={int(source['chunk_id'])}"


def answer_markdown(answer: str, sources: list[dict[str, Any]]) -> str:
    """The answer as safe markdown whose ``[n]`` markers link to the cited place (our own URLs only: the
    model's text is escaped, so it cannot make links of its own)."""
    from llm.chat import CITATION, citation_numbers

    out, pos = [], 0
    for m in CITATION.finditer(answer):
        out.append(as_text(answer[pos:m.start()]))
        for n in citation_numbers(m):
            if 1 <= n <= len(sources):
                out.append(f"[\\[{n}\\]]({preview_url(sources[n - 1])})")
        pos = m.end()
    out.append(as_text(answer[pos:]))
    return "".join(out)


def sources_html(sources: list[dict[str, Any]], query: str | None, question: str, lang: Lang) -> str:
    """Compact sources under an answer: one line each (file, page, score), the snippet behind a click."""
    if not sources and not (query and query.strip() != question.strip()):
        return ""
    parts = []
    if query and query.strip() != question.strip():
        parts.append(f"<p><b>{msg('query_rewritten', lang)}:</b> {html.escape(query)}</p>")
    score_word = "相似度" if lang == "zh" else "score"
    for i, s in enumerate(sources, 1):
        where = html.escape(str(s["file"])) + (f" p.{s['page']}" if s.get("page") else "")
        snippet = " ".join(str(s["text"]).split())
        snippet = html.escape(snippet[:300] + ("…" if len(snippet) > 300 else ""))
        link = html.escape(preview_url(s))
        parts.append(f'<details class="source"><summary><a class="cite" href="{link}" target="_blank">[{i}]</a> '
                     f'{where} · {score_word} {float(s["score"]):.2f}</summary>{snippet} '
                     f'<a href="{link}" target="_blank">{msg("source_open", lang)}</a></details>')
    return f"\n\n<div class=\"sources\"><b>{msg('sources', lang)}</b>{''.join(parts)}</div>"


def rating_line(feedback: dict[str, Any] | None, lang: Lang) -> str:
    if not feedback:
        return ""
    mark = "👍" if feedback["rating"] > 0 else "👎"
    comment = f" {html.escape(feedback['comment'])}" if feedback.get("comment") else ""
    return f"\n\n<p class=\"rating\">{mark} {msg('rated', lang)}{comment}</p>"


def render(conv: dict[str, Any] | None, lang: Lang) -> tuple[Messages, list[str]]:
    """A stored conversation as chatbot messages, and the message ids in the same order."""
    messages: Messages = []
    ids: list[str] = []
    question = ""
    for m in (conv or {}).get("messages", []):
        if m["role"] == "user":
            question = m["content"]
            messages.append({"role": "user", "content": as_text(m["content"])})
        else:
            status = m["meta"].get("status")
            note = f" {msg('stopped', lang)}" if status == "stopped" else ""
            messages.append({"role": "assistant", "content": answer_markdown(m["content"], m["sources"]) + note
                             + sources_html(m["sources"], m["query"], question, lang)
                             + rating_line(m["feedback"], lang)})
        ids.append(m["id"])
    return messages, ids


@dataclass
class ChatTab:
    kb: gr.Dropdown
    mode: gr.Radio
    no_kb: gr.Markdown  # how to make a first KB, shown while there is none
    conversations: gr.Radio
    load: Any = None
    load_outputs: list[Any] | None = None

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
    store = services.conversations
    cancels = _Cancels()

    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            new_conv = gr.Button(t("conv_new"), elem_id="conv-new", variant="secondary")
            conv_search = gr.Textbox(placeholder=t("conv_search"), show_label=False, elem_id="conv-search",
                                     max_length=200)
            # Filled per user when the page loads: the list is never part of the page config everyone receives.
            conv_list = gr.Radio(choices=[], label=t("conversations"), elem_id="conv-list")
            with gr.Accordion(t("conv_manage"), open=False, elem_id="conv-manage"):
                conv_title = gr.Textbox(label=t("conv_title"), elem_id="conv-title", max_length=200)
                with gr.Row():
                    rename = gr.Button(t("conv_rename"), elem_id="conv-rename", size="sm")
                    delete = gr.Button(t("conv_delete"), variant="stop", elem_id="conv-delete", size="sm")
        with gr.Column(scale=4):
            # The KB choices depend on who is looking: filled when the page loads (refresh_kbs).
            with gr.Row(equal_height=True):
                mode = gr.Radio([(t("mode_llm"), "llm"), (t("mode_kb"), "kb")], value="kb", label=t("chat_mode"),
                                elem_id="chat-mode", scale=2)
                kb = gr.Dropdown(choices=[], value=[], multiselect=True, label=t("chat_kb"), elem_id="chat-kb",
                                 interactive=True, visible=False, scale=3)
            no_kb = gr.Markdown(t("chat_no_kb"), elem_id="chat-no-kb", visible=False)
            chatbot = gr.Chatbot(label=t("chatbot"), show_label=False, elem_id="chatbot", height=460,
                                 sanitize_html=True, render_markdown=True, buttons=["copy"],
                                 feedback_options=("Like", "Dislike"), editable="user")
            with gr.Row(equal_height=True):
                question = gr.Textbox(label=t("question"), placeholder=t("question_ph"), elem_id="chat-input",
                                      lines=1, max_lines=6, scale=8, show_label=False)
                send = gr.Button(t("send"), variant="primary", elem_id="chat-send", scale=1, min_width=80)
                stop = gr.Button(t("stop"), variant="stop", elem_id="chat-stop", scale=1, min_width=80)
            with gr.Row():
                regenerate = gr.Button(t("regenerate"), elem_id="chat-regenerate", size="sm")
                edit = gr.Button(t("edit_reask"), elem_id="chat-edit", size="sm")
                clear = gr.Button(t("clear"), elem_id="chat-clear", size="sm")
            with gr.Row(equal_height=True):
                comment = gr.Textbox(placeholder=t("feedback_comment_ph"), show_label=False, scale=4,
                                     elem_id="chat-feedback-comment", max_length=4000)
                send_comment = gr.Button(t("feedback_comment"), elem_id="chat-feedback-send", scale=1, size="sm")
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
    conv_id = gr.State(None)  # the open conversation (None: a new one, created by its first question)
    msg_ids = gr.State([])  # message ids in chatbot order: a like on message i rates msg_ids[i]
    last_rated = gr.State(None)  # the answer a comment goes with

    def conv_choices(request: gr.Request, search: str | None = None) -> list[tuple[str, str]]:
        who = services.ui_user(request)
        return [(c["title"] or "…", c["id"]) for c in store.list(who.id, (search or "").strip() or None)]

    def opened(request: gr.Request, cid: str | None) -> tuple[Any, ...]:
        lang = lang_of(request)
        conv = store.get(services.ui_user(request).id, cid) if cid else None
        messages, ids = render(conv, lang)
        return messages, cid, ids, gr.update(choices=conv_choices(request), value=cid)

    # The request comes first: Gradio injects it only into positional parameters placed before *values.
    def ask(request: gr.Request, text: str, cid: str | None, messages: Messages | None, mode_value: str,
            kb_names: list[str] | None, replace: str | None, *values: Any) -> Iterator[tuple[Any, ...]]:
        from llm.chat import ChatOptions

        lang = lang_of(request)
        who = services.ui_user(request)
        text = (text or "").strip()
        messages = list(messages or [])

        def keep(note: str | None = None) -> tuple[Any, ...]:
            if note:
                gr.Warning(note)
            return messages, cid, gr.skip(), text, gr.skip()

        if not text:
            yield keep(msg("empty_question", lang))
            return
        if len(text) > settings.max_message_chars:
            yield keep(msg("chat_too_long", lang, limit=settings.max_message_chars))
            return
        kbs = list(kb_names or []) if mode_value == "kb" else []
        if mode_value == "kb" and not kbs:
            yield keep(msg("no_kb_chosen", lang))
            return
        options = ChatOptions(kb=kbs or None, user=services.ui_chat_user(request))  # fair queue, per-user cap
        for name, value in zip(param_names, values, strict=True):
            setattr(options, _OPTION_OF[name], coerce(settings, name, value))
        try:
            for name in kbs:
                services.kb(who, name)  # ones this user may read (404 otherwise)
            if cid is None:
                cid = store.create(who.id, kbs=kbs)["id"]
            history = store.history(who.id, cid, before=replace)
            question = store.ask(who.id, cid, text, kbs, replace)
            services.chat_slots.acquire(options.user)  # shared with the API: both feed the same model
        except (KBError, Busy) as e:
            yield keep(str(e))
            return
        messages, ids = render(store.get(who.id, cid), lang)
        messages.append({"role": "assistant", "content": "…"})
        yield messages, cid, ids, "", gr.update(choices=conv_choices(request), value=cid)

        session = request.session_hash or "default"
        cancel = cancels.new(session)
        recorder = AnswerRecorder(store, services.model_name(), settings, cid, question["id"], kbs, options)
        footer = ""
        try:
            for event in services.chat.stream(text, history, options, cancel):
                recorder.see(event)
                if event.type == "sources":  # shown now, before the first token
                    footer = sources_html(recorder.sources, recorder.query, text, lang)
                if event.type in ("sources", "token"):
                    messages[-1] = {"role": "assistant", "content": as_text(recorder.text or "…") + footer}
                    yield messages, cid, ids, "", gr.skip()
                elif event.type == "queue":  # the model is busy: shown in the bubble until the first token
                    ahead = int(event.data["ahead"])
                    note = _QUEUED[lang][1 if ahead else 0].format(n=ahead)
                    messages[-1] = {"role": "assistant", "content": note + footer}
                    yield messages, cid, ids, "", gr.skip()
        except GeneratorExit:  # the browser went away mid-answer: stop the model too, not just the UI updates
            cancel.set()
            recorder.status = "stopped"
            recorder.save()
            raise
        except (KBError, _llm_error()) as e:  # user-facing: shown in the conversation, not as a traceback
            gr.Warning(str(e))
            recorder.status = "error"
        except Exception:
            log.exception("chat failed")
            gr.Warning(msg("internal_error", lang, kind="chat"))
            recorder.status = "error"
        finally:
            cancels.done(session, cancel)
            services.chat_slots.release(options.user)
        if cancel.is_set() and recorder.status == "done":
            recorder.status = "stopped"
        if not recorder.stored:
            recorder.save()
        messages, ids = render(store.get(who.id, cid), lang)
        yield messages, cid, ids, "", gr.skip()

    def last_question(request: gr.Request, cid: str | None) -> dict[str, Any] | None:
        if not cid:
            return None
        asked = [m for m in store.get(services.ui_user(request).id, cid)["messages"] if m["role"] == "user"]
        return asked[-1] if asked else None

    def regenerate_last(request: gr.Request, text: str, cid: str | None, messages: Messages | None,
                        mode_value: str, kb_names: list[str] | None, *values: Any) -> Iterator[tuple[Any, ...]]:
        last = last_question(request, cid)
        if last is None:
            gr.Warning(msg("nothing_to_regenerate", lang_of(request)))
            yield messages or [], cid, gr.skip(), text, gr.skip()
            return
        yield from ask(request, last["content"], cid, messages, mode_value, kb_names, last["id"], *values)

    def edit_last(request: gr.Request, text: str, cid: str | None, messages: Messages | None,
                  mode_value: str, kb_names: list[str] | None, *values: Any) -> Iterator[tuple[Any, ...]]:
        last = last_question(request, cid)
        replace = last["id"] if last is not None else None
        yield from ask(request, text, cid, messages, mode_value, kb_names, replace, *values)

    def edit_any(request: gr.Request, data: gr.EditData, cid: str | None, ids: list[str], messages: Messages | None,
                 mode_value: str, kb_names: list[str] | None, *values: Any) -> Iterator[tuple[Any, ...]]:
        """A question edited in place (the pencil on a user message): re-asked from there, later turns removed."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        text = data.value if isinstance(data.value, str) else str(data.value)
        replace = ids[index] if 0 <= index < len(ids) else None
        yield from ask(request, text, cid, messages, mode_value, kb_names, replace, *values)

    def send_new(request: gr.Request, text: str, cid: str | None, messages: Messages | None,
                 mode_value: str, kb_names: list[str] | None, *values: Any) -> Iterator[tuple[Any, ...]]:
        yield from ask(request, text, cid, messages, mode_value, kb_names, None, *values)

    @user_errors
    def rate(request: gr.Request, data: gr.LikeData, cid: str | None, ids: list[str], note: str
             ) -> tuple[Any, ...]:
        lang = lang_of(request)
        index = data.index if isinstance(data.index, int) else data.index[0]
        if not cid or not 0 <= index < len(ids) or data.liked not in (True, False):
            return gr.skip(), gr.skip(), gr.skip()
        store.rate(services.ui_user(request).id, ids[index], 1 if data.liked else -1, (note or "").strip())
        messages, _ = render(store.get(services.ui_user(request).id, cid), lang)
        return messages, ids[index], ""

    @user_errors
    def comment_on(request: gr.Request, cid: str | None, rated: str | None, note: str) -> tuple[Any, ...]:
        lang = lang_of(request)
        if not cid or not rated:
            raise KBError(msg("rate_first", lang))
        who = services.ui_user(request)
        current = next(m for m in store.get(who.id, cid)["messages"] if m["id"] == rated)
        store.rate(who.id, rated, current["feedback"]["rating"], (note or "").strip())
        return render(store.get(who.id, cid), lang)[0], ""

    @user_errors
    def rename_conv(request: gr.Request, cid: str | None, title: str) -> Any:
        if not cid:
            raise KBError(msg("conv_need", lang_of(request)))
        store.update(services.ui_user(request).id, cid, title=title)
        return gr.update(choices=conv_choices(request), value=cid)

    @user_errors
    def delete_conv(request: gr.Request, cid: str | None) -> tuple[Any, ...]:
        if not cid:
            raise KBError(msg("conv_need", lang_of(request)))
        store.delete(services.ui_user(request).id, cid)
        return [], None, [], gr.update(choices=conv_choices(request), value=None), ""

    @user_errors
    def open_conv(request: gr.Request, cid: str | None) -> tuple[Any, ...]:
        messages, cid, ids, choices = opened(request, cid)
        conv = store.get(services.ui_user(request).id, cid) if cid else None
        kbs = conv["knowledge_bases"] if conv else []
        mode_update = gr.update(value="kb" if kbs else "llm")
        return (messages, cid, ids, choices, conv["title"] if conv else "", mode_update,
                gr.update(value=kbs, visible=bool(kbs)) if conv else gr.skip())

    @user_errors
    def search_convs(request: gr.Request, text: str, cid: str | None) -> Any:
        return gr.update(choices=conv_choices(request, text), value=cid)

    @user_errors
    def on_load(request: gr.Request) -> Any:
        return gr.update(choices=conv_choices(request), value=None)

    def stop_generation(request: gr.Request) -> None:
        cancels.cancel(request.session_hash or "default")

    def new_conversation(request: gr.Request) -> tuple[Any, ...]:
        cancels.cancel(request.session_hash or "default")
        return [], None, [], gr.update(value=None), "", ""

    values_in = [mode, kb, *params.values()]
    inputs = [question, conv_id, chatbot, *values_in]
    outputs = [chatbot, conv_id, msg_ids, question, conv_list]
    send.click(send_new, inputs, outputs, concurrency_id="chat", api_name="chat")
    question.submit(send_new, inputs, outputs, concurrency_id="chat", api_name=False)
    regenerate.click(regenerate_last, inputs, outputs, concurrency_id="chat", api_name=False)
    edit.click(edit_last, inputs, outputs, concurrency_id="chat", api_name=False)
    # Not queued: Stop must get through while the generation occupies the chat worker.
    stop.click(stop_generation, None, None, queue=False)
    fresh = [chatbot, conv_id, msg_ids, conv_list, question, conv_title]
    clear.click(new_conversation, None, fresh, queue=False)
    new_conv.click(new_conversation, None, fresh, queue=False)
    chatbot.like(rate, [conv_id, msg_ids, comment], [chatbot, last_rated, comment])
    chatbot.edit(edit_any, [conv_id, msg_ids, chatbot, *values_in], outputs, concurrency_id="chat", api_name=False)
    send_comment.click(comment_on, [conv_id, last_rated, comment], [chatbot, comment])
    conv_list.input(open_conv, [conv_list], [chatbot, conv_id, msg_ids, conv_list, conv_title, mode, kb])
    conv_search.input(search_convs, [conv_search, conv_id], [conv_list])
    rename.click(rename_conv, [conv_id, conv_title], [conv_list])
    delete.click(delete_conv, [conv_id], [chatbot, conv_id, msg_ids, conv_list, conv_title])
    mode.change(lambda m: gr.update(visible=m == "kb"), mode, kb, queue=False)
    return ChatTab(kb=kb, mode=mode, no_kb=no_kb, conversations=conv_list, load=on_load, load_outputs=[conv_list])


def _llm_error() -> type[Exception]:
    """LLMError without importing the LLM stack at UI build time."""
    try:
        from llm.backends.base import LLMError
    except ImportError:  # pragma: no cover - the LLM layer is part of the app
        return KBError
    return LLMError


@user_errors
def refresh_kbs(services: Services, request: gr.Request, mode_value: str, current: list[str] | str | None
                ) -> tuple[Any, Any, Any]:
    """New KB choices for the chat tab (mode, KB dropdown, no-KB hint) of the KBs this user may read, keeping the
    ``current`` ones that still are; with none chosen, the first KB."""
    names = services.kb_names(services.ui_user(request))
    chosen = [current] if isinstance(current, str) else list(current or [])
    value = [n for n in chosen if n in names] or names[:1]
    if not names and mode_value == "kb":
        mode_value = "llm"
    return (gr.update(value=mode_value), gr.update(choices=names, value=value, visible=mode_value == "kb"),
            gr.update(visible=not names))
