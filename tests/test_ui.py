"""The web UI in a real browser (headless Debian chromium) against the real server, models and files."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import playwright.sync_api as playwright_api
import pytest

from tests.conftest import DOCUMENTS, LiveServer, make_settings

expect = playwright_api.expect

pytestmark = pytest.mark.slow
Page = playwright_api.Page

ZH_MD = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__大模型技术栈-实战与应用.md"
PDF_NAME = "星河公司介绍.pdf"
FACT = "星河公司的总部位于杭州市西湖区，成立于2015年。"
KB = "星河资料"
LLM_WAIT_MS = 240_000  # first question loads (and may assemble) the 1.5B model on 2 shared cores


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp("ui") / "d", llm_model="qwen2.5-coder-1.5b", max_tokens=64)
    with LiveServer(settings) as srv:
        yield srv


def open_page(browser: object, url: str, locale: str, dialogs: list[str] | None = None,
              wait_for: str = "#chatbot") -> Page:
    ctx = browser.new_context(locale=locale, viewport={"width": 1280, "height": 1000})  # type: ignore[attr-defined]
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    if dialogs is not None:
        def on_dialog(d: object) -> None:
            dialogs.append(d.message)  # type: ignore[attr-defined]
            d.dismiss()  # type: ignore[attr-defined]
        page.on("dialog", on_dialog)
    page.goto(url)
    page.wait_for_selector(wait_for)
    return page


def make_pdf(path: Path) -> Path:
    import pymupdf

    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "第一页：今天天气晴朗，适合户外运动。\n这里介绍登山路线和装备。",
                               fontname="china-s", fontsize=12)
    doc.new_page().insert_text((72, 72), FACT, fontname="china-s", fontsize=12)
    doc.save(path)
    return path


def pick(page: Page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def last_bot(page: Page) -> object:
    return page.locator("#chatbot [data-testid=bot]").last


def ask(page: Page, question: str) -> None:
    page.locator("#chat-input textarea").fill(question)
    page.locator("#chat-send").click()


def wait_idle(page: Page, bots: int, timeout_s: float = LLM_WAIT_MS / 1000) -> str:
    """Wait until there are ``bots`` bot messages and the last one stopped changing (the stream ended)."""
    deadline = time.time() + timeout_s
    last, stable_since = None, time.time()
    while time.time() < deadline:
        msgs = page.locator("#chatbot [data-testid=bot]")
        text = msgs.last.text_content() if msgs.count() >= bots else None
        if text != last:
            last, stable_since = text, time.time()
        elif text and text.strip() not in ("", "…") and time.time() - stable_since > 3:
            return text
        time.sleep(0.25)
    raise AssertionError(f"chat did not finish; last text: {last!r}")


def wait_stored(server: LiveServer, answers: int, user: str = "admin", timeout_s: float = LLM_WAIT_MS / 1000) -> None:
    """Wait until the user's newest conversation holds ``answers`` answers: the stream ended and was saved (the
    sources show before the first token, so a steady bubble does not mean the answer is done)."""
    store, users = server.services.conversations, server.services.users
    who = users.get(user).id
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        convs = store.list(who)
        if convs and sum(m["role"] == "assistant" for m in store.get(who, convs[0]["id"])["messages"]) >= answers:
            return
        time.sleep(0.5)
    raise AssertionError(f"{answers} answers were not stored within {timeout_s:.0f}s")


def test_interface_language_follows_browser(server: LiveServer, browser: object) -> None:
    page = open_page(browser, server.url, "zh-CN")
    expect(page.get_by_role("tab", name="知识库管理")).to_be_visible()
    expect(page.locator("#chat-send")).to_have_text("发送")
    expect(page.locator("#app-title")).to_contain_text("知识库问答")
    page.context.close()

    page = open_page(browser, server.url, "en-US")
    expect(page.get_by_role("tab", name="Knowledge bases")).to_be_visible()
    expect(page.locator("#chat-send")).to_have_text("Send")
    page.get_by_role("tab", name="Knowledge bases").click()
    # A label rendered from the Settings declaration, with the score's meaning spelled out.
    expect(page.locator("#setting-score_threshold")).to_contain_text("higher = more similar")
    page.context.close()


def test_opening_the_page_joins_no_queue_so_the_first_question_cannot_race_it(browser: object, tmp_path: Path) -> None:
    # Gradio's client closes its queue stream when the last queued event ends; a question sent in that instant was
    # lost once in CI (the page never showed it). Page-load reads therefore run unqueued: the first queued call of a
    # page is the user's own.
    with LiveServer(make_settings(tmp_path / "data", max_tokens=8)) as server:
        ctx = browser.new_context(locale="en-US")  # type: ignore[attr-defined]
        page = ctx.new_page()
        joins: list[str] = []
        page.on("request", lambda r: joins.append(r.url) if "/queue/join" in r.url else None)
        page.goto(server.url)
        page.wait_for_selector("#chatbot")
        expect(page.locator("#chat-no-kb")).to_be_visible()  # refresh_chat, one of the page-load reads, has answered
        page.wait_for_timeout(2000)  # and the other page-load reads, which start together with it
        assert joins == [], joins
        ask(page, "Say hello.")
        expect(page.locator("#chatbot [data-testid=user]").last).to_contain_text("Say hello.", timeout=60_000)
        assert len(joins) == 1, joins
        ctx.close()


def test_kb_upload_search_and_streamed_chat(server: LiveServer, browser: object, tmp_path: Path) -> None:
    dialogs: list[str] = []
    page = open_page(browser, server.url, "zh-CN", dialogs)

    # --- create a KB, upload two good files and two bad ones in one go
    page.get_by_role("tab", name="知识库管理").click()
    page.locator("#kb-new-name textarea").fill(KB)
    page.locator("#kb-create").click()
    expect(page.locator("#kb-status")).to_contain_text(KB, timeout=180_000)  # first embedder load
    expect(page.locator("#kb-info")).to_contain_text(KB)

    pdf = make_pdf(tmp_path / PDF_NAME)
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"\x00\x01 this is not a pdf " * 20)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    page.locator("#kb-upload input[type=file]").set_input_files([str(pdf), str(ZH_MD), str(junk), str(empty)])
    # All four files listed in the upload box: the browser finished sending them.
    expect(page.locator("#kb-upload").get_by_role("row", name=re.compile("Remove"))).to_have_count(4)
    # gr.Progress fed by ingest's callback shows "<i>/<n> <file>"; a fast upload may show it only for a
    # moment, so record every progress text the tab ever shows instead of polling for it.
    page.evaluate("""() => {
        window.__progress = [];
        const tab = document.querySelector('#tab-kb');
        new MutationObserver(() => {
            const m = tab.innerText.match(/\\d+\\/4 [^\\n]*/g);
            if (m) window.__progress.push(...m);
        }).observe(tab, {subtree: true, childList: true, characterData: true});
    }""")
    page.locator("#kb-upload-btn").click()
    results = page.locator("#kb-results")
    expect(results).to_contain_text("indexed with", timeout=180_000)
    seen = page.evaluate("window.__progress")
    assert any(re.search(r"1/4 ", t) for t in seen), seen
    text = results.text_content() or ""
    assert re.search(re.escape(PDF_NAME) + r"\s*indexed with \d+ chunks", text), text
    assert re.search(re.escape(ZH_MD.name) + r"\s*indexed with \d+ chunks", text), text
    assert re.search(r"junk\.pdf\s*failed: \S", text), text  # a reason, not just "failed"
    assert re.search(r"empty\.txt\s*failed: \S", text), text
    files = page.locator("#kb-files")
    expect(files).to_contain_text(PDF_NAME)
    expect(files).to_contain_text("junk.pdf")
    pick(page, "#kb-file-pick", "junk.pdf")
    page.locator("#kb-file-delete").click()
    expect(page.locator("#kb-status")).to_contain_text("junk.pdf")
    expect(files).not_to_contain_text("junk.pdf")
    expect(files).to_contain_text(PDF_NAME)
    page.locator("#kb-rebuild").click()
    expect(page.locator("#kb-status")).to_contain_text("重建", timeout=180_000)
    expect(results).not_to_contain_text("failed")  # rebuild re-indexes the indexed files only
    expect(results).to_contain_text(PDF_NAME)

    # --- retrieval test: hits with scores
    page.locator("#kb-search-query textarea").fill("星河公司的总部在哪里")
    page.locator("#kb-search-btn").click()
    hits = page.locator("#kb-hits")
    expect(hits).to_contain_text(PDF_NAME, timeout=60_000)
    expect(hits).to_contain_text("杭州市西湖区")
    scores = [float(s) for s in re.findall(r"\b[01]\.\d{3}\b", hits.text_content() or "")]
    assert scores and all(0.0 <= s <= 1.0 for s in scores), hits.text_content()
    page.screenshot(path=str(tmp_path / "kb_tab.png"), full_page=True)

    # --- chat over the KB: streamed answer, sources with file and page
    page.get_by_role("tab", name="对话").click()
    page.locator("#chat-mode").get_by_text("知识库问答").click()
    expect(page.locator("#chat-kb")).to_contain_text(KB)  # the KB just filled is the chat's (one of several)
    # Record every length the answer takes while it streams (the DOM updates per token batch).
    page.evaluate("""() => {
        window.__lens = [];
        new MutationObserver(() => {
            const bots = document.querySelectorAll('#chatbot [data-testid=bot]');
            if (bots.length) window.__lens.push(bots[bots.length - 1].textContent.length);
        }).observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
    }""")
    ask(page, "星河公司的总部在哪里？")
    expect(last_bot(page)).to_contain_text("p.2", timeout=LLM_WAIT_MS)  # sources show before the first token
    wait_stored(server, 1)
    answer = wait_idle(page, 1)
    assert PDF_NAME in answer and "相似度" in answer, answer
    assert answer.split("出处")[0].strip(" …-"), f"empty answer: {answer!r}"
    lens = page.evaluate("window.__lens")
    assert len({n for n in lens if n > 1}) >= 3, f"the reply did not stream: {lens}"
    page.screenshot(path=str(tmp_path / "chat_tab.png"), full_page=True)

    # --- untrusted text is shown as text, never run as HTML
    payload = "<img src=x onerror=alert(1)>"
    ask(page, payload)
    wait_stored(server, 2)
    wait_idle(page, 2)
    expect(page.locator("#chatbot [data-testid=user]").last).to_contain_text(payload)
    assert page.locator("#chatbot img[src=x]").count() == 0
    assert dialogs == [], dialogs

    # --- Stop ends a long generation early (max tokens raised through the parameter accordion)
    page.locator("#chat-params").get_by_text("参数").first.click()
    max_tokens = page.locator("#setting-max_tokens input[type=number]")
    max_tokens.fill("600")
    max_tokens.press("Enter")
    page.locator("#chat-mode").get_by_text("LLM 对话").click()
    # A coder model reliably writes long code (a prose request may get a one-line refusal).
    ask(page, "用 Python 写一个完整的学生成绩管理系统：增删改查、保存到 JSON 文件、命令行菜单。写出全部代码。")
    expect(page.locator("#chatbot [data-testid=bot]")).to_have_count(3)
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot [data-testid=bot]');"
        " return b.length === 3 && b[2].textContent.trim().length > 10; }", timeout=LLM_WAIT_MS)
    page.locator("#chat-stop").click()
    wait_stored(server, 3)
    expect(last_bot(page)).to_contain_text("已停止", timeout=30_000)
    stopped = wait_idle(page, 3)
    assert len(stopped) < 1200, "the generation was not cut short"
    page.screenshot(path=str(tmp_path / "chat_stopped.png"), full_page=True)

    # --- Clear empties the conversation
    page.locator("#chat-clear").click()
    expect(page.locator("#chatbot [data-testid=user]")).to_have_count(0)
    page.context.close()


def test_delete_kb_asks_for_confirmation(server: LiveServer, browser: object) -> None:
    page = open_page(browser, server.url, "en-US")
    page.get_by_role("tab", name="Knowledge bases").click()
    page.locator("#kb-new-name textarea").fill("scratch")
    page.locator("#kb-create").click()
    expect(page.locator("#kb-status")).to_contain_text("'scratch' created", timeout=180_000)
    page.locator("#kb-delete").click()
    expect(page.locator("#kb-delete-ask")).to_contain_text("'scratch'")
    expect(page.locator("#kb-delete-ask")).to_contain_text("cannot be undone")
    page.locator("#kb-delete-no").click()
    expect(page.locator("#kb-delete-yes")).to_be_hidden()
    assert "scratch" in server.services.kbs.names()  # cancel kept it

    pick(page, "#kb-select", "scratch")
    page.locator("#kb-delete").click()
    page.locator("#kb-delete-yes").click()
    expect(page.locator("#kb-status")).to_contain_text("'scratch' deleted")
    assert "scratch" not in server.services.kbs.names()
    # A user-facing KBError (duplicate name) is shown as a message, never a traceback.
    server.services.kbs.create("dup")
    page.locator("#kb-new-name textarea").fill("dup")
    page.locator("#kb-create").click()
    expect(page.get_by_text("already exists").first).to_be_visible(timeout=30_000)
    assert "Traceback" not in (page.content())
    page.context.close()


def test_kb_prompt_and_search_mode_are_saved_from_the_kb_tab(server: LiveServer, browser: object) -> None:
    server.services.kbs.create("tone", exist_ok=True)
    page = open_page(browser, server.url, "en-US")
    page.get_by_role("tab", name="Knowledge bases").click()
    pick(page, "#kb-select", "tone")
    pick(page, "#kb-mode", "keyword")
    page.locator("#kb-prompt textarea").fill("Answer in one short paragraph.")
    server.services.users.add("erin")  # an account without a password or key: the server stays open
    pick(page, "#kb-visibility", "shared")
    page.locator("#kb-shared-with textarea").fill("erin")
    page.locator("#kb-set-mode").click()
    expect(page.locator("#kb-status")).to_contain_text("Settings of 'tone' saved", timeout=30_000)
    tone = server.services.kbs.get("tone")
    info = tone.info()
    assert (info["prompt"], info["search_mode"]) == ("Answer in one short paragraph.", "keyword")
    sharing = server.services.users.sharing(tone)
    assert (sharing["visibility"], sharing["shared_with"]) == ("shared", ["erin"])
    page.reload()  # what the page shows comes from the stored KB
    page.get_by_role("tab", name="Knowledge bases").click()
    pick(page, "#kb-select", "tone")
    expect(page.locator("#kb-prompt textarea")).to_have_value("Answer in one short paragraph.")
    page.context.close()


def test_an_admin_adds_a_user_in_the_account_tab(server: LiveServer, browser: object) -> None:
    page = open_page(browser, server.url, "en-US")
    page.get_by_role("tab", name="Account").click()
    expect(page.locator("#acct-me")).to_contain_text("admin")  # an open install acts as the built-in admin
    page.locator("#acct-users-box").get_by_text("Users (admins)").click()
    page.locator("#acct-user-name textarea").fill("frank")
    page.locator("#acct-user-add").click()
    expect(page.locator("#acct-status")).to_contain_text("User 'frank' added", timeout=30_000)
    expect(page.locator("#acct-users")).to_contain_text("frank")
    key = page.locator("#acct-new-key textarea").input_value()
    who = server.services.users.by_key(key)
    assert who is not None and (who.name, who.role) == ("frank", "member")
    page.context.close()


def test_jobs_are_listed_and_cancelled_from_the_kb_tab(server: LiveServer, browser: object, tmp_path: Path) -> None:
    kbs = server.services.kbs
    kb = kbs.create("jobs-ui")
    doc = tmp_path / "waiting.md"
    doc.write_text("# Waiting\n\nThis file waits in the queue.\n", encoding="utf-8")
    server.services.jobs.stop()  # no worker: the job stays queued until someone acts on it
    try:
        job = kb.submit_ingest([doc])
        page = open_page(browser, server.url, "en-US")
        page.get_by_role("tab", name="Knowledge bases").click()
        pick(page, "#kb-select", "jobs-ui")
        page.get_by_text("Jobs (uploads and rebuilds").click()
        page.locator("#kb-jobs-refresh").click()
        table = page.locator("#kb-jobs")
        expect(table).to_contain_text(job["id"], timeout=30_000)
        expect(table).to_contain_text("queued")
        pick(page, "#kb-job-pick", job["id"])
        page.locator("#kb-job-cancel").click()
        expect(page.locator("#kb-status")).to_contain_text(f"Job {job['id']}: cancelled", timeout=30_000)
        expect(table).to_contain_text("cancelled")
        assert server.services.jobs.get(job["id"])["status"] == "cancelled"
        assert kb.info()["files"] == 0
        page.context.close()
    finally:
        server.services.jobs.start_workers(server.services.settings.max_jobs)


def test_newcomer_path_first_kb_becomes_the_chat_default(browser: object, tmp_path: Path) -> None:
    """With no KB the chat says how to make one; after the first KB is created and filled in the KB tab, the
    chat tab is on that KB (not in the plain-LLM mode it chose at page load); the upload draws one progress bar."""
    with LiveServer(make_settings(tmp_path / "d")) as srv:
        page = open_page(browser, srv.url, "en-US")
        expect(page.locator("#chat-no-kb")).to_contain_text("No knowledge base yet")
        expect(page.locator("#chat-kb")).to_be_hidden()
        page.get_by_role("tab", name="Knowledge bases").click()
        page.locator("#kb-new-name textarea").fill("first")
        page.locator("#kb-create").click()
        expect(page.locator("#kb-status")).to_contain_text("'first' created", timeout=180_000)
        # The most progress indicators visible at once in the tab while the upload runs.
        page.evaluate("""() => {
            window.__bars = 0;
            // One status tracker (Gradio's .wrap) per component showing progress, however it draws it.
            const count = () => new Set([...document.querySelectorAll(
                '#tab-kb .progress-level, #tab-kb .eta-bar, #tab-kb .progress-bar')].map(e => e.closest('.wrap'))).size;
            new MutationObserver(() => { window.__bars = Math.max(window.__bars, count()); })
                .observe(document.querySelector('#tab-kb'), {subtree: true, childList: true, attributes: true});
        }""")
        page.locator("#kb-upload input[type=file]").set_input_files([str(make_pdf(tmp_path / PDF_NAME))])
        expect(page.locator("#kb-upload")).to_contain_text(PDF_NAME)  # the browser finished sending it
        page.locator("#kb-upload-btn").click()
        expect(page.locator("#kb-results")).to_contain_text("indexed with", timeout=180_000)
        bars = page.evaluate("window.__bars")
        assert bars == 1, f"{bars} progress indicators at once"
        page.get_by_role("tab", name="Chat").click()
        expect(page.locator("#chat-mode input[value=kb]")).to_be_checked()
        expect(page.locator("#chat-kb")).to_contain_text("first")
        expect(page.locator("#chat-no-kb")).to_be_hidden()
        page.context.close()


ACCOUNT, ACCOUNT_PASSWORD = "dana", "dana-pass-2026"
ZH_PDF = DOCUMENTS / "md_kb_zh" / "Langchain-Chatchat__langchain.pdf"


def login(page: Page, user: str, password: str) -> None:
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    expect(page.locator("#chat-send")).to_be_visible(timeout=60_000)


def test_conversations_persist_with_sources_ratings_and_citation_previews(browser: object, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", max_tokens=24)
    from services import Services

    setup = Services(settings)
    dana = setup.users.add(ACCOUNT, "member", ACCOUNT_PASSWORD)
    kb = setup.kbs.create("manual", owner_id=dana.id, visibility="private")
    kb.ingest([ZH_PDF])
    setup.close()
    with LiveServer(settings) as server:
        page = open_page(browser, server.url, "en-US", wait_for="input[type=password]")
        login(page, ACCOUNT, ACCOUNT_PASSWORD)
        expect(page.locator("#chat-kb")).to_contain_text("manual")  # her KB is the chat's KB
        ask(page, "What is LangChain?")
        wait_stored(server, 1, ACCOUNT)
        wait_idle(page, 1)
        expect(last_bot(page).locator(".sources details")).not_to_have_count(0)
        ask(page, "What are agents in LangChain?")
        wait_stored(server, 2, ACCOUNT)
        wait_idle(page, 2)
        # Rate the first answer.
        page.locator("#chatbot [data-testid=bot]").first.hover()
        page.locator("#chatbot").get_by_role("button", name="Like", exact=True).first.click()
        expect(page.locator("#chatbot [data-testid=bot]").first).to_contain_text("rated", timeout=30_000)

        # A 👎 with a comment (typed first) on the second answer: her KB tab lists it for her to fix the documents.
        page.locator("#chat-feedback-comment textarea").fill("agents are not explained")
        page.locator("#chatbot [data-testid=bot]").nth(1).hover()
        page.locator("#chatbot").get_by_role("button", name="Dislike", exact=True).nth(1).click()
        expect(page.locator("#chatbot [data-testid=bot]").nth(1)).to_contain_text("agents are not explained",
                                                                                  timeout=30_000)
        page.get_by_role("tab", name="Knowledge bases").click()
        page.locator("#kb-refresh").click()
        page.locator("#kb-feedback-box").get_by_text("Answers rated").click()
        expect(page.locator("#kb-feedback")).to_contain_text("What are agents in LangChain?", timeout=30_000)
        expect(page.locator("#kb-feedback")).to_contain_text("agents are not explained")
        page.get_by_role("tab", name="Chat").click()

        page.reload()  # everything comes back from the database
        expect(page.locator("#conv-list")).to_contain_text("What is LangChain?", timeout=60_000)
        page.locator("#conv-list").get_by_text("What is LangChain?").click()
        bots = page.locator("#chatbot [data-testid=bot]")
        expect(bots).to_have_count(2, timeout=30_000)
        expect(bots.first).to_contain_text("rated")
        for i in range(2):
            expect(bots.nth(i).locator(".sources details")).not_to_have_count(0)

        # [1] opens the cited page of the PDF, rendered with the chunk highlighted.
        source = server.services.conversations.list(dana.id)[0]
        conv = server.services.conversations.get(dana.id, source["id"])
        first = conv["messages"][1]["sources"][0]
        with page.expect_popup() as popup:
            bots.first.locator("a.cite").first.click()
        preview = popup.value
        expect(preview.locator("#preview-title")).to_contain_text(f"{ZH_PDF.name} · p.{first['page']}")
        expect(preview.locator("#preview-page")).to_be_visible()
        # The page image (rendered in a child process) loads with the session's cookie.
        preview.wait_for_function("() => document.getElementById('preview-page').naturalWidth > 100",
                                  timeout=60_000)

        # Her own API keys: made in the Account tab (shown once), revoked there, dead at once.
        import httpx

        page.get_by_role("tab", name="Account").click()
        expect(page.locator("#acct-me")).to_contain_text(ACCOUNT)
        expect(page.locator("#acct-users-box")).to_be_hidden()  # a member manages no users
        page.locator("#acct-key-label textarea").fill("laptop")
        page.locator("#acct-key-create").click()
        expect(page.locator("#acct-new-key textarea")).to_have_value(re.compile(r"^kbc_"), timeout=30_000)
        key = page.locator("#acct-new-key textarea").input_value()
        bearer = {"Authorization": f"Bearer {key}"}
        assert httpx.get(server.url + "/api/me", headers=bearer).json()["name"] == ACCOUNT
        key_id = next(k["id"] for k in server.services.users.keys(dana) if key.startswith(k["prefix"]))
        pick(page, "#acct-key-pick", str(key_id))
        page.locator("#acct-key-revoke").click()
        expect(page.locator("#acct-status")).to_contain_text("revoked", timeout=30_000)
        assert httpx.get(server.url + "/api/me", headers=bearer).status_code == 401
        page.context.close()

        # The page and the file are the account's: without its session they do not open.
        r = httpx.get(server.url + f"/ui/preview/manual/{first['file_id']}?chunk={first['chunk_id']}")
        assert r.status_code == 401
