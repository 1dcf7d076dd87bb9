"""How handlers meet the server: errors as one sentence, ZeroGPU borrowing, queue lanes, one door, uploads.

`safe(fn, *bound)` is the only way a handler reaches Gradio: a `UserError` becomes its own sentence
in the UI, anything else the generic sentence below with the traceback in the server log. `bound`
are leading arguments given at build time (the app's state); Gradio sees the rest of the signature,
so a `request: gr.Request` parameter is still filled in by Gradio. A handler that takes a click's
event data (gr.SelectData) and is called without one is refused in a sentence.

**One door.** On a public server every piece of work enters through Gradio's queue, where the
lanes, the places per visitor and the turns are (visitors.py, turns.py): the REST routes that skip
the queue (`/gradio_api/run/<name>`, `/api/<name>`) are closed (`queue(api_open=False)`), and
`check_one_door` fails the start if an event that does work could still run outside the queue, or
if the lanes could take every handler thread. Outside the queue run only the handlers in LIGHT:
bounded by their request's size, never a model pass or a visitor's image.

**Request bodies.** `BodyLimit` refuses a body over 2 MB by its length before it is read, on every
route but one: Gradio's upload route, by its exact path and method, which takes at most
MAX_UPLOAD_FILES files of MAX_UPLOAD_BYTES, UPLOADS_AT_ONCE at a time per visitor on a public
server, and hands what it wrote to the visitor's disk quota (studio/disk.py).
"""
from __future__ import annotations

import functools
import html
import inspect
import json
import logging
import typing
from typing import Callable

import gradio as gr

from pmg_core.core.errors import UserError
from pmg_core.data.inputs import MAX_UPLOAD_BYTES

from .visitors import visitor_of

log = logging.getLogger("pmg_studio")
GENERIC_ERROR = "Something went wrong on the server while doing that; the details are in the server log."
INTERACTIVE_GPU_S, JOB_GPU_S = 120, 300  # ZeroGPU time per call: one attack/plot; one capped Evaluate/Train
# Two lanes: short interactive work never waits behind a long Evaluate/Train. Jobs run one at a time;
# on a public server several attacks run at once, taking turns pass by pass (studio/turns.py), more
# than one visitor may hold (visitors.PER_VISITOR), so another visitor's attack starts at once.
JOBS = dict(concurrency_id="jobs", concurrency_limit=1)
# Attacks running at once on a public server: every pass takes turns (turns.py), so a run that waits costs a
# thread and little memory; three visitors at their places (visitors.PER_VISITOR) leave four runs to others.
PUBLIC_INTERACTIVE_AT_ONCE = 16
PREVIEWS_AT_ONCE = 2
# Handlers that may run outside the queue (by function name): each is bounded by its request's size and
# does no model pass and no decode of a visitor's file. Label presets and lists, an example (the app's own
# small files), the hint beside Attack, the result boxes shown after an attack, a page opened from a share
# link (its settings, and a copy of a kept image of at most 224 px), Cancel (sets a flag), the model
# lists, the Leaderboard's views of the committed cards.
LIGHT = frozenset({"on_preset", "on_labels", "on_example", "no_image_hint", "show_results", "open_link", "cancel",
                   "poll", "refresh", "show_protocol", "show_threat"})
LIGHT_THREADS = 5  # handler threads the queue's lanes always leave to the handlers in LIGHT


def interactive(public: bool) -> dict:
    """The interactive lane's event options: one run at a time locally, as always; a few in public."""
    return dict(concurrency_id="interactive", concurrency_limit=PUBLIC_INTERACTIVE_AT_ONCE if public else 1)


def _as_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, UserError):
        # The toast renders HTML, and the sentence may quote what a visitor typed: show it as text.
        return gr.Error(html.escape(str(e), quote=False), print_exception=False)
    log.exception("handler failed")
    return gr.Error(GENERIC_ERROR, print_exception=False)


NO_EVENT = "This action starts from a click on the page (its event data is missing); use the page."


def _event_parameter(fn: Callable, bound: int) -> tuple[str, type] | None:
    """`fn`'s parameter that Gradio fills with a click's event data, and its class, if it has one."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: Gradio would not fill it either
        return None
    for name in list(inspect.signature(fn).parameters)[bound:]:
        hint = hints.get(name)
        if inspect.isclass(hint) and issubclass(hint, gr.EventData):
            return name, hint
    return None


def safe(fn: Callable, *bound) -> Callable:
    """Bad input -> one readable sentence in the UI (gr.Error); anything else -> a generic sentence + log."""
    call = functools.partial(fn, *bound) if bound else fn
    event = _event_parameter(fn, len(bound))
    params = list(inspect.signature(fn).parameters)[len(bound):]

    def with_event(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Gradio is asked for the plain gr.EventData, which takes any request (an HTTP client may send
        none, or anything); the handler gets its own kind, built here, or the call a sentence."""
        if event is None:
            return args, kwargs
        name, kind = event
        at = params.index(name)
        given = kwargs.get(name, args[at] if len(args) > at else None)
        try:
            made = kind(given.target, given._data)
        except Exception:  # noqa: BLE001 - no event data, or not the kind this click sends
            raise gr.Error(NO_EVENT, print_exception=False) from None
        if name in kwargs:
            return args, {**kwargs, name: made}
        return args[:at] + (made,) + args[at + 1:], kwargs

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            args, kwargs = with_event(args, kwargs)
            try:
                yield from call(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - the server keeps serving whatever happened
                raise _as_gr_error(e) from None
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            args, kwargs = with_event(args, kwargs)
            try:
                return call(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001
                raise _as_gr_error(e) from None
    if event is not None:
        wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), event[0]: gr.EventData}
    if bound:  # what Gradio reads to fill in inputs, gr.Request and gr.Progress
        params_shown = list(inspect.signature(fn).parameters.values())[len(bound):]
        wrapper.__signature__ = inspect.Signature(params_shown)
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


def numbers_as_sent(demo: gr.Blocks) -> None:
    """Every gr.Number hands its handler the value as sent: Gradio's own rounding would turn an API
    client's `steps=True` into 1 and `steps=1.5` into 2, past the handler's check (pmg_core.data.inputs,
    which refuses both in a sentence). An instance override, as image_upload's."""
    for block in demo.blocks.values():
        if isinstance(block, gr.Number):
            block.preprocess = lambda payload: payload


def cheap_skips(demo: gr.Blocks) -> bool:
    """An output a streamed update leaves as it is (gr.skip()) costs nothing: Gradio rebuilds such a
    component and its API schema for the session on every update, which took 40% of the event loop
    under three hostile attack streams (ten updates a second each) and slowed everyone's answers.
    Such outputs are passed over (an instance override of postprocess_data); returns whether the
    override is in place (a Gradio whose postprocess_data looks otherwise keeps its own)."""
    import copy

    original = getattr(demo, "postprocess_data", None)
    if not callable(original):
        return False

    async def postprocess_data(block_fn, predictions, state):
        outputs = list(getattr(block_fn, "outputs", None) or [])
        if (getattr(block_fn, "batch", False) or not isinstance(predictions, (list, tuple))
                or len(predictions) != len(outputs) or len(outputs) < 2):
            return await original(block_fn, predictions, state)
        skipped = {i for i, p in enumerate(predictions)
                   if isinstance(p, dict) and p == SKIP and not outputs[i].stateful}
        if not skipped:
            return await original(block_fn, predictions, state)
        if len(skipped) == len(outputs):
            return [dict(SKIP) for _ in outputs]
        rest = copy.copy(block_fn)
        rest.outputs = [o for i, o in enumerate(outputs) if i not in skipped]
        kept = [p for i, p in enumerate(predictions) if i not in skipped]
        # Gradio takes a one-output function's value bare, not in a list
        done = iter(await original(rest, kept[0] if len(kept) == 1 else kept, state))
        return [dict(SKIP) if i in skipped else next(done) for i in range(len(outputs))]

    postprocess_data.passes_over_skips = True
    demo.postprocess_data = postprocess_data
    return True


def skips_pass_over(demo: gr.Blocks) -> bool:
    """Whether cheap_skips is in place on `demo`: a skipped output is then left untouched, session copy included."""
    return getattr(getattr(demo, "postprocess_data", None), "passes_over_skips", False)


SKIP = {"__type__": "update"}  # gr.skip(): leave this output as it is


def check_one_door(demo: gr.Blocks, max_threads: int) -> None:
    """Fail the start (RuntimeError naming each) if work could skip the queue on a public server: REST
    routes open, an MCP server, an event outside the queue that is not in LIGHT, a lane without a
    concurrency limit, or lanes that together could take the threads LIGHT_THREADS keeps for the rest."""
    found = []
    if getattr(demo, "api_open", True):
        found.append("the REST routes that skip the queue are open (queue(api_open=False))")
    if getattr(demo, "mcp_server", False):
        found.append("the MCP server calls handlers outside the queue")
    lanes: dict[str, list] = {}  # each queued lane's concurrency limits (Gradio runs the first; the largest counts)
    for block_fn in demo.fns.values():
        if block_fn.fn is None:  # runs in the browser only
            continue
        name = getattr(block_fn.fn, "__name__", "?")
        if not block_fn.queue:
            if name not in LIGHT:
                found.append(f"'{block_fn.api_name}' ({name}) runs outside the queue; queue it or list it in LIGHT")
            continue
        limit = block_fn.concurrency_limit
        if isinstance(limit, str):  # "default": the queue's default limit
            limit = getattr(getattr(demo, "_queue", None), "default_concurrency_limit", 1)
        lanes.setdefault(str(block_fn.concurrency_id), []).append(limit)
    unbounded = [lane for lane, limits in lanes.items() if None in limits]
    at_once = sum(max(int(x) for x in limits) for limits in lanes.values()) if not unbounded else 0
    if unbounded:
        found.append(f"the lane(s) {', '.join(unbounded)} have no concurrency limit")
    elif at_once + LIGHT_THREADS > max_threads:
        found.append(f"the lanes run {at_once} jobs at once, which leaves fewer than {LIGHT_THREADS} of the "
                     f"{max_threads} handler threads to the rest")
    if found:
        raise RuntimeError("Refusing to serve in public: " + "; ".join(found) + ".")


MAX_REQUEST_BYTES = 2 * 2**20  # a request's body, uploads apart: 1,000 labels of 200 characters fit, JSON-escaped
TOO_LARGE_REQUEST = (f"This request is too large: at most {MAX_REQUEST_BYTES // 2**20} MB of data (at most 1,000 labels "
                     "of 200 characters); upload images with the image field.")
UPLOAD_ROUTE = "/gradio_api/upload"  # Gradio's upload route: POST only
MAX_UPLOAD_FILES = 4  # files in one upload request (the page sends one image at a time)
UPLOADS_AT_ONCE = 2  # upload requests of one visitor at once, on a public server
TOO_MANY_FILES = f"This upload carries more than {MAX_UPLOAD_FILES} files; upload at most {MAX_UPLOAD_FILES} at once."
# Gradio answers 413 to an upload refused with "maximum allowed size" in its sentence.
TOO_LARGE_UPLOAD = (f"This upload is over the maximum allowed size: at most {MAX_UPLOAD_FILES} files of "
                    f"{MAX_UPLOAD_BYTES // 2**20} MB in one request.")
BUSY_UPLOADING = (f"You have {UPLOADS_AT_ONCE} uploads in progress already; wait for them to finish before uploading "
                  "more.")


class _TooLarge(Exception):
    pass


def _multipart_error(sentence: str) -> Exception:
    """What Gradio's upload route answers with `sentence` after deleting the files it had begun (400,
    or 413 for the size); an exception of our own where that is not Gradio's way."""
    try:
        from starlette.formparsers import MultiPartException
    except ImportError:
        return _TooLarge(sentence)
    return MultiPartException(sentence)


class BodyLimit:
    """ASGI middleware (module docstring): a request whose body is over `max_bytes` is refused (413, one
    sentence) before its body is read or parsed, whatever endpoint it is for, queued or not; Gradio's
    upload route, matched by its exact path and method, has its own limits and feeds the visitor's quota."""

    def __init__(self, app, max_bytes: int = MAX_REQUEST_BYTES):
        self.app, self.max_bytes = app, max_bytes
        self._uploading: dict[str, int] = {}  # visitor -> upload requests in progress

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("method") == "POST" and _route(scope) == UPLOAD_ROUTE:
            return await self._upload(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await _refuse(send, 413, TOO_LARGE_REQUEST)
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
                await _refuse(send, 413, TOO_LARGE_REQUEST)

    async def _upload(self, scope, receive, send):
        """Gradio's upload route: the body's length and its number of parts counted as it streams (a
        refusal mid-way makes Gradio delete the files it began), a public visitor's uploads at once
        counted, and the files written handed to their quota."""
        limit = MAX_UPLOAD_FILES * (MAX_UPLOAD_BYTES + 2**16)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _refuse(send, 413, TOO_LARGE_UPLOAD)
        studio = _studio(scope)
        public = bool(getattr(studio, "public", False))
        visitor = visitor_of(_Peer(scope), studio.proxies) if public else None
        if public and self._uploading.get(visitor, 0) >= UPLOADS_AT_ONCE:
            return await _refuse(send, 429, BUSY_UPLOADING)
        marker = b"--" + _boundary(headers.get(b"content-type", b""))
        received, parts, tail = 0, 0, b""

        async def counted():
            nonlocal received, parts, tail
            message = await receive()
            if message["type"] == "http.disconnect":  # cut short: Gradio deletes what it began
                raise _multipart_error("The upload was cut short.")
            chunk = message.get("body", b"")
            received += len(chunk)
            seen = tail + chunk  # a delimiter may straddle two chunks; the tail is too short to hold one
            parts += seen.count(marker)
            tail = seen[-(len(marker) - 1):]
            if received > limit:
                raise _multipart_error(TOO_LARGE_UPLOAD)
            if parts > MAX_UPLOAD_FILES + 1:  # the closing delimiter is one more
                raise _multipart_error(TOO_MANY_FILES)
            return message

        status, body = 0, bytearray()

        async def watched(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status == 200 and len(body) < 2**16:
                body.extend(message.get("body", b""))
            await send(message)

        if public:
            self._uploading[visitor] = self._uploading.get(visitor, 0) + 1
        try:
            await self.app(scope, counted, watched)
        finally:
            if public:
                self._uploading[visitor] -= 1
                if not self._uploading[visitor]:
                    del self._uploading[visitor]
        if public and status == 200 and studio.disk is not None:
            try:
                written = json.loads(bytes(body))
            except ValueError:
                written = []
            studio.disk.keep(visitor, *[p for p in written if isinstance(p, str)])


class _Peer:
    """What visitors.visitor_of reads of a request (its peer and headers), from an ASGI scope."""

    def __init__(self, scope):
        client = scope.get("client") or (None, None)
        self.client = type("Client", (), {"host": client[0]})()
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}


def _route(scope) -> str:
    """The request's path inside the app (any root path a proxy serves it under taken off)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _boundary(content_type: bytes) -> bytes:
    for piece in content_type.split(b";")[1:]:
        key, _, value = piece.strip().partition(b"=")
        if key.lower() == b"boundary":
            return value.strip(b'"')
    return b"\0no boundary\0"


def _studio(scope):
    """The app's state, reached through the Gradio app serving the request (None in a bare test app)."""
    app = scope.get("app")
    blocks = app.get_blocks() if callable(getattr(app, "get_blocks", None)) else None
    return getattr(blocks, "studio", None)


async def _refuse(send, status: int, sentence: str) -> None:
    body = json.dumps({"detail": sentence, "error": sentence}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
