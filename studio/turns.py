"""Sharing a public server's compute between visitors: turns pass by pass, and a budget per minute.

- **Turns.** Every job of a public server (an attack's model passes, a sweep's, a training step)
  asks `Turns.turn(visitor)` before each pass. At most `slots` turns run at once, each on
  `threads` torch threads of its own (pmg_core.core.threads, so no other thread's count changes); when
  a slot frees, it goes to the waiting visitor who has had the least turn time, ties in order of
  asking. A visitor who arrives starts about level with the least-served visitor already waiting
  or running, so idle time is no credit to spend later. While two visitors want work each gets half
  the slots' time, however many jobs one of them runs: an honest attack shares the machine with a
  hostile visitor's four instead of queueing behind all of them, and waits at most for the turns
  already running. As a waking task in Linux's fair scheduler, a visitor who arrives is placed a
  little ahead of the least-served one (WAKE_CREDIT_S of turn time), so a short attack between
  pauses, what a person does, runs at once, while a visitor who never pauses has no credit.
  A visitor behind everyone running (less turn time than each other visitor holding a turn, and no
  more turns wanted than there are slots: a person's attack, not a visitor's many jobs) does not
  wait for a slot to free: it takes a spare turn (there are as many as slots), so its short passes
  never queue behind others' long ones (a training step, a batch of an evaluation, a pass through a
  test-time defense). While a spare turn runs, a slot freed meanwhile waits for it, so the cores run
  more turns than there are slots for at most one pass, and a person's attack then has most of the
  machine: the price for everyone else is that attack's few seconds, and turn time still counts, so
  no visitor stays behind everyone for long. Beside three hostile addresses at their caps, on two
  cores, a person's attack took 2.3x its idle time (pooled over three runs; docs/SPACES.md).
- **Budget.** `Budget.charge` counts each visitor's model-passes over the last minute (attacks,
  sweeps and distances, label text included) and refuses, before any work, a request that would
  go over, in one sentence that says when the visitor may come back.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import math
import threading
import time
from typing import Callable, Iterator

from pmg_core.core.errors import UserError
from pmg_core.core.threads import own_threads

FORGET_S = 60.0  # a visitor's turn time is kept this long after their last turn (a pause is no credit)
WAKE_CREDIT_S = 1.0  # how far ahead of the least-served visitor one who arrives is placed (seconds of turns)


class Turns:
    """Turn-taking among visitors (module docstring). `threads`: torch threads per turn (None: as they are)."""

    def __init__(self, slots: int, threads: int | None = 1, clock: Callable[[], float] = time.monotonic):
        self.slots, self.threads, self.clock = max(1, int(slots)), threads, clock
        self._lock = threading.Lock()
        self._free, self._spare = self.slots, self.slots  # spare turns: module docstring
        self._running = collections.Counter()  # each visitor's turns running now
        self._used: dict[str, float] = {}  # turn seconds per visitor
        self._seen: dict[str, float] = {}  # when each visitor last finished a turn
        self._wanting = collections.Counter()  # each visitor's turns waiting or running
        self._waiting: dict[int, _Ticket] = {}  # in the order asked
        self._tickets = itertools.count()

    def busy(self) -> int:
        """Turns waiting or running now."""
        with self._lock:
            return sum(self._wanting.values())

    def gate(self, visitor: str) -> Callable[[], contextlib.AbstractContextManager]:
        """What a job calls before each pass: `with gate(): ...`."""
        return lambda: self.turn(visitor)

    def _arrive(self, visitor: str) -> None:
        now = self.clock()
        for v in [v for v, t in self._seen.items() if now - t > FORGET_S and not self._wanting[v]]:
            self._used.pop(v, None), self._seen.pop(v, None)
        if not self._wanting[visitor]:
            others = [self._used.get(v, 0.0) for v, n in self._wanting.items() if n and v != visitor]
            floor = min(others, default=WAKE_CREDIT_S) - WAKE_CREDIT_S
            self._used[visitor] = max(self._used.get(visitor, 0.0), floor)
        self._wanting[visitor] += 1

    def _grant(self) -> None:
        """Free slots to the waiting tickets whose turn it is: the least-served visitor's oldest first,
        a spare turn to that visitor if it is behind everyone running. Only those are woken (a wake-up
        for every waiter on every turn would cost more than the turns)."""
        while self._waiting:
            number = min(self._waiting, key=lambda t: (self._used[self._waiting[t].visitor], t))
            ticket = self._waiting[number]
            if self._free > 0:
                if self._spare < self.slots and not self._behind_everyone_running(ticket.visitor):
                    return  # while a spare turn runs, a freed slot waits for it (module docstring)
                self._free -= 1
            elif self._spare > 0 and self._behind_everyone_running(ticket.visitor):
                self._spare -= 1
                ticket.spare = True
            else:
                return
            del self._waiting[number]
            self._running[ticket.visitor] += 1
            ticket.go.set()

    def _behind_everyone_running(self, visitor: str) -> bool:
        used = self._used[visitor]
        return (self._wanting[visitor] <= self.slots
                and all(used < self._used.get(v, 0.0) for v, n in self._running.items() if n and v != visitor))

    @contextlib.contextmanager
    def turn(self, visitor: str) -> Iterator[None]:
        ticket = _Ticket(visitor)
        with self._lock:
            self._arrive(visitor)
            self._waiting[next(self._tickets)] = ticket
            self._grant()
        ticket.go.wait()
        start = self.clock()
        try:
            with own_threads(self.threads) if self.threads else contextlib.nullcontext():
                yield
        finally:
            with self._lock:
                end = self.clock()
                self._used[visitor] = self._used.get(visitor, 0.0) + (end - start)
                self._seen[visitor] = end
                self._wanting[visitor] -= 1
                if not self._wanting[visitor]:
                    del self._wanting[visitor]
                self._running[visitor] -= 1
                if not self._running[visitor]:
                    del self._running[visitor]
                if ticket.spare:
                    self._spare += 1
                else:
                    self._free += 1
                self._grant()


@dataclasses.dataclass
class _Ticket:
    """A turn asked for: whose, its go-ahead, and whether it holds a spare turn."""

    visitor: str
    go: threading.Event = dataclasses.field(default_factory=threading.Event)
    spare: bool = False


def in_turns(events: Iterator, gate: Callable[[], contextlib.AbstractContextManager] | None) -> Iterator:
    """A job's events (a training run's steps, an evaluation's batches), each computed in its turn."""
    while True:
        with gate() if gate is not None else contextlib.nullcontext():
            event = next(events, None)
        if event is None:
            return
        yield event


class Budget:
    """Model-passes per visitor over a sliding minute."""

    def __init__(self, per_minute: int | None, clock: Callable[[], float] = time.monotonic):
        self.per_minute, self.clock = per_minute, clock
        self._spent: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def charge(self, visitor: str, passes: float, where: str = "") -> None:
        """Count `passes` for `visitor`, or refuse (UserError) when the last minute's would go over."""
        if self.per_minute is None:
            return
        with self._lock:
            now = self.clock()
            for v in list(self._spent):  # forget what left the window (and visitors with nothing in it)
                spent = self._spent[v]
                while spent and now - spent[0][0] >= 60:
                    spent.popleft()
                if not spent:
                    del self._spent[v]
            spent = self._spent.setdefault(visitor, collections.deque())
            used = sum(p for _, p in spent)
            if used + passes > self.per_minute:
                # The oldest charges leave the window first: the wait until enough of them have.
                freed, wait = self.per_minute - used, 60.0
                for t, p in spent:
                    freed += p
                    if freed >= passes:
                        wait = 60 - (now - t)
                        break
                if not spent:
                    del self._spent[visitor]
                raise UserError(
                    f"This asks for {passes:,.0f} model-passes and you have used {used:,.0f} of your "
                    f"{self.per_minute:,} a minute{where}: try again in {max(1, math.ceil(wait))} s, or ask for less.")
            spent.append((now, passes))
