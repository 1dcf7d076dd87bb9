"""PMG-AFT Studio: attack CLIP live and compare the original model with its robust fine-tunes.

`python app.py [--host H] [--port P] [--share] [--public] [--models SPEC,...] [--zoo ID,...]`. The entry point
(the Space's app_file): it assembles the tabs of the `studio` package (one builder per tab, each wiring
its own events) and launches them. Handlers are thin calls into pmg_core, which never imports the UI.

Serving in public (a non-loopback --host, --share, a Space, or --public / PMG_PUBLIC=1 on any host,
loopback included, to try the policy before a deployment) puts every piece of work behind the queue
and the policy (studio/safety.py's one door), and checks that at start.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import gradio as gr
from starlette.middleware import Middleware

from pmg_core.core import env
from pmg_core.data import inputs
from pmg_core.core.errors import UserError
from pmg_core.models.clip import ClipModel
from pmg_core.models.zoo import parse_model_specs, parse_zoo_ids
from studio import disk, policy, safety, sessions, visitors
from studio import tab_about, tab_attack, tab_distances, tab_evaluate, tab_leaderboard, tab_train
from studio.assets import CSS
from studio.safety import BodyLimit
from studio.state import Studio

log = logging.getLogger("pmg_studio")
# Handler threads at once, queued and not (Gradio's default is 40): the lanes' runs and a few for the rest.
MAX_THREADS = (safety.PUBLIC_INTERACTIVE_AT_ONCE + safety.PREVIEWS_AT_ONCE + safety.JOBS["concurrency_limit"]
               + safety.LIGHT_THREADS)
PUBLIC_ENV = "PMG_PUBLIC"


def build_app(models: Sequence[ClipModel] | None = None, checkpoint_dir: str | Path | None = None,
              public: bool = False, queue_size: int = 16, extra_models: Sequence[str] = (),
              zoo_ids: Sequence[str] = (), run_dir: str | Path | None = None) -> gr.Blocks:
    """The whole UI. `models`: use these instead of loading the default ones (tests pass tiny models);
    `public`: serving beyond this machine (no server folders, capped jobs, one door: fails if work could
    skip the queue); `extra_models`: more specs; `zoo_ids`: published models fetched in the background
    and added when ready (online only); `run_dir`: this run's folder (disk.run_folder), else a new one."""
    run_dir = Path(run_dir) if run_dir else disk.run_folder()
    studio = Studio.create(models, Path(checkpoint_dir) if checkpoint_dir else None, extra_models, zoo_ids,
                           public=public, out_dir=run_dir / "outputs")
    with gr.Blocks(title="PMG-AFT Studio", delete_cache=(3600, 3600)) as demo:
        demo.studio = studio  # tests reach the state through the app
        gr.Markdown("# PMG-AFT Studio\nAttack CLIP live and see how the original model and its robust "
                    "fine-tunes (TeCoA, PMG-AFT, FARE, yours) answer.")
        mode = gr.Markdown(studio.mode)
        attack = tab_attack.build(studio, demo)
        distances = tab_distances.build(studio, attack)
        evaluate = tab_evaluate.build(studio)
        train = tab_train.build(studio)
        tab_leaderboard.build()
        lists = tab_about.ModelLists(attack.chosen, attack.source, distances.reference, train.base, evaluate.models)
        tab_about.build(studio, demo, lists, after_train=train.run, after_cancel=train.cancel, mode=mode)
        safety.numbers_as_sent(demo)
        safety.cheap_skips(demo)
        if public:  # each lane its own queue, a few places per visitor, in turn (studio/visitors.py); one door
            visitors.keep_peer_addresses()
            demo.queue(max_size=sum(visitors.LANE_QUEUE.values()), api_open=False)
            visitors.limit_queues(demo, visitors.LANE_QUEUE, visitors.PER_SESSION, visitors.PER_VISITOR,
                                  studio.proxies)
            disk.watch_outputs(demo, studio.disk, studio.visitor, studio.out_dir)
            sessions.bound_sessions(demo)
            safety.check_one_door(demo, MAX_THREADS)
        else:
            demo.queue(max_size=queue_size)
    return demo


def launch_options() -> dict:
    """What every launch of the app passes (tests too): look, upload limit, error display, request bodies
    refused over their limit before they are read, handlers in a pool of at most MAX_THREADS threads."""
    return dict(theme=gr.themes.Soft(), css=CSS, max_file_size=inputs.MAX_UPLOAD_BYTES, show_error=True,
                max_threads=MAX_THREADS, state_session_capacity=sessions.CAPACITY,
                app_kwargs={"middleware": [Middleware(BodyLimit)]})


def resolve_host(host: str | None, share: bool, environ: Mapping[str, str], public: bool = False) -> tuple[str, bool]:
    """-> (interface to bind, serving in public?): 127.0.0.1 unless asked for another or running on a Space;
    public beyond loopback, with --share, on a Space, or when asked (--public, $PMG_PUBLIC=1)."""
    on_space = bool(environ.get("SPACE_ID"))
    host = host or ("0.0.0.0" if on_space else "127.0.0.1")
    asked = public or environ.get(PUBLIC_ENV, "").strip().lower() in ("1", "true", "yes")
    return host, asked or share or on_space or not is_loopback(host)


def is_loopback(host: str) -> bool:
    """'localhost', 127.0.0.1 and the rest of 127/8, ::1 (bracketed or not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_name(host: str) -> str:
    """The host as Gradio takes it: an IPv6 address in brackets (Gradio builds its URL as http://HOST:PORT/)."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="PMG-AFT Studio: attack CLIP live and compare robust fine-tunes.")
    p.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1; 0.0.0.0 on a Space)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.add_argument("--public", action="store_true",
                   help=f"the public-server policy on any host, loopback included, to try it before deploying "
                        f"(default: ${PUBLIC_ENV}; on by itself beyond loopback, with --share and on a Space)")
    p.add_argument("--models", default=os.environ.get("PMG_MODELS", ""), metavar="SPEC[,SPEC...]",
                   help="more models besides the default: checkpoint files or names, hf-hub:ORG/REPO, ARCH:TAG "
                        "(default: $PMG_MODELS)")
    p.add_argument("--zoo", default=os.environ.get("PMG_ZOO", ""), metavar="ID[,ID...]",
                   help="published models fetched in the background when online (`python -m pmg_core zoo list`; "
                        "default: $PMG_ZOO, else OpenAI CLIP ViT-B/32 with PMG-AFT, TeCoA and FARE; 'none': CLIP alone)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, public = resolve_host(args.host, args.share, os.environ, args.public)
    try:
        zoo_ids = parse_zoo_ids(args.zoo)
    except UserError as e:
        p.error(str(e))  # an unknown id: one sentence and the usage, before anything loads
    log.info("torch uses %d CPU threads", env.fit_threads())
    # This run's files (outputs, and Gradio's uploads and cache unless the operator placed them) in one
    # folder that goes when the server stops, however it is stopped; earlier runs' leftovers go now.
    disk.remove_leftovers()
    run_dir = disk.run_folder()
    os.environ.setdefault("GRADIO_TEMP_DIR", str(run_dir))
    disk.stop_on_signals()
    if public:
        policy.return_large_blocks()
    start = time.time()
    demo = build_app(public=public, extra_models=parse_model_specs(args.models), zoo_ids=zoo_ids, run_dir=run_dir)
    log.info("models loaded in %.1f s: %s; %s", time.time() - start, ", ".join(demo.studio.names),
             "serving in public" if public else "serving locally")
    demo.launch(server_name=server_name(host), server_port=args.port, share=args.share, **launch_options())


if __name__ == "__main__":
    main()
