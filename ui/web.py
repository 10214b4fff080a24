"""The Gradio web UI: ``build_ui(services)`` returns the Blocks that ``api.server`` mounts at "/".

Mount it with the options from ``mount_options(services)``::

    gr.mount_gradio_app(app, build_ui(services), path="/", **mount_options(services))

(``i18n`` is also attached to the Blocks, so a mount that forgets it still gets the translations; the theme and
CSS are not, because ``mount_gradio_app`` always overwrites them.)
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from api.security import AccessPolicy
from services import Services
from ui.account_tab import build_account_tab
from ui.chat_tab import build_chat_tab, refresh_kbs
from ui.i18n import I18N, TEXT, t
from ui.kb_tab import build_kb_tab

# Built-in theme with local/system fonts only: the app must work without internet (no Google Fonts).
THEME = gr.themes.Soft(
    primary_hue="blue",
    font=["system-ui", "Noto Sans CJK SC", "sans-serif"],
    font_mono=["ui-monospace", "Noto Sans Mono CJK SC", "monospace"],
)
CSS = """
#chatbot .message blockquote { font-size: 0.9em; opacity: 0.85; }
"""


def build_ui(services: Services) -> gr.Blocks:
    with gr.Blocks(title="KB Chat", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("## " + t("title"), elem_id="app-title")
        gr.Markdown(t("subtitle") + f"`{services.model_name()}`", elem_id="app-subtitle")
        with gr.Tabs():
            with gr.Tab(t("tab_chat"), id="chat", elem_id="tab-chat") as chat_page:
                chat = build_chat_tab(services)
            with gr.Tab(t("tab_kb"), id="kb", elem_id="tab-kb"):
                kb = build_kb_tab(services)
            with gr.Tab(t("tab_account"), id="account", elem_id="tab-account"):
                account_load, account_outputs = build_account_tab(services)

        def refresh_chat(request: gr.Request, mode_value: str, current: str | None) -> tuple[Any, ...]:
            return refresh_kbs(services, request, mode_value, current)

        def switch_chat(request: gr.Request, touched: str | None) -> tuple[Any, ...]:
            return refresh_kbs(services, request, "kb", touched)

        chat_io = ([chat.mode, chat.kb], chat.refresh_outputs())
        # Keep the chat tab's KB list in step with the KB tab: after create/delete/upload and on every visit.
        for event in kb.changed:
            event.then(refresh_chat, *chat_io, queue=False)
        # A KB just created or filled becomes the chat's KB: the next question is about those documents.
        for event in kb.filled:
            event.then(switch_chat, [kb.kb], chat.refresh_outputs(), queue=False)
        chat_page.select(refresh_chat, *chat_io, queue=False)
        # Page-load events are not queued: they are quick reads, and Gradio's client closes its queue stream
        # when the last queued event ends, so a question sent in that instant could be lost (seen once in CI:
        # the page never showed the question it had sent). Only what the user starts joins the queue.
        if kb.load is not None:
            demo.load(kb.load, [kb.kb], kb.load_outputs, queue=False)
        demo.load(chat.load, None, chat.load_outputs, queue=False)
        demo.load(account_load, None, account_outputs, queue=False)
        demo.load(refresh_chat, *chat_io, queue=False)
    # A bounded queue: when it is full Gradio refuses new events, and queued users see their position.
    demo.queue(max_size=services.settings.max_queued_chats)
    demo.i18n_instance = I18N
    return demo


def mount_options(services: Services) -> dict[str, Any]:
    """Keyword arguments for ``gr.mount_gradio_app`` (and, minus the mount-only ones, ``Blocks.launch``)."""
    s = services.settings
    opts: dict[str, Any] = {
        "i18n": I18N,
        "theme": THEME,
        "css": CSS,
        "max_file_size": f"{s.max_upload_mb}mb",
        "footer_links": ["settings"],  # Gradio's settings panel also lets a user switch the language by hand
        "show_error": True,
    }
    policy = AccessPolicy.from_settings(s, services.users)
    if policy.enabled:  # the UI's login form checks the same credentials as the rest of the app
        opts["auth"] = policy.ui_login
        opts["auth_message"] = " / ".join(TEXT["login_help"])  # plain text: the login page is not translated
    opts["run_history"] = False  # it could connect to an outside bucket; we keep nothing in the browser
    return opts


def launch(services: Services, **kwargs: Any) -> gr.Blocks:
    """Serve the UI alone (development / tests without the HTTP API)."""
    demo = build_ui(services)
    opts = {"server_name": services.settings.host, "server_port": services.settings.port}
    demo.launch(**(opts | mount_options(services) | kwargs))
    return demo
