"""Share a comparison: a link that reopens the Attack tab with the same image, labels, settings and
models, and runs it again.

The whole state is in the link's query (as TensorFlow Playground keeps its own in its URL), so a
link needs no account and no server-side record, except an uploaded image: that one is kept as the
PNG the models saw (explore.prepare_image puts it on the 8-bit grid, so the kept file gives back the
very tensor that was attacked, and the same verdicts: every attack of the tab is deterministic).
An example is named by its file instead. A label list equal to a preset is named by the preset,
so ImageNet's thousand classes fit a link.

`keep_upload` is the one function that writes a kept image (under the app's output folder, which
the server removes when it exits): what it keeps expires after KEEP_S and at most KEPT_FILES are
kept (the oldest goes first), so links cannot fill the disk; on a public server it counts against
its visitor's disk quota (disk.py), which may delete it sooner. A link that outlives its image still
applies its settings and says that the image is gone. A page opened from a link is handed a copy
in a request folder of its own, never the kept file: Gradio deletes what it served an hour after
the file was made, when it lies in its cache folder, as the output folder does on a public server.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlencode

import torch

from pmg_core.core.errors import UserError, check
from pmg_core.evaluation.explore import prepare_image
from pmg_core.data.images import load_image, new_output_folder, save_png
from pmg_core.core.units import to_255

from . import one_image, sessions
from .state import Studio

KEEP_S = 7 * 24 * 3600  # how long a shared upload is kept (and never beyond the server's run)
KEPT_FILES = 256  # uploads kept for links at once, each a PNG of at most 224x224 (<= 150 kB)
MAX_LABEL_CHARS = 4000  # labels written into a link (longer lists: use a preset); links stay far below 16 kB
TOKEN = re.compile(r"^[0-9a-f]{16}$")
PREFIX = "shared-"  # kept files lie in the output folder itself (its per-request folders expire within the hour)
# The query's keys, one per setting of the tab (short, since people paste links).
KEYS = ("example", "image", "preset", "labels", "true", "eps", "steps", "step", "norm", "loss", "target", "source",
        "models", "defend", "early", "maps", "radius")


def keep_upload(studio: Studio, image: torch.Tensor, request=None) -> str:
    """Keep an uploaded image (as attacked, [3,H,W] on the 8-bit grid) for links; -> its token.

    The one place a link writes to disk: expired files are removed, then the oldest beyond
    KEPT_FILES. `request`: the visitor whose link it is (their disk quota counts the file)."""
    folder = Path(studio.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    kept = sorted(folder.glob(f"{PREFIX}*.png"), key=_mtime)
    now = time.time()
    for old in kept[: max(0, len(kept) - KEPT_FILES + 1)] + [p for p in kept if _mtime(p) < now - KEEP_S]:
        old.unlink(missing_ok=True)
    path = save_png(image, folder / f"{PREFIX}partial-{time.monotonic_ns()}.png")
    token = hashlib.sha256(path.read_bytes()).hexdigest()[:16]  # the same image twice is kept once
    kept = path.replace(folder / f"{PREFIX}{token}.png")
    if studio.disk is not None and request is not None:
        studio.disk.keep(studio.visitor(request), kept)
    return token


def kept_upload(studio: Studio, token: str) -> Path:
    """The kept image of a link's token; refused in one sentence when it is malformed, expired or gone."""
    check(isinstance(token, str) and TOKEN.match(token) is not None, "This link's image reference is not valid.")
    path = Path(studio.out_dir) / f"{PREFIX}{token}.png"
    check(path.is_file() and _mtime(path) >= time.time() - KEEP_S,
          f"This link's uploaded image is no longer kept (links keep one for {KEEP_S // 86400} days, and not after "
          "the server restarts); upload it again.")
    return path


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def example_named(examples: list[list], image: torch.Tensor) -> str | None:
    """The file name of the example whose image, as the models see it, is `image` (None: an upload)."""
    for path, _, _ in examples:
        shown = prepare_image(load_image(path), image.shape[-1])
        if shown.shape == image.shape and torch.equal(shown, image):
            return Path(path).name
    return None


def link_query(studio: Studio, result: dict, examples: list[list], with_maps: bool, with_radius: bool,
               request=None) -> str:
    """The query ("?example=...&eps=...") that reopens the comparison in `result` (the tab's last
    one, one_image.attack_stream: its settings, not the fields as they may have been changed since)
    with the extras ticked now; an uploaded image is kept (keep_upload)."""
    check(bool(result), "Attack first: the link shares the comparison on the page.")
    comp, settings, _, _ = sessions.restore(result)
    example = example_named(examples, comp.image)
    query: dict[str, str] = {"example": example} if example else {"image": keep_upload(studio, comp.image, request)}
    preset = next((name for name, classes in studio.presets().items() if classes == comp.classes), None)
    if preset:
        query["preset"] = preset
    else:
        labels = ", ".join(comp.classes)
        check(len(labels) <= MAX_LABEL_CHARS, f"These labels are too long for a link (at most {MAX_LABEL_CHARS:,} "
                                              f"characters; these are {len(labels):,}); use a label preset.")
        query["labels"] = labels
    query.update({
        "true": comp.true_label or "", "eps": f"{to_255(settings.eps):g}", "steps": str(settings.steps),
        "step": "0" if settings.step_size is None else f"{to_255(settings.step_size):g}", "norm": settings.norm,
        "loss": next(k for k, v in one_image.LOSSES.items() if v == settings.loss), "target": settings.target or "",
        "source": settings.source or "", "models": ",".join(result["models"]),
        "defend": settings.defense, "early": _flag(settings.stop_margin is not None), "maps": _flag(with_maps),
        "radius": _flag(with_radius)})
    return "?" + urlencode(query)


def _flag(value) -> str:
    return "1" if value else "0"


def _number(params: dict, key: str, default):
    try:
        return float(params[key]) if key in params else default
    except ValueError:
        raise UserError(f"This link's {key} is not a number: {params[key][:40]!r}.") from None


def link_settings(studio: Studio, params: dict, examples: list[list]) -> dict | None:
    """A link's query -> the tab's values by name (None: the page was not opened from a link).

    Only the image must resolve here (an example, or a kept upload); every other value is checked
    when the comparison runs, as if typed. A model the link names that is not loaded here is left
    out, and `missing` says so."""
    params = {k: str(v) for k, v in params.items() if k in KEYS}
    if "example" not in params and "image" not in params:
        return None
    if "example" in params:
        image = next((path for path, _, _ in examples if Path(path).name == params["example"]), None)
        check(image is not None, f"This link's example '{params['example'][:60]}' is not among this app's examples.")
    else:  # a copy for the page (module docstring)
        image = shutil.copy(kept_upload(studio, params["image"]), new_output_folder(studio.out_dir))
    presets = studio.presets()
    if "preset" in params:
        check(params["preset"] in presets, f"This link's label preset '{params['preset'][:60]}' is not offered here.")
        classes = presets[params["preset"]]
    else:
        classes = [c.strip() for c in params.get("labels", "").split(",") if c.strip()]
    wanted = [m for m in params.get("models", "").split(",") if m]
    models = [m for m in wanted if m in studio.models] or studio.names
    defend = {v: k for k, v in one_image.DEFENSES.items()}.get(params.get("defend", "none"), "no")
    return dict(image=image, preset=params.get("preset"), labels=", ".join(classes), classes=classes,
                true_label=params.get("true", ""), target=params.get("target", ""),
                eps=_number(params, "eps", None), steps=_number(params, "steps", None),
                step_size=_number(params, "step", None), norm=params.get("norm"), loss=params.get("loss"),
                source=params.get("source") or one_image.EACH_MODEL, models=models, defend=defend,
                stop_early=params.get("early", "1") == "1", with_maps=params.get("maps", "1") == "1",
                with_radius=params.get("radius", "0") == "1", missing=[m for m in wanted if m not in studio.models])
