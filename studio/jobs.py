"""Job bookkeeping: at most one running Evaluate and one Train per session, which Cancel can stop.

A job is found by its kind and the session that started it (Gradio's session hash; "local" when a
handler is called directly), so one person's Cancel never stops another's run. Runs still waiting
in the queue are not here: the Cancel buttons also take them off Gradio's queue (cancels=[...]).
The lock guards only this table, so a Cancel never waits on a model load.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Iterator

import gradio as gr

CANCEL_WAIT_S = 10.0  # Cancel waits this long for the run to save, so it can report the checkpoint
# (locally; on a public server it answers at once, so a storm of Cancels holds no worker threads)


@dataclass
class Job:
    """One running Evaluate or Train of one session: Cancel sets `stop`; `final` is its last status."""

    key: str
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    final: str = ""


def _key(kind: str, request: gr.Request | None) -> str:
    return f"{kind}:{getattr(request, 'session_hash', None) or 'local'}"


class Jobs:
    """The jobs running now, by kind and session."""

    def __init__(self, cancel_wait: float = CANCEL_WAIT_S) -> None:
        self.cancel_wait = cancel_wait
        self._running: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, request: gr.Request | None = None) -> Job:
        job = Job(_key(kind, request))
        with self._lock:
            self._running[job.key] = job
        return job

    def end(self, job: Job) -> None:
        with self._lock:
            if self._running.get(job.key) is job:
                del self._running[job.key]
        job.done.set()

    @contextlib.contextmanager
    def running(self, kind: str, request: gr.Request | None = None) -> Iterator[Job]:
        """A job for the duration of a `with` block (a stream that runs in the handler's own thread)."""
        job = self.start(kind, request)
        try:
            yield job
        finally:
            self.end(job)

    def get(self, kind: str, request: gr.Request | None = None) -> Job | None:
        with self._lock:
            return self._running.get(_key(kind, request))

    def cancel(self, kind: str, request: gr.Request | None = None, wait: float | None = None) -> str:
        """Stop this session's running `kind` job after its current step; returns its final status if it ends in time."""
        job = self.get(kind, request)
        if job is None:
            return f"No {kind} run of yours is running now."
        job.stop.set()
        if job.done.wait(self.cancel_wait if wait is None else wait):
            return job.final or f"**Cancelled** the {kind} run."
        return f"Stopping the {kind} run after its current step..."
