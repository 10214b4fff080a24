"""Account tab: who you are, your API keys (create: shown once; revoke), and for admins the user accounts."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from kb.types import KBError
from kb.users import KBForbidden
from services import Services
from ui.common import user_errors
from ui.i18n import lang_of, msg, t


def build_account_tab(services: Services) -> tuple[Any, list[Any]]:
    """The tab's components; returns (load function, its outputs) for the page's load event."""
    users = services.users
    me = gr.Markdown(elem_id="acct-me")
    with gr.Accordion(t("acct_keys"), open=True):
        keys = gr.Dataframe(elem_id="acct-keys", interactive=False, wrap=True)
        with gr.Row(equal_height=True):
            label = gr.Textbox(label=t("acct_key_label"), elem_id="acct-key-label", max_length=100, scale=3)
            create = gr.Button(t("acct_key_create"), variant="primary", elem_id="acct-key-create", scale=1)
        new_key = gr.Textbox(label=t("acct_new_key"), elem_id="acct-new-key", interactive=False,
                             buttons=["copy"])
        with gr.Row(equal_height=True):
            pick = gr.Dropdown(choices=[], label=t("acct_key_pick"), elem_id="acct-key-pick", scale=3)
            revoke = gr.Button(t("acct_key_revoke"), variant="stop", elem_id="acct-key-revoke", scale=1)
    with gr.Accordion(t("acct_users"), open=False, visible=False, elem_id="acct-users-box") as users_box:
        people = gr.Dataframe(elem_id="acct-users", interactive=False)
        with gr.Row(equal_height=True):
            new_name = gr.Textbox(label=t("acct_user_name"), elem_id="acct-user-name", max_length=64)
            new_role = gr.Dropdown(choices=["member", "admin"], value="member", label=t("acct_user_role"),
                                   elem_id="acct-user-role")
            new_password = gr.Textbox(label=t("acct_user_password"), type="password", elem_id="acct-user-password")
            add = gr.Button(t("acct_user_add"), elem_id="acct-user-add")
    status = gr.Markdown(elem_id="acct-status")

    def key_views(request: gr.Request) -> tuple[Any, Any]:
        rows = [[k["id"], k["prefix"] + "…", k["label"], "revoked" if k["revoked"] else "active"]
                for k in users.keys(services.ui_user(request))]
        return (pd.DataFrame(rows, columns=["id", "key", "label", "status"]),
                gr.update(choices=[r[0] for r in rows if r[3] == "active"], value=None))

    def user_views(request: gr.Request) -> tuple[Any, Any]:
        who = services.ui_user(request)
        if not who.is_admin:
            return gr.update(visible=False), pd.DataFrame()
        rows = [[u["name"], u["role"], "yes" if u["has_password"] else "no"] for u in users.list()]
        return gr.update(visible=True), pd.DataFrame(rows, columns=["name", "role", "password"])

    @user_errors
    def on_load(request: gr.Request) -> tuple[Any, ...]:
        who = services.ui_user(request)
        return (msg("acct_signed_in", lang_of(request), name=who.name, role=who.role), *key_views(request),
                *user_views(request))

    @user_errors
    def create_key(request: gr.Request, text: str) -> tuple[Any, ...]:
        key, _ = users.issue_key(services.ui_user(request), (text or "").strip())
        return (key, *key_views(request), msg("acct_key_created", lang_of(request)))

    @user_errors
    def revoke_key(request: gr.Request, key_id: Any) -> tuple[Any, ...]:
        if key_id in (None, ""):
            raise KBError(msg("acct_key_need", lang_of(request)))
        info = users.revoke_key(services.ui_user(request), int(key_id))
        return (*key_views(request), msg("acct_key_revoked", lang_of(request), prefix=info["prefix"]))

    @user_errors
    def add_user(request: gr.Request, name: str, role: str, password: str) -> tuple[Any, ...]:
        if not services.ui_user(request).is_admin:
            raise KBForbidden("only an admin may manage users")
        user = users.add((name or "").strip(), role, password or None)
        key, _ = users.issue_key(user, "first key")
        return (*user_views(request), key, "", "", msg("acct_user_added", lang_of(request), name=user.name))

    create.click(create_key, [label], [new_key, keys, pick, status])
    revoke.click(revoke_key, [pick], [keys, pick, status])
    add.click(add_user, [new_name, new_role, new_password], [users_box, people, new_key, new_name, new_password,
                                                             status])
    return on_load, [me, keys, pick, users_box, people]
