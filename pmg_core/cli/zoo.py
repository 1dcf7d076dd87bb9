"""`python -m pmg_core zoo list|show|fetch|pin|verify`: the registry of published checkpoints on the command line.

- ``list``: every entry, whether it is in the cache (and its size there), whether it can load here
  (and why not), its published average.
- ``show ID``: the model card (who trained it, how, where from, licence, published numbers).
- ``fetch ID... | --default``: download, check and convert (progress bars; each file's sha256
  printed); ``--require-hashes`` refuses any file whose sha256 differs from the lock file's, and any
  entry the lock file lacks, as pip's hash-checking mode does (the lock: ``--lock`` or $PMG_ZOO_LOCK).
- ``pin [ID...] --out FILE``: write the sha256 of what is in the cache into a lock file.
- ``verify ID --data-root DIR``: run the evaluation recipe behind the entry's published numbers
  and print ours beside theirs, with what differs from their protocol.
"""
from __future__ import annotations


import datetime

from ..models import zoo
from .commands import DEVICE_HELP
from ..core.errors import UserError
from ..models.hub_models import EXTRA, missing_packages
from ..models.integrity import LOCK_ENV, lock_in_force, write_lock
from ..core.units import from_255


def add_parser(sub) -> None:
    p = sub.add_parser("zoo", help="published robust CLIP checkpoints: list, show, fetch, verify",
                       description="The registry of published robust checkpoints (zoo.py): list them, show a card, "
                                   "fetch (download, check, convert into $PMG_CACHE_DIR), verify against the "
                                   "published numbers.")
    zsub = p.add_subparsers(dest="zoo_command", required=True)
    zsub.add_parser("list", help="every entry, cached or not").set_defaults(func=_run_list)
    show = zsub.add_parser("show", help="the model card of one entry")
    show.add_argument("id", help="an entry's id (`python -m pmg_core zoo list`)")
    show.set_defaults(func=_run_show)
    fetch = zsub.add_parser("fetch", help="download, check and convert entries")
    fetch.add_argument("ids", nargs="*", metavar="ID", help="entries' ids (`python -m pmg_core zoo list`)")
    fetch.add_argument("--default", action="store_true", help=f"the app's default set: {', '.join(zoo.DEFAULT_ZOO)}")
    fetch.add_argument("--require-hashes", action="store_true",
                       help="hash-checking mode: every entry must have a line in the lock file, and every file its sha256")
    fetch.add_argument("--lock", default=None, help=f"the lock file (default: ${LOCK_ENV}; `zoo pin` writes one)")
    fetch.set_defaults(func=_run_fetch)
    pin = zsub.add_parser("pin", help="write the sha256 of what is in the cache into a lock file")
    pin.add_argument("ids", nargs="*", metavar="ID", help="entries to pin (default: every cached one)")
    pin.add_argument("--out", default="zoo.lock", help="the lock file to write (default: zoo.lock)")
    pin.set_defaults(func=_run_pin)
    verify = zsub.add_parser("verify", help="evaluate an entry with the recipe of its published numbers")
    verify.add_argument("id", help="an entry's id (`python -m pmg_core zoo list`)")
    verify.add_argument("--data-root", required=True, help="where the datasets are (see docs/REPRODUCE.md)")
    verify.add_argument("--eps", default=None, help="eps values (/255) to check, comma-separated (default: "
                                                     "every published one)")
    verify.add_argument("--limit", type=int, default=None, help="samples per dataset (default: the recipe's)")
    verify.add_argument("--batch-size", type=int, default=100, help="images per forward pass (default 100)")
    verify.add_argument("--device", default=None, help=DEVICE_HELP)
    verify.set_defaults(func=_run_verify)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else (f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB")


def _run_list(args) -> int:
    print(f"cache: {zoo.cache_dir()}" + (f"   mirror: {zoo.mirror()}" if zoo.mirror() else ""))
    w = max(len(e.id) for e in zoo.ZOO.values())
    print(f"  {'id':<{w}} {'method':<10} {'format':<15} {'preset':<7} {'cached':<10} {'published clean/robust@1':<26} base")
    unusable = []
    for e in zoo.ZOO.values():
        cached = "-"
        try:
            if zoo.is_cached(e):
                path = zoo.converted_path(e)
                cached = _size(path.stat().st_size).replace(' ', '') if e.converted else "hub cache"
        except Exception:  # noqa: BLE001 - listing must not stop on one odd cache
            cached = "?"
        at_1 = e.published.robust.get(1) if e.published else None
        pub = f"{e.published.clean:.1f} / {'-' if at_1 is None else f'{at_1:.1f}'}" if e.published else "-"
        mark = "*" if e.id in zoo.DEFAULT_ZOO else " "
        missing = missing_packages(e.needs)
        if missing:
            unusable.append(f"{e.id} (needs {', '.join(missing)})")
        print(f"{mark} {e.id:<{w}} {e.method:<10} {e.format:<15} {e.preset:<7} {cached:<10} {pub:<26} {e.base}"
              + ("  (GPU)" if e.gpu else "") + ("  UNUSABLE here: needs " + ", ".join(missing) if missing else ""))
    print("* the app's default set (PMG_ZOO / --zoo picks others).")
    if unusable:
        print(f"Unusable here, for want of optional packages: {'; '.join(unusable)}; `{EXTRA}` installs them.")
    return 0


def card_lines(e: zoo.Entry) -> list[str]:
    """The model card as lines of text (the CLI's `show`; the app shows the same fields)."""
    lines = [e.title, f"  id: {e.id}", f"  base: {e.base}", f"  method: {e.method}"
             + (f", Linf eps {e.eps_255:g}/255" if e.eps_255 else ""), f"  trained by: {e.trainer}",
             f"  paper: {e.paper} {e.paper_url}".rstrip(), f"  data: {e.data}" if e.data else "",
             f"  judged with preset: {e.preset}", f"  licence: {e.licence}", f"  source: {e.source_page}",
             *(f"  file: {u}" for u in e.urls), "  file: none published" if e.format == "unpublished" else "",
             f"  format: {e.format}" + (f" ({e.note})" if e.note else ""),
             f"  size: {e.size}" if e.size else "",
             f"  sha256: {e.sha256 or 'not pinned in the registry (fetch prints it; `zoo pin` writes a lock file)'}"]
    if e.published:
        p = e.published
        robust = ", ".join(f"{v:.1f} at eps {k}/255" for k, v in p.robust.items())
        lines += [f"  published: clean {p.clean:.1f}, robust {robust} ({p.where})",
                  f"  their recipe: {p.protocol.name}: {p.protocol.attack}, {p.protocol.samples or 'all'} samples "
                  f"per dataset, {p.protocol.prompts} prompts; {p.protocol.note}"]
    return [ln for ln in lines if ln]


def _run_show(args) -> int:
    e = zoo.get(args.id)
    print("\n".join(card_lines(e)))
    print(f"  cached: {'yes, ' + zoo.spec(e) if zoo.is_cached(e) else 'no'}")
    if e.converted and zoo.is_cached(e):
        print(f"  converted from a file with sha256: {zoo.read_metadata(zoo.converted_path(e)).get('source_sha256')}")
    return 0


def _run_fetch(args) -> int:
    from tqdm import tqdm

    ids = list(dict.fromkeys([*(zoo.DEFAULT_ZOO if args.default else ()), *args.ids]))
    if not ids:
        raise UserError("Name the entries to fetch (ids from `python -m pmg_core zoo list`) or give --default.")
    entries = [zoo.get(i) for i in ids]  # every id checked before any download
    lock = lock_in_force(args.lock)
    if args.require_hashes and lock is None:
        raise UserError(f"--require-hashes needs a lock file: --lock FILE, or ${LOCK_ENV} (`python -m pmg_core zoo pin` "
                        "writes one).")
    for e in entries if lock is not None else ():
        lock.pin(e.id)  # all or nothing: an entry without a hash stops the command before any download
    bases: dict = {}
    failed = []
    for e in entries:
        bar = None

        def progress(done, total, e=e):
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=e.id, leave=False)
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            if e.converted and e.base not in bases and not zoo.is_cached(e):
                from ..models.clip import load_model

                bases[e.base] = load_model(e.base)  # shared by every conversion onto it
            where = zoo.fetch(e.id, progress, bases.get(e.base), say=print, lock=lock)
            print(f"{e.id}: ready ({where})")
        except UserError as err:
            failed.append(e.id)
            print(err if e.id in str(err) else f"{e.id}: {err}")  # fetch's sentences name the entry already
        finally:
            if bar is not None:
                bar.close()
    if failed:
        raise UserError(f"{len(failed)} of {len(entries)} could not be fetched: {', '.join(failed)}.")
    return 0


def _run_pin(args) -> int:
    pins = zoo.cached_pins(args.ids)
    if not pins:
        raise UserError(f"Nothing in the cache ({zoo.cache_dir()}) to pin; `python -m pmg_core zoo fetch ID` first.")
    when = datetime.date.today().isoformat()
    path = write_lock(args.out, pins, f"written by `python -m pmg_core zoo pin` on {when} from {zoo.cache_dir()}; "
                                      "`zoo fetch --require-hashes --lock FILE` or PMG_ZOO_LOCK=FILE enforce it")
    for entry_id, p in sorted(pins.items()):
        print(f"{entry_id}: sha256 {p.source}" + (f" (converted: {p.converted})" if p.converted else ""))
    print(f"{len(pins)} entries pinned in {path}.")
    return 0


def _run_verify(args) -> int:
    from ..data.datasets import get_dataset
    from ..evaluation.accuracy import EvalConfig, evaluate
    from ..core.env import default_device

    e = zoo.get(args.id)
    if e.published is None:
        raise UserError(f"'{e.id}' has no published numbers in the registry to verify against.")
    p = e.published
    eps_list = [float(s) for s in args.eps.split(",")] if args.eps else list(p.robust)
    unknown = [x for x in eps_list if x not in p.robust]
    if unknown:
        raise UserError(f"No published number at eps {unknown[0]:g}/255 for '{e.id}'; published: "
                        f"{', '.join(f'{k:g}' for k in p.robust)}.")
    available, missing = [], []
    for name in p.protocol.datasets:
        try:
            get_dataset(name, split="test", root=args.data_root)
            available.append(name)
        except UserError as err:
            missing.append(f"{name} ({err})")
    if not available:
        raise UserError(f"None of the recipe's datasets is under {args.data_root}: {'; '.join(missing)}")
    device = args.device or default_device()
    model = zoo.load_entry(e.id, device=device, say=print)
    print(f"{e.id}: {p.protocol.name}, {len(available)} of {len(p.protocol.datasets)} datasets"
          + (f" (missing: {'; '.join(missing)})" if missing else ""))
    rows = []
    for eps in eps_list:
        cfg = EvalConfig(models=[e.id], datasets=available, eps=from_255(eps), steps=p.protocol.steps,
                         step_size=None if p.protocol.attack != "pgd" else from_255(1), attack=p.protocol.attack,
                         limit=args.limit or p.protocol.samples, batch_size=args.batch_size, device=device,
                         data_root=args.data_root, prompts=p.protocol.prompts)
        results = evaluate(cfg, models=[model], progress=True)["results"]
        clean = 100 * sum(r["clean_acc"] for r in results) / len(results)
        robust = 100 * sum(r["robust_acc"] for r in results) / len(results)
        rows.append((eps, clean, robust))
    print("\n| eps (/255) | clean ours | clean theirs | robust ours | robust theirs |\n|---:|---:|---:|---:|---:|")
    for eps, clean, robust in rows:
        print(f"| {eps:g} | {clean:.1f} | {p.clean:.1f} | {robust:.1f} | {p.robust[eps]:.1f} |")
    print(f"\nTheirs: {p.where}. What differs: {p.protocol.note}.")
    return 0
