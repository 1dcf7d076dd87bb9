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
import logging
from typing import Callable

import gradio as gr

from pmg_core.errors import UserError

log = logging.getLogger("pmg_studio")
GENERIC_ERROR = "Something went wrong on the server while doing that; the details are in the server log."
INTERACTIVE_GPU_S, JOB_GPU_S = 120, 300  # ZeroGPU time per call: one attack/plot; one capped Evaluate/Train
# Two lanes, one run at a time each: short interactive work never waits behind a long Evaluate/Train.
INTERACTIVE = dict(concurrency_id="interactive", concurrency_limit=1)
JOBS = dict(concurrency_id="jobs", concurrency_limit=1)


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
    instead of reaching pmg_core.images, which refuses it in one sentence. Upload, paste and the
    browser's preview stay gr.Image's own. (An instance override: a subclass would make Gradio
    write a .pyi stub next to the module that defines it.)
    """
    component = gr.Image(type="filepath", **kw)
    component.preprocess = lambda payload: None if payload is None else payload.path
    return component
