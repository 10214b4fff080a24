"""Conversations, their messages and feedback, in the app database.

Every read and write names the user it acts for: a conversation that is not theirs does not exist for them
(``KBNotFound``, 404), so one user can never learn another's conversation ids. Chat itself is not here: the
caller runs ``ChatService`` with ``history()`` and records the result with ``add_answer()``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update

from kb.db import ConversationRow, Database, FeedbackRow, MessageRow, UserRow
from kb.types import KBConflict, KBError, KBNotFound

MAX_TITLE_CHARS = 200
MAX_COMMENT_CHARS = 4000
TITLE_FROM_QUESTION = 40  # a new conversation's title: the start of its first question
# A question without an answer for this long was abandoned (its generation died with its process): the
# conversation takes a new question. Longer than any generation the max_tokens cap allows on a CPU.
PENDING_SECONDS = 600


def _title(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= TITLE_FROM_QUESTION else one_line[: TITLE_FROM_QUESTION - 1] + "…"


def _message(m: MessageRow, feedback: FeedbackRow | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": m.id, "role": m.role, "content": m.content, "created_at": m.created_at}
    if m.role == "assistant":
        out |= {"query": m.query, "sources": list(m.sources or []), "meta": dict(m.meta or {}),
                "feedback": None if feedback is None else
                {"rating": feedback.rating, "comment": feedback.comment, "created_at": feedback.created_at}}
    return out


def _conversation(c: ConversationRow) -> dict[str, Any]:
    return {"id": c.id, "title": c.title, "knowledge_bases": list(c.kbs or []), "created_at": c.created_at,
            "updated_at": c.updated_at}


class Conversations:
    def __init__(self, db: Database):
        self.db = db

    # --- conversations ---------------------------------------------------------------------------------------
    def create(self, user: int, title: str = "", kbs: Sequence[str] = ()) -> dict[str, Any]:
        row = ConversationRow(owner_id=user, title=_check_title(title), kbs=list(kbs))
        with self.db.session() as s:
            s.add(row)
            s.flush()
            return _conversation(row)

    def list(self, user: int, search: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The user's conversations, most recently active first; ``search`` matches titles (any case)."""
        q = select(ConversationRow).where(ConversationRow.owner_id == user)
        if search:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            q = q.where(func.lower(ConversationRow.title).like(f"%{escaped.lower()}%", escape="\\"))
        with self.db.read() as s:
            rows = s.scalars(q.order_by(ConversationRow.updated_at.desc()).limit(limit))
            return [_conversation(r) for r in rows]

    def _own(self, s: Any, user: int, cid: str, lock: bool = False) -> ConversationRow:
        """The user's conversation; ``lock`` (writers) serialises writes to it across app processes."""
        row = s.get(ConversationRow, cid, with_for_update=lock)
        if row is None or row.owner_id != user:
            raise KBNotFound(f"conversation '{cid}' does not exist")
        return row

    def info(self, user: int, cid: str) -> dict[str, Any]:
        """The conversation without its messages (a cheap ownership check)."""
        with self.db.read() as s:
            return _conversation(self._own(s, user, cid))

    def get(self, user: int, cid: str) -> dict[str, Any]:
        """The conversation with its messages in order, each assistant message with its feedback."""
        with self.db.read() as s:
            conv = self._own(s, user, cid)
            pairs = s.execute(select(MessageRow, FeedbackRow).outerjoin(
                FeedbackRow, FeedbackRow.message_id == MessageRow.id).where(
                MessageRow.conversation_id == cid).order_by(MessageRow.seq)).all()
            return _conversation(conv) | {"messages": [_message(m, f) for m, f in pairs]}

    def update(self, user: int, cid: str, title: str | None = None,
               kbs: Sequence[str] | None = None) -> dict[str, Any]:
        with self.db.session() as s:
            row = self._own(s, user, cid)
            if title is not None:
                row.title = _check_title(title)
            if kbs is not None:
                row.kbs = list(kbs)
            row.updated_at = time.time()
            return _conversation(row)

    def delete(self, user: int, cid: str) -> None:
        with self.db.session() as s:
            s.delete(self._own(s, user, cid))  # messages and feedback go with it (ON DELETE CASCADE)

    # --- messages --------------------------------------------------------------------------------------------
    def history(self, user: int, cid: str, before: str | None = None) -> list[tuple[str, str]]:
        """(question, answer) pairs of the conversation so far (or before message ``before``), for the prompt."""
        with self.db.read() as s:
            self._own(s, user, cid)
            q = select(MessageRow.role, MessageRow.content).where(MessageRow.conversation_id == cid)
            if before is not None:
                q = q.where(MessageRow.seq < _message_in(s, cid, before).seq)
            msgs = s.execute(q.order_by(MessageRow.seq)).all()
        pairs: list[tuple[str, str]] = []
        for role, content in msgs:
            if role == "user":
                pairs.append((content, ""))
            elif pairs and not pairs[-1][1]:
                pairs[-1] = (pairs[-1][0], content)
        return pairs

    def ask(self, user: int, cid: str, content: str, kbs: Sequence[str] | None = None,
            replace_from: str | None = None) -> dict[str, Any]:
        """Record a question. ``replace_from`` (a message id of this conversation) first removes that message
        and everything after it: re-asking an edited question, or regenerating the last answer. The first
        question names an untitled conversation; ``kbs`` (when given) become the conversation's KBs."""
        if not content.strip():
            raise KBError("the question is empty")
        with self.db.session() as s:
            conv = self._own(s, user, cid, lock=True)
            last = s.scalars(select(MessageRow).where(MessageRow.conversation_id == cid)
                             .order_by(MessageRow.seq.desc()).limit(1)).first()
            if (replace_from is None and last is not None and last.role == "user"
                    and time.time() - last.created_at < PENDING_SECONDS):
                raise KBConflict("the previous question is still being answered: wait for it, or stop it")
            if replace_from is not None:
                cut = _message_in(s, cid, replace_from)
                s.execute(delete(MessageRow).where(MessageRow.conversation_id == cid, MessageRow.seq >= cut.seq))
            seq = (s.scalar(select(func.max(MessageRow.seq)).where(MessageRow.conversation_id == cid)) or 0) + 1
            msg = MessageRow(conversation_id=cid, seq=seq, role="user", content=content)
            s.add(msg)
            if not conv.title:
                conv.title = _title(content)
            if kbs is not None:
                conv.kbs = list(kbs)
            conv.updated_at = time.time()
            s.flush()
            return _message(msg)

    def add_answer(self, cid: str, question_id: str, content: str, query: str | None,
                   sources: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any] | None:
        """Record the answer to ``question_id``; ``None`` if that question was replaced or followed by another
        meanwhile (re-asked from an earlier point, or abandoned): the answer would not fit the thread."""
        with self.db.session() as s:
            s.get(ConversationRow, cid, with_for_update=True)
            question = s.get(MessageRow, question_id)
            if question is None or s.scalar(select(MessageRow.id).where(
                    MessageRow.conversation_id == cid, MessageRow.seq == question.seq + 1)) is not None:
                return None
            msg = MessageRow(conversation_id=cid, seq=question.seq + 1, role="assistant", content=content,
                             query=query, sources=sources, meta=json.loads(json.dumps(meta)))
            s.add(msg)
            s.execute(update(ConversationRow).where(ConversationRow.id == cid).values(updated_at=time.time()))
            s.flush()
            return _message(msg)

    # --- feedback --------------------------------------------------------------------------------------------
    def rate(self, user: int, message_id: str, rating: int, comment: str = "") -> dict[str, Any]:
        """Thumbs up (1) or down (-1) on an answer in one of the user's conversations; rating again replaces."""
        if rating not in (1, -1):
            raise KBError("rating must be 1 or -1")
        if len(comment) > MAX_COMMENT_CHARS:
            raise KBError(f"comment: at most {MAX_COMMENT_CHARS} characters")
        with self.db.session() as s:
            msg = s.get(MessageRow, message_id)
            if msg is None or msg.role != "assistant":
                raise KBNotFound(f"answer '{message_id}' does not exist")
            self._own(s, user, msg.conversation_id)
            row = s.get(FeedbackRow, message_id) or FeedbackRow(message_id=message_id, user_id=user)
            row.rating, row.comment, row.created_at = rating, comment, time.time()
            s.add(row)
            s.flush()
            return {"message_id": message_id, "rating": row.rating, "comment": row.comment,
                    "created_at": row.created_at}

    def feedback(self, kb: str | None = None, rating: int | None = None) -> Iterator[dict[str, Any]]:
        """Every rated answer (for review): the question, the answer, its sources, the rating and comment,
        oldest first; ``kb`` keeps answers from conversations over that KB, ``rating`` one kind of rating."""
        with self.db.read() as s:
            q = (select(FeedbackRow, MessageRow, ConversationRow, UserRow)
                 .join(MessageRow, MessageRow.id == FeedbackRow.message_id)
                 .join(ConversationRow, ConversationRow.id == MessageRow.conversation_id)
                 .join(UserRow, UserRow.id == FeedbackRow.user_id)
                 .order_by(FeedbackRow.created_at))
            if rating is not None:
                q = q.where(FeedbackRow.rating == rating)
            for fb, answer, conv, who in s.execute(q).all():
                used = sorted({src.get("kb", "") for src in answer.sources or []} | set(conv.kbs or []))
                if kb is not None and kb not in used:
                    continue
                question = s.scalar(select(MessageRow.content).where(
                    MessageRow.conversation_id == conv.id, MessageRow.seq == answer.seq - 1))
                yield {"message_id": answer.id, "conversation_id": conv.id, "user": who.name,
                       "rating": fb.rating, "comment": fb.comment, "rated_at": fb.created_at,
                       "question": question, "query": answer.query, "answer": answer.content,
                       "knowledge_bases": used, "sources": list(answer.sources or []),
                       "meta": dict(answer.meta or {})}


def _message_in(s: Any, cid: str, message_id: str) -> MessageRow:
    """A message of conversation ``cid`` (KBNotFound for any other id)."""
    msg = s.get(MessageRow, message_id)
    if msg is None or msg.conversation_id != cid:
        raise KBNotFound(f"message '{message_id}' does not exist")
    return msg


def _check_title(title: str) -> str:
    title = " ".join((title or "").split())
    if len(title) > MAX_TITLE_CHARS:
        raise KBError(f"title: at most {MAX_TITLE_CHARS} characters")
    return title


class AnswerRecorder:
    """What one generation produced (from its ChatEvents), stored once as the answer to ``question_id``; the UI
    and the API both record through it."""

    def __init__(self, store: Conversations, model: str, settings: Any, cid: str, question_id: str,
                 kbs: Sequence[str], options: Any):
        self.store, self.cid, self.question_id = store, cid, question_id
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.pieces: list[str] = []
        self.final: str | None = None
        self.query: str | None = None
        self.sources: list[dict[str, Any]] = []
        self.status = "done"  # done | stopped | error
        self.stored = False
        self.meta: dict[str, Any] = {
            "model": model, "knowledge_bases": list(kbs),
            "params": {"temperature": _pick(options.temperature, settings.temperature),
                       "top_p": _pick(options.top_p, settings.top_p),
                       "max_tokens": _pick(options.max_tokens, settings.max_tokens), "top_k": options.top_k,
                       "score_threshold": options.threshold, "search_mode": options.mode},
        }

    @property
    def text(self) -> str:
        return "".join(self.pieces) if self.final is None else self.final

    def see(self, ev: Any) -> None:
        """Take in one ChatEvent."""
        if ev.type == "query":
            self.query = ev.data
        elif ev.type == "sources":
            self.sources = [h.source() for h in ev.data]
        elif ev.type == "token" and ev.data:
            if self.first_token is None:
                self.first_token = time.monotonic() - self.started
            self.pieces.append(ev.data)
        elif ev.type == "done":  # the answer with its [n] markers checked against the sources
            self.final = ev.data["answer"]
            self.meta |= {k: ev.data[k] for k in ("citations", "invalid_citations") if k in ev.data}

    def save(self) -> dict[str, Any] | None:
        self.stored = True
        total = time.monotonic() - self.started
        meta = self.meta | {"status": self.status, "completion_tokens": len(self.pieces),
                            "timings": {"first_token_s": None if self.first_token is None else
                                        round(self.first_token, 3), "total_s": round(total, 3)}}
        return self.store.add_answer(self.cid, self.question_id, self.text, self.query, self.sources, meta)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value
