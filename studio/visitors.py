"""Who a visitor of a public server is, and the places and order each gets in a lane's queue.

- **Who.** A visitor is a network address: the peer's own, unless the peer is a proxy the operator
  trusts ($PMG_TRUSTED_PROXIES: addresses or networks, comma-separated, or `private` for every
  non-public address; on a Hugging Face Space `private` unless set, the Space's own proxy). Then
  its X-Forwarded-For is read from the right, and the first entry that is not itself a trusted
  proxy is the visitor: entries further left are the client's own words. Entries may carry a port
  (`1.2.3.4:5678`, `[2001:db8::1]:443`). An IPv6 address stands for its /64, the block one
  subscriber gets. So a client on loopback is one visitor however many sessions it opens or
  headers it forges. uvicorn would rewrite the peer from X-Forwarded-For by itself for peers on
  loopback, so `keep_peer_addresses` tells it to trust none (unless the operator set its
  FORWARDED_ALLOW_IPS).
- **Places.** `limit_queues` gives each concurrency lane its own queue size, each session a few
  waiting places per lane and each visitor a few more, its running jobs counted, so a flood of one
  kind fills its lane only, and a lane that runs more jobs at once than one visitor may hold always
  has a run free for someone else.
- **In turn.** Within a lane, a new job goes behind every job of visitors with fewer jobs ahead of
  it (waiting or running): a visitor's second job waits behind every other visitor's first.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger("pmg_studio")
TRUSTED_PROXIES_ENV = "PMG_TRUSTED_PROXIES"
# Places each lane's queue holds, and those one session and one visitor may take in it.
LANE_QUEUE = {"interactive": 32, "preview": 16, "jobs": 6}
PER_SESSION = 2
PER_VISITOR = 4  # waiting or running, all sessions of one visitor (one client's many, or the users behind one NAT)
LOCAL = "local"  # the visitor of a handler called without a request (tests, the CLI)


@dataclass(frozen=True)
class Proxies:
    """The peers whose X-Forwarded-For is believed."""

    networks: tuple = ()
    private: bool = False  # every address that is not public (a Space's proxy sends from one)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Proxies":
        text = environ.get(TRUSTED_PROXIES_ENV)
        if text is None:
            return cls(private=bool(environ.get("SPACE_ID")))
        words = [w.strip() for w in text.split(",") if w.strip()]
        networks = []
        for word in words:
            if word != "private":
                try:
                    networks.append(ipaddress.ip_network(word, strict=False))
                except ValueError:
                    log.warning("%s: '%s' is not an address or network; ignored", TRUSTED_PROXIES_ENV, word)
        return cls(tuple(networks), "private" in words)

    def trust(self, address) -> bool:
        if address is None:
            return False
        if self.private and not address.is_global:
            return True
        return any(address.version == n.version and address in n for n in self.networks)


def parse_address(text) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """'1.2.3.4', '1.2.3.4:5678', '2001:db8::1', '[2001:db8::1]:443' -> the address; None if none."""
    text = str(text or "").strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # IPv4 with a port (a bare IPv6 address has several colons)
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def visitor_key(address) -> str:
    """An address as one visitor: IPv6 by its /64."""
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def visitor_of(request, proxies: Proxies = Proxies()) -> str:
    """The visitor a request comes from (module docstring); LOCAL without a request, the peer's own
    words where it is no address (a test client)."""
    peer_text = getattr(getattr(request, "client", None), "host", None)
    if peer_text is None:
        return LOCAL
    peer = parse_address(peer_text)
    if peer is None:
        return str(peer_text)[:64]
    if proxies.trust(peer):
        headers = getattr(request, "headers", None) or {}
        for entry in reversed(headers.get("x-forwarded-for", "").split(",")):
            address = parse_address(entry)
            if address is None:
                break  # garbage from here leftwards is the client's own
            if not proxies.trust(address):
                return visitor_key(address)
    return visitor_key(peer)


def keep_peer_addresses(environ=os.environ) -> None:
    """uvicorn trusts X-Forwarded-For from loopback by default, which would let a local client name
    itself anew per request: unless the operator chose (FORWARDED_ALLOW_IPS), trust none there."""
    environ.setdefault("FORWARDED_ALLOW_IPS", "")


def limit_queues(demo: "gr.Blocks", lane_sizes: dict[str, int], per_session: int, per_visitor: int | None = None,
                 proxies: Proxies | None = None) -> bool:
    """Each concurrency lane gets its own queue size, each session `per_session` places in it and each
    visitor (`visitor_of`) `per_visitor`, whatever its number of sessions; new jobs queue in turn.

    Gradio has one queue size for all lanes, so a flood of one kind (17 Trains) refused everyone's
    attack with "Queue is full". This wraps the queue's admission (call after demo.queue()); what
    it refuses gets one sentence, as Gradio's own queue-full answer does. The hook is Gradio's
    private queue: a Gradio whose queue looks otherwise keeps its one shared size (still bounded by
    demo.queue's max_size) and FIFO order, and the app starts anyway; returns whether the lanes
    were installed.
    """
    from gradio import route_utils

    proxies = proxies or Proxies.from_env()
    queue = getattr(demo, "_queue", None)
    if not (callable(getattr(queue, "push", None)) and callable(getattr(route_utils, "get_fn", None))
            and isinstance(getattr(queue, "event_queue_per_concurrency_id", None), dict)):
        log.warning("this Gradio's queue has no per-lane hook: all lanes share one queue size")
        return False
    admit = queue.push

    def who(event) -> str:
        return visitor_of(getattr(event, "request", None), proxies)

    def waiting_in_lane(body) -> tuple[str, list] | None:
        """The events waiting in `body`'s lane, or None when this Gradio's internals do not say."""
        try:
            lane = route_utils.get_fn(queue.blocks, None, body).concurrency_id
            waiting = queue.event_queue_per_concurrency_id.get(lane)
            return lane, (waiting.queue if waiting is not None else [])
        except (AttributeError, KeyError, TypeError, IndexError):
            return None

    def refusal(body, request, lane: str, events: list) -> tuple[str, str] | None:
        """(sentence, Gradio's state) for a request the lane cannot take. A full lane is "queue_full"
        (HTTP 503, which the page words as "currently busy"); a visitor over their own places is
        "error" (HTTP 400), whose sentence the page shows as it is: the wait is theirs to end."""
        size = lane_sizes.get(lane)
        if size is not None and len(events) >= size:
            return f"Queue is full: {size} requests of this kind are waiting; try again shortly.", "queue_full"
        mine = sum(getattr(e, "session_hash", None) == body.session_hash for e in events)
        if body.session_hash is not None and mine >= per_session:
            return (f"Queue is full for you: {per_session} of your requests of this kind are already waiting; "
                    "let them finish or cancel them.", "error")
        if per_visitor is not None:  # its running jobs count too: a lane's runs are never all one visitor's
            visitor = visitor_of(request, proxies)
            if sum(who(e) == visitor for e in [*events, *running_in_lane(lane)]) >= per_visitor:
                return (f"Queue is full for your network address: {per_visitor} requests of this kind from it are "
                        "already waiting or running; let them finish or cancel them.", "error")
        return None

    def running_in_lane(lane: str) -> list:
        return [e for jobs in list(getattr(queue, "active_jobs", None) or []) if jobs
                for e in jobs if getattr(e, "concurrency_id", None) == lane]

    def in_turn(lane: str, events: list) -> None:
        """Order the lane's waiting jobs by how many jobs of the same visitor are ahead of each, then
        by arrival (a stable sort, so each visitor's own jobs keep their order)."""
        ahead: dict[str, int] = {}
        for e in running_in_lane(lane):
            ahead[who(e)] = ahead.get(who(e), 0) + 1
        rounds = {}
        for e in events:
            v = who(e)
            rounds[id(e)] = ahead.get(v, 0)
            ahead[v] = rounds[id(e)] + 1
        events.sort(key=lambda e: rounds[id(e)])

    async def push(body, request, username):
        found = waiting_in_lane(body) if body.fn_index is not None else None
        refused = refusal(body, request, *found) if found is not None else None
        if refused is not None:
            return False, *refused
        answer = await admit(body, request, username)
        if found is not None and answer[0]:
            lane, _ = found
            waiting = queue.event_queue_per_concurrency_id.get(lane)
            if waiting is not None:
                in_turn(lane, waiting.queue)
                if callable(getattr(queue, "broadcast_estimations", None)):
                    queue.broadcast_estimations(lane)  # each waiting visitor sees their new place
        return answer

    queue.push = push
    return True
