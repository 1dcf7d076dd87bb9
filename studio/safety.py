"""How handlers meet the server: errors as one sentence, ZeroGPU borrowing, queue lanes, uploads.

`safe(fn, *bound)` is the only way a handler reaches Gradio: a `UserError` becomes its own sentence
in the UI, anything else the generic sentence below with the traceback in the server log. `bound`
are leading arguments given at build time (the app's state); Gradio sees the rest of the signature,
so a `request: gr.Request` parameter is still filled in by Gradio.
"""
from __future__ import annotations

import functools
import html
import inspect
import json
import logging
from typing import Callable

import gradio as gr

from pmg_core.core.errors import UserError

log = logging.getLogger("pmg_studio")
GENERIC_ERROR = "Something went wrong on the server while doing that; the details are in the server log."
INTERACTIVE_GPU_S, JOB_GPU_S = 120, 300  # ZeroGPU time per call: one attack/plot; one capped Evaluate/Train
# Two lanes: short interactive work never waits behind a long Evaluate/Train. Jobs run one at a time;
# on a public server several attacks run at once, taking turns pass by pass (studio/turns.py), more
# than one visitor may hold (visitors.PER_VISITOR), so another visitor's attack starts at once.
JOBS = dict(concurrency_id="jobs", concurrency_limit=1)
PUBLIC_INTERACTIVE_AT_ONCE = 8


def interactive(public: bool) -> dict:
    """The interactive lane's event options: one run at a time locally, as always; a few in public."""
    return dict(concurrency_id="interactive", concurrency_limit=PUBLIC_INTERACTIVE_AT_ONCE if public else 1)


def _as_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, UserError):
        # The toast renders HTML, and the sentence may quote what a visitor typed: show it as text.
        return gr.Error(html.escape(str(e), quote=False), print_exception=False)
    log.exception("handler failed")
    return gr.Error(GENERIC_ERROR, print_exception=False)


def safe(fn: Callable, *bound) -> Callable:
    """Bad input -> one readable sentence in the UI (gr.Error); anything else -> a generic sentence + log."""
    call = functools.partial(fn, *bound) if bound else fn
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                yield from call(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - the server keeps serving whatever happened
                raise _as_gr_error(e) from None
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return call(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001
                raise _as_gr_error(e) from None
    if bound:  # what Gradio reads to fill in inputs, gr.Request and gr.Progress
        params = list(inspect.signature(fn).parameters.values())[len(bound):]
        wrapper.__signature__ = inspect.Signature(params)
    return wrapper


def gpu(seconds: int) -> Callable[[Callable], Callable]:
    """Hugging Face ZeroGPU: run the handler on a GPU borrowed for up to `seconds`; a no-op elsewhere."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=seconds)


def image_upload(**kw) -> gr.Image:
    """gr.Image that hands our handlers the uploaded file's path undecoded.

    gr.Image(type="filepath") opens every upload with PIL before any handler runs, so a file that
    is not an image, is cut short or is a decompression bomb fails inside Gradio with a traceback
    instead of reaching pmg_core.data.images, which refuses it in one sentence. Upload, paste and the
    browser's preview stay gr.Image's own. (An instance override: a subclass would make Gradio
    write a .pyi stub next to the module that defines it.)
    """
    component = gr.Image(type="filepath", **kw)
    component.preprocess = lambda payload: None if payload is None else payload.path
    return component


MAX_REQUEST_BYTES = 2 * 2**20  # a request's body, uploads apart: 1,000 labels of 200 characters fit, JSON-escaped
TOO_LARGE_REQUEST = (f"This request is too large: at most {MAX_REQUEST_BYTES // 2**20} MB of data (at most 1,000 labels "
                     "of 200 characters); upload images with the image field.")


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request whose body is over `max_bytes` is refused (413, one sentence) before
    its body is read or parsed, whatever endpoint it is for, queued or not: four 40 MB label texts
    no longer cost 2 GB. Gradio's uploads stream to disk under its own max_file_size and pass."""

    def __init__(self, app, max_bytes: int = MAX_REQUEST_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await self._refuse(send)
        received, started = 0, False

        async def counted():  # a body sent in chunks without a length is counted as it comes
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    @staticmethod
    async def _refuse(send) -> None:
        body = json.dumps({"detail": TOO_LARGE_REQUEST, "error": TOO_LARGE_REQUEST}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
