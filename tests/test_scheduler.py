"""Many users at once: the fair turn queue (llm/scheduler.py), the per-user cap, and real concurrent generation.

The queue's ordering rules are unit-tested on the scheduler itself; everything about generation runs the real
SmolLM2-135M through the real llama.cpp backend (several slots), the real KB and the real HTTP API.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kb.types import Busy
from llm import prompts
from llm.backends import create_backend
from llm.backends.base import GenParams, LLMBackend, Message
from llm.chat import ChatEvent, ChatOptions, ChatService
from llm.scheduler import TurnScheduler
from services import Slots
from tests.conftest import LiveServer, make_settings
from tests.test_people import cli_user

LONG = "Write a long story about a cat who travels around the world."


class Worker:
    """Runs ``fn`` in a thread; ``result()`` re-raises whatever it raised, and fails instead of hanging."""

    def __init__(self, fn: Callable[[], Any]):
        self._fn = fn
        self._out: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._out["value"] = self._fn()
        except BaseException as e:  # handed to result()
            self._out["error"] = e

    def result(self, timeout: float = 900) -> Any:  # generous: the test machine is shared and often loaded
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"did not finish within {timeout}s"
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]


def wait_for(cond: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --- the scheduler's rules (no model needed) --------------------------------------------------------------
def test_free_slots_are_taken_at_once_and_the_rest_wait_fifo() -> None:
    s = TurnScheduler(2)
    a, b, c, d = (s.enqueue(u) for u in ("u1", "u2", "u3", "u4"))
    assert a.granted and b.granted and not c.granted and not d.granted
    assert (c.ahead(), d.ahead()) == (0, 1)
    assert list(a.wait()) == []  # a running ticket does not wait and yields no position
    a.release()
    assert c.granted and not d.granted and d.ahead() == 0
    a.release()  # idempotent: no slot is freed twice
    assert s.stats() == {"slots": 2, "running": 2, "waiting": 1}


def test_next_turn_goes_to_the_user_with_fewest_running_turns() -> None:
    s = TurnScheduler(2)
    a1, a2 = s.enqueue("alice"), s.enqueue("alice")  # alice takes both slots
    a3 = s.enqueue("alice")
    b1 = s.enqueue("bob")  # arrives after a3, but bob has nothing running
    assert (b1.ahead(), a3.ahead()) == (0, 1)
    a1.release()
    assert b1.granted and not a3.granted  # FIFO would have picked a3
    a2.release()
    assert a3.granted


def test_fifo_within_one_user() -> None:
    s = TurnScheduler(1)
    holder = s.enqueue("x")
    mine = [s.enqueue("alice") for _ in range(3)]
    assert [t.ahead() for t in mine] == [0, 1, 2]
    holder.release()
    assert [t.granted for t in mine] == [True, False, False]


def test_waiter_is_told_each_new_position_and_cancel_leaves_the_queue() -> None:
    s = TurnScheduler(1)
    holder = s.enqueue("h")
    first, second = s.enqueue("u1"), s.enqueue("u2")
    cancel = threading.Event()
    seen: list[int] = []

    def watch() -> bool:
        for ahead in second.wait(cancel):
            seen.append(ahead)
        return second.granted

    w = Worker(watch)
    wait_for(lambda: seen == [1])
    first.release()  # leaves while queued: second moves up
    wait_for(lambda: seen == [1, 0])
    holder.release()
    assert w.result(30) is True and second.granted

    third = s.enqueue("u3")
    cancel3 = threading.Event()
    w3 = Worker(lambda: (list(third.wait(cancel3)), third.granted))
    wait_for(lambda: s.stats()["waiting"] == 1)
    cancel3.set()
    assert w3.result(30) == ([0], False)
    assert s.stats() == {"slots": 1, "running": 1, "waiting": 0}  # the cancelled one is gone from the queue
    second.release()
    assert s.stats()["running"] == 0


def test_per_user_cap_is_separate_from_the_global_one() -> None:
    slots = Slots(3, "chats", "max_queued_chats", per_user=2)
    slots.acquire("alice")
    slots.acquire("alice")
    with pytest.raises(Busy, match="max_chats_per_user=2"):
        slots.acquire("alice")
    slots.acquire("bob")
    with pytest.raises(Busy, match="max_queued_chats=3"):
        slots.acquire(None)  # nobody in particular: only the global cap
    slots.release("alice")
    slots.acquire("alice")
    assert slots.in_use == 3


class Recorder:
    """A real backend that also notes when each call starts and ends (which question, condense or answer)."""

    def __init__(self, backend: LLMBackend):
        self.backend = backend
        self.slots = getattr(backend, "slots", 1)
        self.name = backend.name
        self.log: list[tuple[str, str, str]] = []  # (start|end, who, condense|answer)
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return self.backend.info()

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)  # type: ignore[attr-defined]

    def stream(self, messages: list[Message], params: GenParams,
               cancel: threading.Event | None = None) -> Iterator[str]:
        kind = "condense" if messages[0]["content"] in prompts.CONDENSE_SYSTEM.values() else "answer"
        who = "alice" if any("ALICE" in m["content"] for m in messages) else "bob"
        return self._gen(messages, params, cancel, who, kind)

    def _gen(self, messages: list[Message], params: GenParams, cancel: threading.Event | None, who: str,
             kind: str) -> Iterator[str]:
        with self._lock:
            self.log.append(("start", who, kind))
        try:
            yield from self.backend.stream(messages, params, cancel)
        finally:
            with self._lock:
                self.log.append(("end", who, kind))


@pytest.fixture(scope="module")
def smol4(tmp_path_factory: pytest.TempPathFactory) -> LLMBackend:
    s = make_settings(tmp_path_factory.mktemp("smol4"), llm_slots=4, n_ctx=1024)
    s.prepare_dirs()
    return create_backend(s)


def test_backend_runs_as_many_slots_as_set_each_with_its_own_window(smol4: LLMBackend) -> None:
    info = smol4.info()
    assert info["slots"] == 4 and info["n_ctx"] == 1024
    # A prompt over one slot's window fails although the server holds 4 x 1024 tokens in all.
    with pytest.raises(Exception, match="1024"):
        list(smol4.stream([{"role": "user", "content": "word " * 1500}], GenParams(max_tokens=8)))


def test_backend_runs_the_physical_batch_chosen_by_measurement(smol4: LLMBackend) -> None:
    # 128, not llama.cpp's 512: BENCHMARKS.md, "llm_ubatch, measured" (four users 11.3 against 9.1 tok/s).
    assert smol4.info()["n_ubatch"] == 128


# --- real generation through ChatService ----------------------------------------------------------------
def test_four_streams_with_four_slots_generate_at_the_same_time(tmp_path: Path, smol4: LLMBackend) -> None:
    settings = make_settings(tmp_path / "data", llm_slots=4)
    chat = ChatService(settings, None, smol4)
    spans: list[tuple[float, float, int] | None] = [None] * 4

    def user(i: int) -> None:
        times = [time.monotonic() for ev in chat.stream(f"({i}) {LONG}", [], ChatOptions(
            max_tokens=24, temperature=0.0, user=f"user{i}")) if ev.type == "token" and ev.data]
        spans[i] = (times[0], times[-1], len(times))

    workers = [Worker(lambda i=i: user(i)) for i in range(4)]
    for w in workers:
        w.result()
    assert all(s is not None and s[2] >= 12 for s in spans), spans
    # Overlap: every stream had its first token before any stream had its last one. One after another
    # (a single slot, or the old lock) the second stream starts only after the first has ended.
    assert max(s[0] for s in spans if s) < min(s[1] for s in spans if s), spans


def test_a_waiting_chat_gets_queue_events_then_its_answer(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", llm_slots=1)
    settings.prepare_dirs()
    chat = ChatService(settings, None, create_backend(settings))
    holder = chat.stream(LONG, [], ChatOptions(max_tokens=400, user="alice"))
    assert next(e for e in holder if e.type == "token")  # alice holds the only slot, mid-answer
    events: list[ChatEvent] = []
    w = Worker(lambda: events.extend(chat.stream("Say hello.", [], ChatOptions(max_tokens=8, user="bob"))))
    wait_for(lambda: len(events) >= 1)
    assert events[0].type == "queue" and events[0].data == {"ahead": 0}
    time.sleep(0.5)
    assert [e.type for e in events] == ["queue"]  # nothing generated for bob while alice holds the slot
    holder.close()  # alice's turn ends: bob's runs
    w.result()
    assert events[-1].type == "done" and events[-1].data["answer"].strip()
    assert not [e for e in events if e.type == "queue" and e is not events[0]]

    # Cancelled while queued: leaves the queue at once with an empty answer, the model never called.
    holder = chat.stream(LONG, [], ChatOptions(max_tokens=400, user="alice"))
    assert next(e for e in holder if e.type == "token")
    cancel = threading.Event()
    events.clear()
    w = Worker(lambda: events.extend(chat.stream("Say hello.", [], ChatOptions(max_tokens=8, user="bob"), cancel)))
    wait_for(lambda: len(events) >= 1)
    cancel.set()
    w.result(30)
    assert [e.type for e in events] == ["queue", "done"] and events[-1].data["answer"] == ""
    assert chat.turns is not None and chat.turns.stats()["waiting"] == 0
    holder.close()


def test_condense_and_answer_are_one_turn(tmp_path: Path) -> None:
    from kb.service import KnowledgeBaseManager

    settings = make_settings(tmp_path / "data", llm_slots=1, condense_question=True, score_threshold=0.0)
    settings.prepare_dirs()
    doc = tmp_path / "tides.md"
    doc.write_text("# Tides\n\nTides are caused by the gravity of the Moon and the Sun pulling on the oceans. "
                   "Spring tides happen at new and full moon.\n", encoding="utf-8")
    manager = KnowledgeBaseManager(settings)
    try:
        manager.create("sea").ingest([doc])
        backend = Recorder(create_backend(settings))
        chat = ChatService(settings, manager, backend)  # type: ignore[arg-type]
        history = [("What is the Moon?", "The Moon is the Earth's natural satellite.")]

        def ask(who: str) -> list[ChatEvent]:
            opts = ChatOptions(kb="sea", max_tokens=24, temperature=0.0, user=who)
            return list(chat.stream(f"{who.upper()} asks: what does it do to the oceans?", history, opts))

        alice = Worker(lambda: ask("alice"))
        wait_for(lambda: ("start", "alice", "condense") in backend.log)
        bob = Worker(lambda: ask("bob"))  # queued while alice condenses
        alice_events, bob_events = alice.result(), bob.result()
        assert bob_events[0].type == "queue"
        assert alice_events[-1].type == "done" and bob_events[-1].type == "done"
        # Alice's condense and answer run back to back: bob's calls come after both, none slips in between.
        assert backend.log == [(edge, who, kind) for who in ("alice", "bob") for kind in ("condense", "answer")
                               for edge in ("start", "end")], backend.log
    finally:
        manager.close()


# --- the per-user cap through the real HTTP API ----------------------------------------------------------
def test_a_user_over_the_cap_gets_429_while_others_chat(tmp_path: Path) -> None:
    data = tmp_path / "data"
    alice_key, bob_key = cli_user(data, "alice"), cli_user(data, "bob")  # accounts exist before start-up
    settings = make_settings(data, llm_slots=2, max_chats_per_user=1, max_tokens=400)
    with LiveServer(settings) as server:
        url = server.url + "/v1/chat/completions"

        def body(stream: bool, max_tokens: int) -> dict[str, Any]:
            return {"model": server.services.model_name(), "stream": stream, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": LONG}]}

        with httpx.Client(timeout=120) as client:
            with client.stream("POST", url, json=body(True, 400),
                               headers={"Authorization": f"Bearer {alice_key}"}) as first:
                assert first.status_code == 200
                lines = first.iter_lines()
                assert next(line for line in lines if line.startswith("data: ") and
                            json.loads(line[6:])["choices"][0]["delta"].get("content"))
                # Alice's answer is streaming: a second chat of hers is refused at once...
                r = client.post(url, json=body(False, 8), headers={"Authorization": f"Bearer {alice_key}"})
                assert r.status_code == 429, r.text
                assert "max_chats_per_user=1" in r.json()["error"]["message"]
                assert r.headers["retry-after"]
                # ...while bob, another user, gets his answer meanwhile (a second slot).
                r = client.post(url, json=body(False, 8), headers={"Authorization": f"Bearer {bob_key}"})
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"].strip()
            # Alice's stream is closed: once its generation has stopped, her next chat is accepted again.
            wait_for(lambda: server.services.chat_slots.in_use == 0)
            r = client.post(url, json=body(False, 8), headers={"Authorization": f"Bearer {alice_key}"})
            assert r.status_code == 200, r.text


# --- the queue position in the web UI --------------------------------------------------------------------
def test_the_chat_tab_shows_the_queue_position_until_the_answer(tmp_path: Path, browser: object) -> None:
    from playwright.sync_api import expect

    from tests.test_ui import ask, last_bot, open_page

    settings = make_settings(tmp_path / "data", llm_slots=1, max_tokens=16)
    with LiveServer(settings) as server:
        # Someone else's long answer holds the only slot.
        holder = server.services.chat.stream(LONG, [], ChatOptions(max_tokens=400, user="someone-else"))
        try:
            assert next(e for e in holder if e.type == "token")
            page = open_page(browser, server.url, "en-US")
            ask(page, "Say hello.")
            # Under heavy load the click was lost twice (CI of stop 19; here beside a 14-minute eval): the page kept
            # the question in its box and never showed it. Not understood yet (closing note of session 9):
            # send again while the page has not taken it, as a user would, at most twice more.
            for _ in range(2):
                page.wait_for_timeout(20_000)
                if page.locator("#chatbot [data-testid=user]").count() or not page.locator(
                        "#chat-input textarea").input_value():
                    break
                page.locator("#chat-send").click()
            expect(last_bot(page)).to_contain_text("you are next", timeout=120_000)
        finally:
            holder.close()  # the slot is free: the waiting question gets its answer
        expect(last_bot(page)).not_to_contain_text("you are next", timeout=300_000)
        expect(last_bot(page)).not_to_have_text("…", timeout=300_000)
