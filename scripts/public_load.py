"""What hostile visitors cost a public server: `python app.py --public` on 127.0.0.1, in a process of its own
(the embedded models, offline), visited from loopback addresses of their own (127.0.0.2 and up), each
client in a process of its own. Every part prints its figures with the machine's load average.

    python scripts/public_load.py fairness --hostile 1      # then --hostile 3
    python scripts/public_load.py bombs
    python scripts/public_load.py sessions [--sessions 1000] [--lifetime 60]
    python scripts/public_load.py memory [--requests 2000]
    python scripts/public_load.py labels

fairness: an honest visitor attacks with the Attack tab's defaults (every model, 10 steps, stop early),
reading each result for --pause seconds first, on the idle server, then while each of --hostile
addresses keeps its places full: four attacks at the cap (TTC, 1,000 fresh labels, no early stop)
each followed by its maps and radius, a Train and an Evaluate at their caps, within their budget
per minute (what is refused, they ask again). Prints the honest median under load over the idle
median, with a 95% bootstrap interval, and the server's peak RSS.
bombs: 16 previews at once of a palette, an RGBA and a 16-bit PNG bomb, from four addresses: the
server's peak RSS growth and what each got. sessions: --sessions sessions with one cheap attack each
(every model, 0 steps, a 640 px photo), RSS before, after and once their lifetime (--lifetime s) is
over. memory: RSS before and after --requests mixed requests (previews, label edits, small attacks and
sweeps, refusals). labels: 4 concurrent 40 MB label requests, peak RSS growth.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from public_server import EXAMPLE, PublicServer, QueueClient, image_bombs  # noqa: E402 - light: no torch in a client

EACH = "each model attacks itself"
HONEST = "127.0.0.100"


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def serve(args, **env) -> PublicServer:
    """A public server with a folder of its own (its temporary files, and the files its visitors send)."""
    folder = Path(tempfile.mkdtemp(prefix="pmg-load-"))
    server = PublicServer(folder, env=env)
    print(f"server pid {server.process.pid} at {server.url} ({load()})", flush=True)
    return server


def finish(server: PublicServer, sig=None) -> None:
    """Stop the server and remove its folder."""
    server.stop(sig)
    shutil.rmtree(server.folder, ignore_errors=True)


def honest_args(image, models, labels):
    return [image, ", ".join(labels), labels[0], "Linf", 4, 10, 1, "cross-entropy", "", EACH, models, False, True]


def fairness(args) -> None:
    server = serve(args)
    try:
        honest = QueueClient(server.url, HONEST)
        names = MODELS
        image = honest.upload(EXAMPLE)

        def timed() -> float:
            start = time.perf_counter()
            ok, out = honest.call("attack", *honest_args(image, names, SHAPES))
            assert ok, out
            return time.perf_counter() - start

        def read_then_attack() -> float:
            time.sleep(args.pause)  # a person reads the last result before the next attack
            return timed()

        timed()  # warm-up
        idle = [read_then_attack() for _ in range(args.honest)]
        idle_load = load()
        ctx = multiprocessing.get_context("spawn")
        stop, answered, refused = ctx.Event(), ctx.Value("i", 0), ctx.Value("i", 0)
        hostile = [ctx.Process(target=hostile_address, args=(server.url, f"127.0.0.{2 + a}", stop, answered, refused),
                               daemon=True) for a in range(args.hostile)]
        for p in hostile:
            p.start()
        time.sleep(args.settle)
        server.reset_peak()
        loaded, deadline = [], time.time() + args.budget_s
        while len(loaded) < args.honest and time.time() < deadline:
            loaded.append(read_then_attack())
        busy_load, peak = load(), server.status("VmHWM")
        stop.set()
        ratio = statistics.median(loaded) / statistics.median(idle)
        low, high = ratio_interval(loaded, idle)
        print(f"hostile addresses: {args.hostile} (each: 4 attacks at the cap with maps and radius, a Train and an "
              f"Evaluate at the cap, within the budget per minute)")
        print(f"idle: {', '.join(f'{t:.2f}' for t in idle)} s (median {statistics.median(idle):.2f}; {idle_load})")
        print(f"under attack: {', '.join(f'{t:.2f}' for t in loaded)} s (median {statistics.median(loaded):.2f}; "
              f"{busy_load})")
        print(f"ratio (median under attack / idle median, n = {len(loaded)} and {len(idle)}): {ratio:.2f} "
              f"(95% bootstrap interval {low:.2f}-{high:.2f})")
        print(f"server peak RSS under attack: {peak:.0f} MB")
        print(f"hostile jobs answered: {answered.value}, refused: {refused.value}")
        for p in hostile:
            p.kill()
    finally:
        finish(server, 9)


def ratio_interval(loaded: list[float], idle: list[float], draws: int = 10_000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of median(loaded) / median(idle), each list resampled on its own."""
    rng = random.Random(0)
    ratios = sorted(statistics.median(rng.choices(loaded, k=len(loaded))) /
                    statistics.median(rng.choices(idle, k=len(idle))) for _ in range(draws))
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


MODELS = ["clip-tiny", "tecoa-tiny", "pmg-aft-tiny", "fare-tiny", "tga-zsr-tiny"]
SHAPES = ["circle", "square", "triangle", "diamond", "cross", "star"]


def hostile_address(url, address, stop, answered, refused) -> None:
    """One hostile address, a process of its own (a machine elsewhere): at every one of its caps at once."""
    os.nice(10)  # a client stands for another machine: its own parsing should not take the server's cores
    kinds = ["attack"] * 4 + ["train", "evaluate"]
    clients = [threading.Thread(target=hostile_client, args=(url, address, kind, stop, answered, refused))
               for kind in kinds]
    for t in clients:
        t.start()
    for t in clients:
        t.join()


def hostile_client(url, address, kind, stop, answered, refused) -> None:
    """One hostile session at its cap, again and again, from `address`."""
    c = QueueClient(url, address, timeout=900)
    image = c.upload(EXAMPLE) if kind == "attack" else None
    n, said = 0, set()
    while not stop.is_set():
        n += 1
        c.new_session()
        if kind == "attack":  # 5 x 23 passes x (1 + 4 EOT) = 575 of 600; maps and radius 5 x (5 x 23 + 4) = 595 of 600
            fresh = [f"thing {k} {address}-{n}" for k in range(1000)]
            ok, why = c.call("attack", image, ", ".join(fresh), fresh[0], "Linf", 4, 22, 1, "cross-entropy", "", EACH,
                             MODELS, "TTC (test-time counterattacks)", False)
            if ok:
                ok, why = c.call("attack_extras", None, True, True)
        elif kind == "train":  # 260 steps x 64 images x 12 passes: near the 200,000 cap
            ok, why = c.call("train", "clip-tiny", "pmg-aft", "synth-finetune", 1, 10, 0.01, 260, 64, 1, 1,
                             f"hostile-{address}-{n}")
        else:  # 180 samples x the mini group's 10 tasks x 5 models x 11 passes: 99,000 of the 100,000 cap
            ok, why = c.call("evaluate", MODELS, "mini", "", 1, 10, 1, 180)
        with (answered if ok else refused).get_lock():
            (answered if ok else refused).value += 1
        if not ok:
            kind_of = re.sub(r"[0-9][0-9,]*", "N", str(why))  # each kind of refusal once: what held the visitor back
            if kind_of not in said:
                said.add(kind_of)
                print(f"{address} {kind} refused: {str(why)[:150]}", file=sys.stderr, flush=True)
            time.sleep(0.5)


def bombs(args) -> None:
    server = serve(args)
    try:
        files = list(image_bombs(server.folder / "files").values())
        clients = [QueueClient(server.url, f"127.0.0.{2 + i // 4}") for i in range(16)]
        uploaded = [c.upload(files[i % 3]) for i, c in enumerate(clients)]
        for round_ in range(args.rounds):
            before = server.reset_peak()
            answers = [None] * 16
            threads = [threading.Thread(target=lambda i: answers.__setitem__(i, clients[i].call("preview", uploaded[i])),
                                        args=(i,)) for i in range(16)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.perf_counter() - start
            time.sleep(2)
            print(f"round {round_ + 1}: 16 previews (palette, RGBA, 16-bit bombs) in {took:.1f} s: server RSS "
                  f"{before:.0f} MB before, peak +{server.status('VmHWM') - before:.0f} MB, "
                  f"after +{server.status('VmRSS') - before:.0f} MB; {sum(ok for ok, _ in answers)} shown, the rest: "
                  f"{sorted({str(out)[:70] for ok, out in answers if not ok})} ({load()})", flush=True)
    finally:
        finish(server)


def sessions(args) -> None:
    from PIL import Image
    import numpy as np

    server = serve(args, PMG_SESSION_LIFETIME_S=str(args.lifetime))
    try:
        photo = server.folder / "photo.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (640, 640, 3), np.uint8)).save(photo)
        visitor = QueueClient(server.url, HONEST)
        image = visitor.upload(photo)
        cheap = [image, ", ".join(SHAPES), SHAPES[0], "Linf", 4, 0, 1, "cross-entropy", "", EACH, MODELS, False, True]
        for _ in range(3):
            visitor.new_session()
            assert visitor.call("attack", *cheap)[0]
        time.sleep(args.lifetime * 1.5)
        before = server.reset_peak()
        start = time.perf_counter()
        for i in range(args.sessions):
            visitor.new_session()
            ok, out = visitor.call("attack", *cheap)
            if not ok and "upload the image again" in str(out):  # the visitor's disk quota dropped its oldest file
                cheap[0] = visitor.upload(photo)
                ok, out = visitor.call("attack", *cheap)
            assert ok, out
        took = time.perf_counter() - start
        after = server.status("VmRSS")
        time.sleep(args.lifetime * 1.5)
        print(f"{args.sessions} sessions with one cheap attack each in {took:.0f} s: server RSS {before:.0f} MB before, "
              f"{after:.0f} MB after (+{after - before:.0f}), peak {server.status('VmHWM'):.0f} MB; "
              f"{server.status('VmRSS'):.0f} MB ({server.status('VmRSS') - before:+.0f}) once their lifetime of "
              f"{args.lifetime:g} s was over ({load()})")
    finally:
        finish(server)


def memory(args) -> None:
    import httpx

    server = serve(args)
    try:
        visitor = QueueClient(server.url, HONEST)
        image = visitor.upload(EXAMPLE)
        visitor.call("attack", *honest_args(image, MODELS[:1], SHAPES))
        before = server.status("VmRSS")
        kinds = {"labels": 0, "preview": 0, "attack": 0, "sweep": 0, "refused": 0}
        http = httpx.Client(timeout=60)
        for i in range(args.requests):
            kind = ("labels", "preview", "attack", "labels", "refused", "sweep", "labels", "preview")[i % 8]
            if kind == "labels":
                ok = http.post(f"{server.url}gradio_api/run/labels",
                               json={"data": [", ".join(f"l{i}-{k}" for k in range(50))]}).status_code == 200
            elif kind == "preview":
                ok, _ = visitor.call("preview", image)
            elif kind == "attack":
                ok, _ = visitor.call("attack", image, ", ".join(SHAPES), SHAPES[0], "Linf", 4, 1, 1, "cross-entropy", "",
                                     EACH, MODELS[i % len(MODELS):][:2], False, True)
            elif kind == "sweep":
                ok, _ = visitor.call("eps_sweep", image, ", ".join(SHAPES), SHAPES[0], "Linf", "0, 2, 4", 1, 1,
                                     "cross-entropy", "", EACH, MODELS[:1])
            else:
                ok, _ = visitor.call("attack", image, "a,,b", "a", "Linf", 4, 1, 1, "cross-entropy", "", EACH,
                                     MODELS[:1], False, True)
            kinds[kind if ok else "refused"] += 1
        after = server.status("VmRSS")
        print(f"{args.requests} requests {kinds}: server RSS {before:.0f} -> {after:.0f} MB ({after - before:+.0f} MB; "
              f"{load()})")
    finally:
        finish(server)


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
    """Four 40 MB label texts at once from another process."""
    import subprocess

    server = serve(args)
    try:
        before = server.reset_peak()
        done = subprocess.run([sys.executable, "-c", LABEL_CLIENTS, server.url], capture_output=True, text=True,
                              timeout=600)
        print(f"4 x 40 MB label requests: server RSS {before:.0f} MB before, peak +{server.status('VmHWM') - before:.0f} "
              f"MB, after {server.status('VmRSS'):.0f} MB ({load()})")
        print(done.stdout + done.stderr[-500:])
    finally:
        finish(server)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["fairness", "bombs", "sessions", "memory", "labels"])
    p.add_argument("--hostile", type=int, default=1, help="fairness: hostile addresses, each at its caps")
    p.add_argument("--honest", type=int, default=8, help="fairness: honest attacks idle and under load")
    p.add_argument("--budget-s", type=float, default=900, help="fairness: stop measuring after this long")
    p.add_argument("--pause", type=float, default=3, help="fairness: seconds the honest visitor reads each result")
    p.add_argument("--settle", type=float, default=30, help="fairness: seconds for the hostile places to fill")
    p.add_argument("--rounds", type=int, default=2, help="bombs: rounds of 16 previews")
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--lifetime", type=float, default=60, help="sessions: the server's session lifetime (s)")
    p.add_argument("--requests", type=int, default=2000)
    a = p.parse_args()
    {"fairness": fairness, "bombs": bombs, "sessions": sessions, "memory": memory, "labels": big_labels}[a.part](a)
