"""Turns on the language model: at most ``slots`` generations at once, the rest wait in a fair queue.

One turn covers one question (ChatService holds it across the condense call and the answer), so a follow-up
never queues twice. The next free slot goes to the earliest waiter of the user with the fewest turns running
(FIFO within a user and among users with as many), so one user sending many requests cannot starve the others.
A waiter can read how many requests will be served before it and is told when that number changes.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Literal

TicketState = Literal["waiting", "running", "done"]


class Ticket:
    """One request's place: waiting, then running (holding a slot), then done. ``release`` is idempotent."""

    def __init__(self, scheduler: TurnScheduler, user: str, seq: int):
        self.user = user
        self.seq = seq
        self.state: TicketState = "waiting"
        self._scheduler = scheduler

    @property
    def granted(self) -> bool:
        return self.state == "running"

    def ahead(self) -> int:
        """Requests that will get a turn before this one (0 once running)."""
        with self._scheduler._cond:
            return self._scheduler._ahead(self)

    def wait(self, cancel: threading.Event | None = None, poll: float = 0.1) -> Iterator[int]:
        """Block until this ticket runs; yields the number ahead whenever it changes while waiting (nothing when
        a slot is free at once). A set ``cancel`` leaves the queue and ends the wait with ``granted`` False."""
        s = self._scheduler
        last: int | None = None
        while True:
            with s._cond:
                while True:
                    if self.state != "waiting":
                        return
                    if cancel is not None and cancel.is_set():
                        s._leave(self)
                        return
                    ahead = s._ahead(self)
                    if ahead != last:
                        break
                    # ``cancel`` is a plain Event that does not notify the condition: poll it.
                    s._cond.wait(poll)
            last = ahead
            yield ahead  # outside the lock: the consumer may take its time

    def release(self) -> None:
        with self._scheduler._cond:
            self._scheduler._leave(self)


class TurnScheduler:
    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self._cond = threading.Condition()
        self._waiting: list[Ticket] = []  # arrival order
        self._running: Counter[str] = Counter()  # user -> turns running
        self._seq = itertools.count()

    def enqueue(self, user: str) -> Ticket:
        """A ticket for ``user``, running at once when a slot is free and nobody waits before it."""
        with self._cond:
            ticket = Ticket(self, user, next(self._seq))
            self._waiting.append(ticket)
            self._dispatch()
            return ticket

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"slots": self.slots, "running": sum(self._running.values()), "waiting": len(self._waiting)}

    # --- internals (called with self._cond held) ------------------------------------------------------------
    def _order(self, running: Counter[str]) -> list[Ticket]:
        """The waiters in the order they would get turns if no running turn ended meanwhile."""
        running = Counter(running)
        left = list(self._waiting)
        order: list[Ticket] = []
        while left:
            best = min(left, key=lambda t: (running[t.user], t.seq))
            order.append(best)
            left.remove(best)
            running[best.user] += 1
        return order

    def _ahead(self, ticket: Ticket) -> int:
        # An estimate when running users also wait: it assumes no running turn ends first (a turn ending can
        # put a waiter of another user in front, and the waiters are told the new number).
        if ticket.state != "waiting":
            return 0
        return self._order(self._running).index(ticket)

    def _dispatch(self) -> None:
        changed = False
        while self._waiting and sum(self._running.values()) < self.slots:
            best = min(self._waiting, key=lambda t: (self._running[t.user], t.seq))
            self._waiting.remove(best)
            best.state = "running"
            self._running[best.user] += 1
            changed = True
        if changed:
            self._cond.notify_all()

    def _leave(self, ticket: Ticket) -> None:
        if ticket.state == "waiting":
            self._waiting.remove(ticket)
        elif ticket.state == "running":
            self._running[ticket.user] -= 1
            if self._running[ticket.user] <= 0:
                del self._running[ticket.user]
        else:
            return
        ticket.state = "done"
        self._dispatch()
        self._cond.notify_all()  # positions may have changed (fewer ahead, or other running counts)
