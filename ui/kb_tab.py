"""Knowledge-base tab: create / delete KBs, upload files with progress, list and delete files, rebuild,
and a retrieval test. Every action is one call into ``services.kbs``; this module only formats results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from configs.settings import Settings
from kb.service import MAX_PROMPT_CHARS, MODES, KnowledgeBase
from kb.types import FileResult, Hit, KBError
from kb.users import VISIBILITY
from services import Services
from ui.common import as_text, user_errors
from ui.i18n import Lang, lang_of, msg, t
from ui.settings_form import coerce, field_component, render_group


def _table(columns: list[str], rows: list[list[Any]], lang: Lang) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[msg(f"col_{c}", lang) for c in columns])


def results_table(results: list[FileResult], lang: Lang) -> pd.DataFrame:
    rows = [[r.name, r.message().removeprefix(f"{r.name}: "), ", ".join(map(str, r.ocr_pages))] for r in results]
    return _table(["file", "result", "ocr"], rows, lang)


def files_table(files: list[dict[str, Any]], lang: Lang) -> pd.DataFrame:
    rows = [[f.get("name", ""), f.get("status", ""), f.get("chunks", 0), f.get("pages") or "",
             f.get("error") or ""] for f in files]
    return _table(["name", "status", "chunks", "pages", "error"], rows, lang)


def jobs_table(jobs: list[dict[str, Any]], lang: Lang) -> pd.DataFrame:
    rows = [[j["id"], j["kind"], j["status"], f"{j['progress']:.0%}", j["chunks_embedded"],
             j["error"] or j["message"]] for j in jobs]
    return _table(["id", "kind", "status", "progress", "embedded", "message"], rows, lang)


def hits_table(hits: list[Hit], lang: Lang) -> pd.DataFrame:
    rows = [[f"{h.score:.3f}", h.file, h.page or "", h.heading or "", " ".join(h.text.split())] for h in hits]
    return _table(["score", "file", "page", "heading", "text"], rows, lang)


def info_markdown(kb: KnowledgeBase | None, lang: Lang) -> str:
    if kb is None:
        return msg("kb_none", lang)
    i = kb.info()
    if lang == "zh":
        return (f"**{i['name']}** · {i['files']} 个文件 · {i['chunks']} 个分段 · 失败 {i['failed']} · "
                f"检索模式 {i['search_mode']} · 嵌入模型 {i['embedding_model']}"
                + (" · **重建中**" if i["rebuilding"] else ""))
    return (f"**{i['name']}** · {i['files']} files · {i['chunks']} chunks · {i['failed']} failed · "
            f"search mode {i['search_mode']} · embedding {i['embedding_model']}"
            + (" · **rebuilding**" if i["rebuilding"] else ""))


@dataclass
class KBTab:
    kb: gr.Dropdown
    # Events after which the KB list may have changed; the chat tab chains its dropdown refresh on them.
    changed: list[Any] = field(default_factory=list)
    # Events that created or filled the selected KB: the chat switches to it (the newcomer's next question).
    filled: list[Any] = field(default_factory=list)
    load: Callable[..., Any] | None = None
    load_outputs: list[Any] = field(default_factory=list)


def build_kb_tab(services: Services) -> KBTab:
    settings = services.settings
    kbs = services.kbs
    retrieval_fields = Settings.ui_fields("retrieval")

    with gr.Row(equal_height=True):
        # allow_custom_value: KBs created after start-up are valid for API clients too (handlers check names).
        kb = gr.Dropdown(choices=[], value=None, label=t("kb_select"), elem_id="kb-select", scale=4,
                         allow_custom_value=True)
        refresh = gr.Button(t("kb_refresh"), elem_id="kb-refresh", scale=1, min_width=80)
    info = gr.Markdown(elem_id="kb-info")
    with gr.Row(equal_height=True):
        mode = gr.Dropdown(choices=list(MODES), value=settings.search_mode, label=t("kb_mode"),
                           elem_id="kb-mode", scale=2)
        set_mode = gr.Button(t("kb_set_mode"), elem_id="kb-set-mode", scale=1)
        delete = gr.Button(t("kb_delete"), variant="stop", elem_id="kb-delete", scale=1)
    kb_prompt = gr.Textbox(label=t("kb_prompt"), info=t("kb_prompt_info"), lines=2, max_length=MAX_PROMPT_CHARS,
                           elem_id="kb-prompt")
    with gr.Row(equal_height=True):
        visibility = gr.Dropdown(choices=list(VISIBILITY), value="private", label=t("kb_visibility"),
                                 elem_id="kb-visibility", scale=1)
        shared_with = gr.Textbox(label=t("kb_shared_with"), elem_id="kb-shared-with", scale=3, max_length=2000)
    with gr.Group(visible=False, elem_id="kb-delete-confirm") as confirm_box:
        confirm_text = gr.Markdown(elem_id="kb-delete-ask")
        with gr.Row():
            confirm = gr.Button(t("kb_delete_confirm"), variant="stop", elem_id="kb-delete-yes")
            cancel = gr.Button(t("kb_delete_cancel"), elem_id="kb-delete-no")

    with gr.Accordion(t("kb_create_box"), open=True, elem_id="kb-create-box"):
        with gr.Row(equal_height=True):
            new_name = gr.Textbox(label=t("kb_name"), placeholder=t("kb_name_ph"), elem_id="kb-new-name", scale=3)
            new_mode = gr.Dropdown(choices=list(MODES), value=settings.search_mode, label=t("kb_mode"),
                                   elem_id="kb-new-mode", scale=2)
            create = gr.Button(t("kb_create"), variant="primary", elem_id="kb-create", scale=1)

    with gr.Accordion(t("upload_box"), open=True, elem_id="kb-upload-box"):
        files_in = gr.File(label=t("upload_files"), file_count="multiple", elem_id="kb-upload", height=140)
        replace = gr.Checkbox(value=False, label=t("replace"), elem_id="kb-replace")
        with gr.Accordion(t("chunking"), open=False):
            chunking = render_group(settings, "kb")
        upload = gr.Button(t("upload_btn"), variant="primary", elem_id="kb-upload-btn")
        results = gr.Dataframe(label=t("upload_results"), elem_id="kb-results", interactive=False, wrap=True)

    with gr.Accordion(t("files_box"), open=True, elem_id="kb-files-box"):
        files = gr.Dataframe(label=t("files_table"), elem_id="kb-files", interactive=False, wrap=True)
        with gr.Row(equal_height=True):
            file_pick = gr.Dropdown(choices=[], label=t("file_select"), elem_id="kb-file-pick", scale=4)
            delete_file = gr.Button(t("file_delete"), variant="stop", elem_id="kb-file-delete", scale=1)
            rebuild = gr.Button(t("rebuild"), elem_id="kb-rebuild", scale=1)

    with gr.Accordion(t("jobs_box"), open=False, elem_id="kb-jobs-box"):
        jobs = gr.Dataframe(elem_id="kb-jobs", interactive=False, wrap=True)
        with gr.Row(equal_height=True):
            job_pick = gr.Dropdown(choices=[], label=t("job_select"), elem_id="kb-job-pick", scale=4)
            jobs_refresh = gr.Button(t("jobs_refresh"), elem_id="kb-jobs-refresh", scale=1)
            job_cancel = gr.Button(t("job_cancel"), variant="stop", elem_id="kb-job-cancel", scale=1)

    with gr.Accordion(t("kb_feedback_box"), open=False, elem_id="kb-feedback-box"):
        feedback = gr.Dataframe(elem_id="kb-feedback", interactive=False, wrap=True)

    with gr.Accordion(t("search_box"), open=True, elem_id="kb-search-box"):
        with gr.Row(equal_height=True):
            query = gr.Textbox(label=t("search_query"), elem_id="kb-search-query", scale=4)
            search = gr.Button(t("search_btn"), variant="primary", elem_id="kb-search-btn", scale=1)
        with gr.Row():
            s_top_k = field_component("top_k", retrieval_fields["top_k"], settings.top_k)
            s_threshold = field_component("score_threshold", retrieval_fields["score_threshold"],
                                          settings.score_threshold)
            s_mode = field_component("search_mode", retrieval_fields["search_mode"], settings.search_mode)
        hits = gr.Dataframe(label=t("search_hits"), elem_id="kb-hits", interactive=False, wrap=True)
    status = gr.Markdown(elem_id="kb-status")

    # --- handlers: thin wrappers around services.kbs -------------------------------------------------------
    def need(request: gr.Request, name: str | None, lang: Lang, write: bool = False) -> KnowledgeBase:
        """The KB as this user may use it (a KB they may not read does not exist for them)."""
        if not name:
            raise gr.Error(msg("kb_need", lang), print_exception=False)
        return services.kb(services.ui_user(request), name, write)

    def views(request: gr.Request, name: str | None, lang: Lang) -> tuple[Any, ...]:
        """KB dropdown, details, mode, file table, file picker and the KB's chunking for ``name`` (or the first)."""
        names = services.kb_names(services.ui_user(request))
        name = name if name in names else (names[0] if names else None)
        current = kbs.get(name) if name else None
        file_recs = current.files() if current else []
        kb_info = current.info() if current else {}
        sharing = services.users.sharing(current) if current else {}
        return (
            gr.update(choices=names, value=name),
            info_markdown(current, lang),
            gr.update(value=current.search_mode if current else settings.search_mode),
            kb_info.get("prompt", ""),
            sharing.get("visibility", "private"),
            ", ".join(sharing.get("shared_with", [])),
            files_table(file_recs, lang),
            gr.update(choices=[f["name"] for f in file_recs], value=None),
            feedback_table(request, current, lang),
            *(gr.update(value=kb_info.get(k, getattr(settings, k))) for k in chunking),
        )

    def feedback_table(request: gr.Request, current: KnowledgeBase | None, lang: Lang) -> pd.DataFrame:
        """Questions whose answers from this KB were rated down: shown to those who maintain the KB (its owner
        and admins), who can fix the documents; other readers do not see other people's questions."""
        rows: list[list[Any]] = []
        if current is not None and services.users.can_write(services.ui_user(request), current.row()):
            for f in services.conversations.feedback(kb=current.name, rating=-1):
                rows.append([f["question"], " ".join(f["answer"].split())[:300], f["comment"], f["user"]])
        return _table(["question", "answer", "comment", "user"], rows, lang)

    def job_views(request: gr.Request, name: str | None, lang: Lang) -> tuple[Any, Any]:
        recent = services.jobs.list(need(request, name, lang).id, 20) if name and kbs.exists(name) else []
        return jobs_table(recent, lang), gr.update(choices=[j["id"] for j in recent], value=None)

    view_outputs = [kb, info, mode, kb_prompt, visibility, shared_with, files, file_pick, feedback,
                    *chunking.values()]

    @user_errors
    def show(request: gr.Request, name: str | None) -> tuple[Any, ...]:
        return views(request, name, lang_of(request))

    @user_errors
    def on_load(request: gr.Request, name: str | None) -> tuple[Any, ...]:
        lang = lang_of(request)
        return (*views(request, name, lang), results_table([], lang), hits_table([], lang),
                *job_views(request, name, lang))

    @user_errors
    def show_jobs(request: gr.Request, name: str | None) -> tuple[Any, Any]:
        return job_views(request, name, lang_of(request))

    @user_errors
    def cancel_job(request: gr.Request, name: str | None, job_id: str | None) -> tuple[Any, ...]:
        lang = lang_of(request)
        if not job_id:
            raise gr.Error(msg("job_need", lang), print_exception=False)
        job = services.jobs.get(job_id)
        if job is None or job["kb"] != name:
            raise KBError(msg("job_need", lang))
        need(request, name, lang, write=True)
        job = services.jobs.cancel(job_id)
        status = "cancel requested" if job["status"] == "running" else job["status"]
        return (*job_views(request, name, lang), msg("job_cancelled", lang, id=job_id, status=status))

    @user_errors
    def create_kb(request: gr.Request, name: str, search_mode: str, *chunk_values: Any) -> tuple[Any, ...]:
        lang = lang_of(request)
        created = kbs.create((name or "").strip(), search_mode=search_mode, owner_id=services.ui_user(request).id,
                             visibility="private", **chunk_settings(chunk_values))
        return (*views(request, created.name, lang), msg("kb_created", lang, name=created.name), "")

    @user_errors
    def ask_delete(request: gr.Request, name: str | None) -> tuple[Any, Any]:
        lang = lang_of(request)
        current = need(request, name, lang, write=True)
        return gr.update(visible=True), msg("kb_delete_ask", lang, name=current.name)

    @user_errors
    def delete_kb(request: gr.Request, name: str | None) -> tuple[Any, ...]:
        lang = lang_of(request)
        kbs.delete(need(request, name, lang, write=True).name)
        return (*views(request, None, lang), gr.update(visible=False), msg("kb_deleted", lang, name=name))

    @user_errors
    def save_kb_settings(request: gr.Request, name: str | None, search_mode: str, prompt: str | None,
                         seen_by: str, names: str | None) -> tuple[str, str]:
        lang = lang_of(request)
        current = need(request, name, lang, write=True)
        users = [n.strip() for n in (names or "").replace("，", ",").split(",") if n.strip()]
        services.users.share(services.ui_user(request), current, seen_by, users)
        current.update(search_mode=search_mode, prompt=(prompt or "").strip() or None)
        return info_markdown(current, lang), msg("kb_mode_set", lang, name=current.name, mode=search_mode)

    def chunk_settings(values: tuple[Any, ...]) -> dict[str, Any]:
        # Chunking belongs to a KB: set at creation, changed by a rebuild, never process-wide.
        return {name: coerce(settings, name, value) for name, value in zip(chunking, values, strict=True)}

    @user_errors
    def upload_files(request: gr.Request, name: str | None, paths: list[str] | None, replace_same: bool,
                     progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 - Gradio's API
        lang = lang_of(request)
        current = need(request, name, lang, write=True)
        if not paths:
            raise gr.Error(msg("upload_none", lang), print_exception=False)
        # Gradio keeps the browser's file name as the temp file's name; it becomes the file's name in the KB.
        uploaded = [Path(p) for p in paths]
        progress(0.0, desc=msg("working", lang))
        out = current.ingest(uploaded, [p.name for p in uploaded], progress=lambda f, m: progress(f, desc=m),
                             replace=bool(replace_same))
        failed = sum(r.status == "failed" for r in out)
        return (results_table(out, lang), None, *views(request, current.name, lang),
                f"{len(out) - failed}/{len(out)} ✓" + (f" · {failed} ✗" if failed else ""))

    @user_errors
    def remove_file(request: gr.Request, name: str | None, file_name: str | None) -> tuple[Any, ...]:
        lang = lang_of(request)
        current = need(request, name, lang, write=True)
        if not file_name:
            raise gr.Error(msg("file_need", lang), print_exception=False)
        current.delete_file(file_name)
        return (*views(request, current.name, lang), msg("file_deleted", lang, name=as_text(file_name)))

    @user_errors
    def rebuild_kb(request: gr.Request, name: str | None, *chunk_values: Any,
                   progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 - Gradio's API
        lang = lang_of(request)
        current = need(request, name, lang, write=True)
        progress(0.0, desc=msg("working", lang))
        out = current.rebuild(progress=lambda f, m: progress(f, desc=m), **chunk_settings(chunk_values))
        return (results_table(out, lang), *views(request, current.name, lang),
                msg("rebuilt", lang, name=current.name, n=len(out)))

    @user_errors
    def run_search(request: gr.Request, name: str | None, text: str, top_k: Any, threshold: Any,
                   search_mode: str) -> tuple[Any, str]:
        lang = lang_of(request)
        current = need(request, name, lang)
        if not (text or "").strip():
            raise KBError(msg("empty_question", lang))
        found = current.search(text, top_k=coerce(settings, "top_k", top_k),
                               threshold=coerce(settings, "score_threshold", threshold), mode=search_mode)
        return hits_table(found, lang), "" if found else msg("search_none", lang)

    chunk_inputs = list(chunking.values())
    created = create.click(create_kb, [new_name, new_mode, *chunk_inputs], [*view_outputs, status, new_name],
                           api_name="create_kb")
    refresh.click(show, [kb], view_outputs)
    kb.input(show, [kb], view_outputs).then(show_jobs, [kb], [jobs, job_pick])
    jobs_refresh.click(show_jobs, [kb], [jobs, job_pick])
    job_cancel.click(cancel_job, [kb, job_pick], [jobs, job_pick, status], api_name="cancel_job")
    delete.click(ask_delete, [kb], [confirm_box, confirm_text])
    cancel.click(lambda: gr.update(visible=False), None, confirm_box, queue=False)
    deleted = confirm.click(delete_kb, [kb], [*view_outputs, confirm_box, status], api_name="delete_kb")
    set_mode.click(save_kb_settings, [kb, mode, kb_prompt, visibility, shared_with], [info, status])
    # Progress is drawn once, on the results, not on every output of the event.
    # Writes run as jobs, queued per KB in the database: the UI adds no lock of its own, so uploads to different
    # KBs run side by side and a second upload to a busy KB waits its turn (listed under Jobs).
    writes: dict[str, Any] = {"concurrency_limit": None}
    uploaded = upload.click(upload_files, [kb, files_in, replace], [results, files_in, *view_outputs, status],
                            show_progress_on=[results], **writes)
    delete_file.click(remove_file, [kb, file_pick], [*view_outputs, status], api_name="delete_file", **writes)
    rebuild.click(rebuild_kb, [kb, *chunk_inputs], [results, *view_outputs, status], api_name="rebuild_kb",
                  show_progress_on=[results], **writes)
    search.click(run_search, [kb, query, s_top_k, s_threshold, s_mode], [hits, status], api_name="search_kb")
    query.submit(run_search, [kb, query, s_top_k, s_threshold, s_mode], [hits, status], api_name=False)

    return KBTab(kb=kb, changed=[deleted], filled=[created, uploaded], load=on_load,
                 load_outputs=[*view_outputs, results, hits, jobs, job_pick])
