"""Interface text in English and Chinese.

Static labels go through ``gr.I18n`` (translated in the browser from its language). Text produced by handlers
(status lines, table headers, warnings) is chosen on the server from the request's ``Accept-Language``, because
Gradio's I18n only translates static frontend strings, not values sent back by event handlers.
"""

from __future__ import annotations

from typing import Literal

import gradio as gr
from gradio.i18n import I18nData

Lang = Literal["en", "zh"]

# key: (English, Chinese). Every string the UI shows has a key here.
TEXT: dict[str, tuple[str, str]] = {
    "title": ("Knowledge-base chat", "知识库问答"),
    "login_help": ("Log in with the server's UI account, or any user name and an API key as the password.",
                   "请使用服务器的界面账号登录，或任意用户名加 API 密钥作为密码。"),
    "chat_no_kb": ("No knowledge base yet: create one in the **Knowledge bases** tab and upload files, then ask "
                   "about them here.", "还没有知识库：请在**知识库管理**页创建知识库并上传文件，然后在这里提问。"),
    "chat_too_long": ("The message is too long: at most {limit} characters.", "消息过长：最多 {limit} 个字符。"),
    "subtitle": ("Offline chat with your documents. Model: ", "离线文档问答。模型："),
    # --- chat tab
    "tab_chat": ("Chat", "对话"),
    "chat_mode": ("Mode", "模式"),
    "mode_llm": ("LLM chat", "LLM 对话"),
    "mode_kb": ("Knowledge base Q&A", "知识库问答"),
    "chat_kb": ("Knowledge base", "知识库"),
    "chatbot": ("Conversation", "对话"),
    "question": ("Your question", "输入问题"),
    "question_ph": ("Ask something… (Enter to send)", "请输入问题…（回车发送）"),
    "send": ("Send", "发送"),
    "stop": ("Stop", "停止"),
    "clear": ("Clear", "清空"),
    "params": ("Parameters", "参数"),
    "params_llm": ("Generation", "生成参数"),
    "params_retrieval": ("Retrieval", "检索参数"),
    "sources": ("Sources", "出处"),
    "source_open": ("open", "打开"),
    "tab_account": ("Account", "账户"),
    "acct_signed_in": ("Signed in as **{name}** ({role}).", "当前用户：**{name}**（{role}）。"),
    "acct_keys": ("Your API keys", "我的 API 密钥"),
    "acct_key_label": ("Label for a new key", "新密钥的备注"),
    "acct_key_create": ("Create key", "创建密钥"),
    "acct_new_key": ("New key (shown only now: copy it)", "新密钥（只显示这一次，请复制保存）"),
    "acct_key_pick": ("Key to revoke", "要撤销的密钥"),
    "acct_key_revoke": ("Revoke", "撤销"),
    "acct_key_need": ("Choose a key first.", "请先选择密钥。"),
    "acct_key_created": ("Key created: copy it now, it is not shown again.", "密钥已创建：请现在复制，之后不再显示。"),
    "acct_key_revoked": ("Key {prefix}… revoked: it stops working at once.", "密钥 {prefix}… 已撤销，立即失效。"),
    "acct_users": ("Users (admins)", "用户管理（管理员）"),
    "acct_user_name": ("Name", "用户名"),
    "acct_user_role": ("Role", "角色"),
    "acct_user_password": ("Password (optional, 8+ characters)", "密码（可选，至少 8 位）"),
    "acct_user_add": ("Add user", "添加用户"),
    "acct_user_added": ("User '{name}' added; their first API key is in the box above.",
                        "已添加用户“{name}”，其第一个 API 密钥显示在上方。"),
    "col_question": ("question", "问题"),
    "col_answer": ("answer", "回答"),
    "col_comment": ("comment", "说明"),
    "col_user": ("user", "用户"),
    "kb_visibility": ("Who may read it", "谁可以查看"),
    "kb_shared_with": ("Shared with (user names, comma-separated; with 'shared')",
                       "共享给（用户名，逗号分隔；选择 shared 时）"),
    "kb_feedback_box": ("Answers rated 👎", "被评为 👎 的回答"),
    "rated": ("rated", "已评价"),
    "conversations": ("Conversations", "会话"),
    "conv_new": ("New conversation", "新建会话"),
    "conv_search": ("Search titles…", "搜索标题…"),
    "conv_manage": ("Rename / delete", "重命名 / 删除"),
    "conv_title": ("Title", "标题"),
    "conv_rename": ("Rename", "重命名"),
    "conv_delete": ("Delete", "删除"),
    "conv_need": ("Open a conversation first.", "请先打开一个会话。"),
    "regenerate": ("Regenerate last answer", "重新生成最后的回答"),
    "edit_reask": ("Replace last question with the text above", "用输入框的内容替换最后的问题并重问"),
    "nothing_to_regenerate": ("Nothing to regenerate yet.", "还没有可以重新生成的回答。"),
    "feedback_comment_ph": ("Optional comment on your 👍/👎 rating…", "可选：对 👍/👎 评价的说明…"),
    "feedback_comment": ("Save comment", "保存说明"),
    "rate_first": ("Rate an answer with 👍 or 👎 first.", "请先用 👍 或 👎 评价一个回答。"),
    "query_rewritten": ("Retrieval query", "检索问题"),
    "stopped": ("(stopped)", "（已停止）"),
    "no_kb_chosen": ("Choose a knowledge base first, or switch to LLM chat.",
                     "请先选择知识库，或切换到 LLM 对话模式。"),
    "empty_question": ("Type a question first.", "请先输入问题。"),
    # --- knowledge-base tab
    "tab_kb": ("Knowledge bases", "知识库管理"),
    "kb_select": ("Knowledge base", "知识库"),
    "kb_refresh": ("Refresh", "刷新"),
    "kb_info": ("Details", "详情"),
    "kb_none": ("No knowledge base yet: create one below.", "还没有知识库：请在下方新建。"),
    "kb_create_box": ("New knowledge base", "新建知识库"),
    "kb_name": ("Name", "名称"),
    "kb_name_ph": ("letters (any language), digits, - _ . or spaces", "任意语言文字、数字、- _ . 或空格"),
    "kb_mode": ("Search mode", "检索模式"),
    "kb_create": ("Create", "新建"),
    "kb_created": ("Knowledge base '{name}' created.", "已新建知识库“{name}”。"),
    "kb_delete": ("Delete this knowledge base", "删除此知识库"),
    "kb_delete_confirm": ("Yes, delete it and all its files", "确认删除（含全部文件）"),
    "kb_delete_cancel": ("Cancel", "取消"),
    "kb_delete_ask": ("Delete knowledge base '{name}' and all its files? This cannot be undone.",
                      "确定删除知识库“{name}”及其全部文件吗？此操作不可撤销。"),
    "kb_deleted": ("Knowledge base '{name}' deleted.", "已删除知识库“{name}”。"),
    "kb_set_mode": ("Save settings", "保存设置"),
    "kb_mode_set": ("Settings of '{name}' saved (search mode {mode}).",
                    "知识库“{name}”的设置已保存（检索模式 {mode}）。"),
    "kb_prompt": ("Prompt for this knowledge base", "本知识库的提示词"),
    "kb_prompt_info": ("Added to the answer instructions (tone, audience, format); it cannot lift the rule to "
                       "answer only from the documents.",
                       "附加到回答要求之后（语气、对象、格式等），不能取消“只依据文档回答”的规则。"),
    "kb_need": ("Choose or create a knowledge base first.", "请先选择或新建知识库。"),
    "upload_box": ("Add files", "添加文件"),
    "upload_files": ("Files (PDF, Word, Markdown, text, spreadsheets, slides, images…)",
                     "文件（PDF、Word、Markdown、文本、表格、幻灯片、图片…）"),
    "upload_btn": ("Upload and index", "上传并建立索引"),
    "upload_none": ("Choose files to upload first.", "请先选择要上传的文件。"),
    "upload_results": ("Upload results", "上传结果"),
    "chunking": ("Chunking of this KB (recorded with it; a change applies when you rebuild)",
                 "本知识库的分段设置（随知识库保存；修改后重建索引生效）"),
    "replace": ("Replace files that have the same name (otherwise both are kept, the new one numbered)",
                "替换同名文件（否则两者都保留，新文件加编号）"),
    "jobs_box": ("Jobs (uploads and rebuilds, queued per knowledge base)", "任务（上传与重建，按知识库排队）"),
    "jobs_refresh": ("Refresh jobs", "刷新任务"),
    "job_select": ("Job", "任务"),
    "job_cancel": ("Cancel job", "取消任务"),
    "job_need": ("Choose a job first.", "请先选择一个任务。"),
    "job_cancelled": ("Job {id}: {status}.", "任务 {id}：{status}。"),
    "col_id": ("id", "编号"),
    "col_kind": ("kind", "类型"),
    "col_progress": ("progress", "进度"),
    "col_embedded": ("chunks embedded", "已嵌入分段"),
    "col_message": ("message", "信息"),
    "files_box": ("Files", "文件"),
    "files_table": ("Files in this knowledge base", "知识库中的文件"),
    "file_select": ("File", "文件"),
    "file_delete": ("Delete file", "删除文件"),
    "file_deleted": ("File '{name}' deleted.", "已删除文件“{name}”。"),
    "file_need": ("Choose a file first.", "请先选择文件。"),
    "rebuild": ("Rebuild index", "重建索引"),
    "rebuilt": ("Index of '{name}' rebuilt: {n} file(s).", "知识库“{name}”索引已重建：{n} 个文件。"),
    "search_box": ("Retrieval test", "检索测试"),
    "search_query": ("Query", "查询"),
    "search_btn": ("Search", "检索"),
    "search_hits": ("Hits", "命中结果"),
    "search_none": ("No chunk passed the score threshold.", "没有分段达到相似度阈值。"),
    "status": ("Status", "状态"),
    "working": ("Working…", "处理中…"),
    # --- table headers (server side)
    "col_file": ("file", "文件"),
    "col_result": ("result", "结果"),
    "col_ocr": ("OCR pages", "OCR 页"),
    "col_name": ("name", "名称"),
    "col_status": ("status", "状态"),
    "col_chunks": ("chunks", "分段数"),
    "col_pages": ("pages", "页数"),
    "col_error": ("error", "错误"),
    "col_score": ("score", "相似度"),
    "col_page": ("page", "页码"),
    "col_heading": ("heading", "标题"),
    "col_text": ("text", "内容"),
    "internal_error": ("Internal error ({kind}); see the server log.", "内部错误（{kind}），请查看服务器日志。"),
    # --- settings rendered from configs.settings (label, info); unknown fields fall back to the declaration
    "set_top_k": ("Top k", "返回分段数 top k"),
    "set_top_k_info": ("Chunks given to the model", "提供给模型的分段数量"),
    "set_score_threshold": ("Score threshold (score 0-1, higher = more similar; chunks below are dropped)",
                            "相似度阈值（相似度 0-1，越高越相似；低于阈值的分段被丢弃）"),
    "set_score_threshold_info": ("0 keeps every chunk", "0 表示保留所有分段"),
    "set_search_mode": ("Search mode", "检索模式"),
    "set_search_mode_info": ("dense (embeddings), keyword (BM25) or hybrid",
                             "dense（向量）、keyword（关键词）或 hybrid（混合）"),
    "set_condense_question": ("Rewrite follow-up questions", "改写追问"),
    "set_condense_question_info": ("Turn a follow-up into a standalone question before retrieval",
                                   "检索前把追问改写成完整的问题"),
    "set_allow_general_knowledge": ("Allow general knowledge", "允许通用知识"),
    "set_allow_general_knowledge_info": ("When no chunk passes the threshold, answer from the model's own knowledge "
                                         "(labelled)", "没有分段达到阈值时，用模型自身知识回答（会注明）"),
    "set_temperature": ("Temperature", "温度 temperature"),
    "set_temperature_info": ("Higher = more varied answers", "越高回答越多样"),
    "set_top_p": ("Top p", "Top p"),
    "set_top_p_info": ("Nucleus sampling", "核采样"),
    "set_max_tokens": ("Max new tokens", "最大生成长度"),
    "set_max_tokens_info": ("Longest answer in tokens", "回答的最大 token 数"),
    "set_history_turns": ("History turns", "历史轮数"),
    "set_history_turns_info": ("Previous turns kept in the prompt", "提示中保留的历史对话轮数"),
    "set_chunk_size": ("Chunk size", "分段长度"),
    "set_chunk_size_info": ("Max characters per chunk", "每个分段的最大字符数"),
    "set_chunk_overlap": ("Chunk overlap", "分段重叠"),
    "set_chunk_overlap_info": ("Characters shared by neighbouring chunks", "相邻分段共享的字符数"),
}

# Frontend keys are prefixed: Gradio's own translations use plain names such as "chatbot" and "file" (objects),
# and a clash would hide ours.
PREFIX = "kbchat_"
_EN = {PREFIX + k: v[0] for k, v in TEXT.items()}
_ZH = {PREFIX + k: v[1] for k, v in TEXT.items()}
# Registered under both the bare and the regional tags so "zh-CN", "zh-TW" and plain "zh" browsers all match.
I18N = gr.I18n(en=_EN, zh=_ZH, **{"zh-CN": _ZH, "zh-TW": _ZH, "zh-HK": _ZH})


def t(key: str) -> I18nData:
    """A static label, translated in the browser."""
    if key not in TEXT:
        raise KeyError(f"no UI text for '{key}'")
    return I18N(PREFIX + key)


def has(key: str) -> bool:
    return key in TEXT


def msg(key: str, lang: Lang, **fmt: object) -> str:
    """A server-side message in the request's language."""
    en, zh = TEXT[key]
    text = zh if lang == "zh" else en
    return text.format(**fmt) if fmt else text


def lang_of(request: gr.Request | None) -> Lang:
    """The first supported language of the browser's Accept-Language header (English by default)."""
    header = ""
    if request is not None and request.headers is not None:
        header = request.headers.get("accept-language", "") or ""
    for part in header.split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "en"
