"""Issue 26's load figures for a public-mode app on 127.0.0.1 (the embedded models, offline).

    PMG_OFFLINE=1 python scripts/public_load.py fairness [--train] [--honest 8]
    PMG_OFFLINE=1 python scripts/public_load.py memory [--requests 2000]
    PMG_OFFLINE=1 python scripts/public_load.py labels

fairness: one honest visitor attacks with the Attack tab's defaults (every model, 10 steps, stop early)
on the idle server, then while one hostile address keeps its places in the attack lane full with
attacks at the cap (TTC, 1,000 fresh labels, no early stop) and, with --train, a Train at the cap
in the jobs lane; prints the honest median under load over the idle median.
memory: the server's RSS before and after `--requests` mixed requests (previews, label edits,
small attacks and sweeps, refusals). labels: 4 concurrent 40 MB label requests, peak RSS growth.
Visitors are told apart by X-Forwarded-For, from a loopback proxy the script trusts.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PMG_OFFLINE", "1")
os.environ.setdefault("PMG_TRUSTED_PROXIES", "127.0.0.1")  # the script's clients stand behind a loopback proxy

import httpx  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402


EXAMPLE = str(ROOT / "assets" / "examples" / "example.png")
EACH = "each model attacks itself"
HOSTILE, HONEST = "1.0.0.1", "8.8.4.4"


def rss_mb() -> float:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve():
    import app  # here: the hostile clients, other processes, need only gradio_client

    ckpt = Path(tempfile.mkdtemp(prefix="pmg-load-"))
    for f in (ROOT / "checkpoints").glob("*.safetensors"):
        shutil.copy(f, ckpt)
    demo = app.build_app(checkpoint_dir=ckpt, public=True)
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    return demo, f"http://127.0.0.1:{port}/", ckpt


def client(url: str, address: str) -> Client:
    return Client(url, verbose=False, headers={"X-Forwarded-For": address},
                  download_files=tempfile.mkdtemp(prefix="pmg-load-dl-"))


def honest_args(names, labels):
    return [handle_file(EXAMPLE), ", ".join(labels), labels[0], "Linf", 4, 10, 1, "cross-entropy", "", EACH, names,
            False, True]


def fairness(args) -> None:
    demo, url, _ = serve()
    if not args.budget and hasattr(demo.studio, "budget"):  # places kept full: the turns alone are measured
        from studio.turns import Budget

        demo.studio.budget = Budget(None)
    names = demo.studio.names
    labels = next(iter(demo.studio.presets().values()))
    honest = client(url, HONEST)

    def timed() -> float:
        start = time.perf_counter()
        honest.predict(*honest_args(names, labels), api_name="/attack")
        return time.perf_counter() - start

    timed()  # warm-up
    idle = [timed() for _ in range(5)]
    steps = 600 // (len(names) * 5) - 1  # models x (steps + 1) x (1 + EOT 4) <= 600
    # The hostile clients are other processes, as they would be: their own Python work is not the server's.
    ctx = multiprocessing.get_context("spawn")
    stop, answered, refused = ctx.Event(), ctx.Value("i", 0), ctx.Value("i", 0)
    hostile = [ctx.Process(target=hostile_attacks, args=(url, i, names, steps, stop, answered, refused), daemon=True)
               for i in range(6)]
    if args.train:
        hostile.append(ctx.Process(target=hostile_train, args=(url, stop, answered), daemon=True))
    for p in hostile:
        p.start()
    time.sleep(args.settle)
    loaded = []
    deadline = time.time() + args.budget_s
    while len(loaded) < args.honest and time.time() < deadline:
        loaded.append(timed())
    stop.set()
    ratio = statistics.median(loaded) / statistics.median(idle)
    print(f"steps of a hostile attack: {steps}; train in the other lane: {args.train}")
    print(f"idle: {', '.join(f'{t:.2f}' for t in idle)} s (median {statistics.median(idle):.2f})")
    print(f"under attack: {', '.join(f'{t:.2f}' for t in loaded)} s (median {statistics.median(loaded):.2f})")
    print(f"ratio (median under attack / idle median): {ratio:.2f}")
    print(f"hostile jobs answered: {answered.value}, refused: {refused.value}")
    for p in hostile:
        p.kill()
    os._exit(0)  # the hostile jobs are still running on the server


def hostile_attacks(url, i, names, steps, stop, answered, refused) -> None:
    """One hostile session: attacks at the cap, back to back, retried at once when refused."""
    os.nice(19)  # a client stands for another machine: its own parsing should not take the server's cores
    c, n = client(url, HOSTILE), 0
    while not stop.is_set():
        n += 1
        fresh = [f"thing {k} {i}-{n}" for k in range(1000)]  # new labels: no cached text features
        try:
            c.predict(handle_file(EXAMPLE), ", ".join(fresh), fresh[0], "Linf", 4, steps, 1, "cross-entropy", "",
                      EACH, names, True, False, api_name="/attack")
            answered.value += 1
        except Exception:  # noqa: BLE001 - refusals: the places are full, try again
            refused.value += 1
            time.sleep(0.2)


def hostile_train(url, stop, answered) -> None:
    """A Train at the cap in the jobs lane, again and again."""
    os.nice(19)
    c, n = client(url, HOSTILE), 0
    while not stop.is_set():
        n += 1
        with contextlib.suppress(Exception):
            c.predict("clip-tiny", "pmg-aft", "synth-finetune", 1, 10, 0.01, 260, 64, 1, 1, f"hostile-{n}",
                      api_name="/train")
            answered.value += 1


def memory(args) -> None:
    demo, url, _ = serve()
    names = demo.studio.names
    labels = next(iter(demo.studio.presets().values()))
    visitor = client(url, HONEST)
    visitor.predict(*honest_args(names[:1], labels), api_name="/attack")
    before = rss_mb()
    kinds = {"labels": 0, "preview": 0, "attack": 0, "sweep": 0, "refused": 0}
    http = httpx.Client(timeout=60)
    for i in range(args.requests):
        kind = ("labels", "preview", "attack", "labels", "refused", "sweep", "labels", "preview")[i % 8]
        try:
            if kind == "labels":
                http.post(f"{url}gradio_api/run/labels", json={"data": [", ".join(f"l{i}-{k}" for k in range(50))]})
            elif kind == "preview":
                visitor.predict(handle_file(EXAMPLE), api_name="/preview")
            elif kind == "attack":
                visitor.predict(handle_file(EXAMPLE), ", ".join(labels), labels[0], "Linf", 4, 1, 1, "cross-entropy",
                                "", EACH, names[i % len(names):][:2], False, True, api_name="/attack")
            elif kind == "sweep":
                visitor.predict(handle_file(EXAMPLE), ", ".join(labels), labels[0], "Linf", "0, 2, 4", 1, 1,
                                "cross-entropy", "", EACH, names[:1], api_name="/eps_sweep")
            else:
                visitor.predict(handle_file(EXAMPLE), "a,,b", "a", "Linf", 4, 1, 1, "cross-entropy", "", EACH,
                                names[:1], False, True, api_name="/attack")
        except Exception:  # noqa: BLE001 - the refusals are meant
            kinds["refused"] += 1
            continue
        kinds[kind] += 1
    after = rss_mb()
    print(f"{args.requests} requests {kinds}: RSS {before:.0f} -> {after:.0f} MB ({after - before:+.0f} MB)")
    demo.close()


LABEL_CLIENTS = """
import httpx, json, sys, threading
body = json.dumps({"data": ["cat, " * (8 * 2**20)]}).encode()
def send():
    try:
        r = httpx.post(sys.argv[1] + "gradio_api/run/labels", content=body, timeout=300,
                       headers={"content-type": "application/json"})
        print(r.status_code, r.text[:120], flush=True)
    except Exception as e:
        print(repr(e)[:120], flush=True)
threads = [threading.Thread(target=send) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
"""


def big_labels(args) -> None:
    """Four 40 MB label texts at once from another process, so this process's memory is the server's."""
    import subprocess

    demo, url, _ = serve()
    before, peak = rss_mb(), [0.0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak[0] = max(peak[0], int(line.split()[1]) / 1024)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    done = subprocess.run([sys.executable, "-c", LABEL_CLIENTS, url], capture_output=True, text=True, timeout=600)
    stop.set()
    watcher.join()
    print(f"4 x 40 MB label requests: server RSS {before:.0f} MB before, peak {peak[0]:.0f} "
          f"(+{peak[0] - before:.0f} MB), after {rss_mb():.0f} MB")
    print(done.stdout + done.stderr[-500:])
    demo.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["fairness", "memory", "labels"])
    p.add_argument("--train", action="store_true", help="fairness: also a Train at the cap in the jobs lane")
    p.add_argument("--budget", action="store_true", help="fairness: keep the visitors' budget per minute on")
    p.add_argument("--honest", type=int, default=8, help="fairness: honest attacks under load")
    p.add_argument("--budget-s", type=float, default=600, help="fairness: stop measuring after this long")
    p.add_argument("--settle", type=float, default=20, help="fairness: seconds for the hostile places to fill")
    p.add_argument("--requests", type=int, default=2000)
    a = p.parse_args()
    {"fairness": fairness, "memory": memory, "labels": big_labels}[a.part](a)
