"""The one place that knows which models exist: published robust checkpoints, and model discovery.

The registry (``ZOO``) is data, like open_clip's pretrained table: each ``Entry`` says what a
published checkpoint is (base ``ARCH:TAG``, where its file lives and in which format), who
trained it and how (paper, data, eps, method), which numerics judge it (``preset``), its licence,
the numbers its authors published and the recipe behind them, and a pinned sha256 where one is
known. None is pinned yet: nobody here could reach the sources, so ``fetch`` prints each file's
hash for a maintainer to pin; a pinned hash that does not match refuses the file.

``fetch(id)`` turns an entry into something ``load_model`` reads:
- ``open_clip`` / ``hf-hub`` entries are open_clip models; huggingface_hub downloads and caches
  them (resume and progress are its own), so fetching is loading them once;
- ``pth.tar`` / ``state-dict`` entries are downloaded (pmg_core.downloads: progress, resume,
  bounded waits, no HTML, atomic landing), unpickled safely and converted by pmg_core.importers
  (every key and shape must fit the base, every value finite) into a fine-tune checkpoint in the
  cache, ``<cache>/models/<id>.safetensors``, whose metadata keeps the trainer, source address,
  licence and sha256; the downloaded file is deleted once converted.
The cache is ``$PMG_CACHE_DIR`` (default: ``pmg-aft-studio`` in the user's cache folder).
``$PMG_ZOO_MIRROR`` (a base URL) fetches converted checkpoints from a mirror instead,
``<mirror>/<id>.safetensors``: what ``fetch`` leaves in the cache, uploaded as is (safetensors
only, nothing to unpickle); a mirrored file must carry its entry's id and fit the base.

Discovery, for the app and the commands:
- ``load_default_models``: what the app serves when nobody names models (real CLIP and its
  fine-tunes online, the embedded tiny world offline, random weights as the last resort), plus
  the specs a person adds; one that fails is named in the mode text and skipped.
- ``finetunes_of``: the fine-tune checkpoints of one loaded base in a folder (the app's rescan).
- ``load_models`` / ``load_sharing_bases``: load specs so that fine-tunes share a base already
  loaded (one text tower and one text-feature cache per base).
- ``parse_model_specs`` and ``order_key``: how people write lists of models, and the order they see.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import env
from .env import cache_dir
from .checkpoints import read_metadata
from .errors import UserError, check, first_line
from .models import OPENAI_VIT_B32, ClipModel, checkpoint_path, list_checkpoints, load_checkpoint_model, load_model

log = logging.getLogger(__name__)
KNOWN_ORDER = ("clip", "tecoa", "pmg-aft", "fare")  # how checkpoints are listed: original first


# --- the registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Protocol:
    """How a set of published numbers was made: what `zoo verify` replays."""

    name: str
    datasets: tuple[str, ...]  # this project's dataset names
    attack: str  # evaluate's attack names
    steps: int
    prompts: str  # "clip" (OpenAI's names and templates, as CLIP_benchmark) | "public-code"
    samples: int | None  # per dataset; None: every test image
    note: str  # what differs from theirs, in a sentence


@dataclass(frozen=True)
class Published:
    """Average zero-shot accuracy (%) its authors report: clean, and robust at each Linf eps (/255)."""

    clean: float
    robust: dict  # eps (/255) -> robust accuracy %
    protocol: Protocol
    where: str  # the table the numbers come from


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    base: str  # what load_model takes for its base: ARCH:TAG, or the hf-hub id of a whole model
    format: str  # open_clip | hf-hub | pth.tar | state-dict
    urls: tuple[str, ...] = ()  # where the file lives, tried in order (empty: open_clip/hf-hub know)
    filename: str = ""
    method: str = "base"  # clean CLIP is "base"
    trainer: str = ""
    paper: str = ""
    paper_url: str = ""
    source_page: str = ""
    data: str = ""
    eps_255: float | None = None
    preset: str = "paper"
    licence: str = ""
    published: Published | None = None
    sha256: str = ""  # pinned hash of the file at `urls`; empty: not pinned yet
    size: str = ""  # download size, where known
    gpu: bool = False  # too big to be pleasant on a CPU
    note: str = ""

    @property
    def converted(self) -> bool:
        """Downloaded and converted here (a fine-tune checkpoint), not loaded by open_clip itself."""
        return self.format in ("pth.tar", "state-dict")

    def card(self) -> dict:
        """Who made it and where it is from: kept in the converted checkpoint's metadata, shown on About."""
        return {k: v for k, v in {
            "zoo_id": self.id, "title": self.title, "trainer": self.trainer, "paper": self.paper,
            "paper_url": self.paper_url, "source_page": self.source_page, "source_url": (self.urls or ("",))[0],
            "licence": self.licence, "data": self.data, "eps_255": self.eps_255, "method": self.method,
            "preset": self.preset}.items() if v not in ("", None)}


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def _tuebingen(share: str, name: str) -> str:
    return f"https://nc.mlcloud.uni-tuebingen.de/index.php/s/{share}/download/{name}"


PAPER_16 = ("cifar10", "cifar100", "stl10", "sun397", "food101", "oxford-pets", "flowers102", "dtd", "eurosat",
            "fgvc-aircraft", "imagenet", "caltech101", "caltech256", "stanford-cars", "pcam")
ROBUSTVLM_ZERO_SHOT = Protocol(
    "RobustVLM zero-shot (CLIP_benchmark)",
    ("cifar10", "stl10", "cifar100", "stanford-cars", "caltech101", "oxford-pets", "flowers102", "dtd", "eurosat",
     "fgvc-aircraft", "pcam"),
    "autoattack", 100, "clip", 1000,
    "their average also spans ImageNet-R and ImageNet-Sketch, which this project has no loader for; AutoAttack "
    "is APGD-CE then APGD-T in both, but here APGD-T needs 4 classes, there 3")
TTC_PROTOCOL = Protocol(
    "test-time counterattacks repo (PMG-AFT protocol)", PAPER_16, "pgd", 10, "public-code", None,
    "no numbers of these files are registered yet; verify prints ours only")

TTC = dict(trainer="Xing, Zhao, Sebe (test-time counterattacks repo: one protocol for all three)",
           paper="Xing et al., CLIP is Strong Enough to Fight Back (CVPR 2025)",
           paper_url="https://arxiv.org/abs/2503.03613",
           source_page="https://github.com/Sxing2/CLIP-Test-time-Counterattacks (download_weights.py)",
           data="TinyImageNet (train/val split: the repo's support/tinyimagenet_refined_labels.json)",
           licence="none stated by the repository", preset="paper", format="pth.tar",
           note="a .pth.tar dict whose vision_encoder_state_dict holds the fp32 image encoder (OpenAI key "
                "names); pickled under numpy 1.26; trained with CLIP's normalisation and x100 logits")
RVLM = dict(trainer="Schlarmann, Singh, Croce, Hein (RobustVLM)",
            paper="Schlarmann et al., Robust CLIP (ICML 2024)", paper_url="https://arxiv.org/abs/2402.12336",
            source_page="https://github.com/chs20/RobustVLM (README, Additional Models)",
            data="ImageNet", licence="MIT (RobustVLM repository)", preset="paper", format="state-dict",
            note="a plain state dict of the image encoder (OpenAI key names)")
RVLM_HUB = dict(RVLM, format="hf-hub", licence="see the model's hub card", note="an open_clip model on the hub "
                "(its own config and text encoder)")


def _published(clean, r1, r2, r4, where="RobustVLM README, Additional Models (ViT-B/32)"):
    return Published(clean, {1: r1, 2: r2, 4: r4}, ROBUSTVLM_ZERO_SHOT, where)


ENTRIES = (
    Entry("clip-b32", "OpenAI CLIP ViT-B/32", OPENAI_VIT_B32, "open_clip", trainer="OpenAI",
          paper="Radford et al., Learning Transferable Visual Models From Natural Language Supervision (ICML 2021)",
          paper_url="https://arxiv.org/abs/2103.00020", source_page="https://github.com/openai/CLIP",
          data="OpenAI's 400M image-text pairs", licence="MIT (openai/CLIP)", size="605 MB (open_clip's hub copy)"),
    Entry("pmg-aft-b32", "PMG-AFT ViT-B/32 (test-time counterattacks repo)", OPENAI_VIT_B32,
          urls=(_drive("1JMXdMheNaYWiwqcWI0tvRrp6MBweQagn"),), filename="PMG_AFT.pth.tar", method="pmg-aft", **TTC),
    Entry("tecoa-b32", "TeCoA ViT-B/32 (test-time counterattacks repo)", OPENAI_VIT_B32,
          urls=(_drive("1m4Iw9pCjtBHj7OVqHFlRu2OkO0rd7C7j"),), filename="TeCoA.pth.tar", method="tecoa", **TTC),
    Entry("fare-b32", "FARE ViT-B/32 (test-time counterattacks repo)", OPENAI_VIT_B32,
          urls=(_drive("1IMtb5SG1ajYphR8cK-3w3Nr7zvAHa8bi"),), filename="FARE.pth.tar", method="fare", **TTC),
    Entry("tecoa1-b32-rvlm", "TeCoA eps 1 ViT-B/32 (RobustVLM)", OPENAI_VIT_B32,
          urls=(_tuebingen("LHgi84RskrtYCiX", "vitb32_tecoa_eps_1.pt"),), filename="vitb32_tecoa_eps_1.pt",
          method="tecoa", eps_255=1, published=_published(53.1, 38.8, 26.6, 9.6), **RVLM),
    Entry("fare1-b32-rvlm", "FARE eps 1 ViT-B/32 (RobustVLM)", OPENAI_VIT_B32,
          urls=(_tuebingen("cCgQAS8QW9arj9d", "vitb32_fare_eps_1.pt"),), filename="vitb32_fare_eps_1.pt",
          method="fare", eps_255=1, published=_published(60.5, 38.0, 20.1, 2.9), **RVLM),
    Entry("tecoa4-b32-rvlm", "TeCoA eps 4 ViT-B/32 (RobustVLM)", OPENAI_VIT_B32,
          urls=(_tuebingen("RiWGQzBrqYNCaDk", "vitb32_tecoa_eps_4.pt"),), filename="vitb32_tecoa_eps_4.pt",
          method="tecoa", eps_255=4, published=_published(44.0, 38.2, 33.1, 23.6), **RVLM),
    Entry("fare4-b32-rvlm", "FARE eps 4 ViT-B/32 (RobustVLM)", OPENAI_VIT_B32,
          urls=(_tuebingen("3nMxBKEwbWnDymT", "vitb32_fare_eps_4.pt"),), filename="vitb32_fare_eps_4.pt",
          method="fare", eps_255=4, published=_published(48.6, 40.6, 33.7, 21.9), **RVLM),
    Entry("tecoa4-b32-laion", "TeCoA eps 4 ViT-B/32 LAION-2B (RobustVLM follow-up)",
          "hf-hub:chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K", method="tecoa", eps_255=4,
          published=_published(46.8, 40.6, 34.5, 23.3, "RobustVLM README, Additional Models (ViT-B/32 LAION 2B)"),
          **RVLM_HUB),
    Entry("fare4-b32-laion", "FARE eps 4 ViT-B/32 LAION-2B (RobustVLM follow-up)",
          "hf-hub:chs20/FARE4-ViT-B-32-laion2B-s34B-b79K", method="fare", eps_255=4,
          published=_published(53.8, 44.4, 35.5, 21.2, "RobustVLM README, Additional Models (ViT-B/32 LAION 2B)"),
          **RVLM_HUB),
    *(Entry(f"{m}{e}-l14", f"{'TeCoA' if m == 'tecoa' else 'FARE'} eps {e} ViT-L/14 (RobustVLM)",
            f"hf-hub:chs20/{m}{e}-clip", method=m, eps_255=e, gpu=True, size="about 1.1 GB (image encoder)",
            **{**RVLM_HUB, "data": "ImageNet, 2 epochs"}) for m in ("tecoa", "fare") for e in (2, 4)),
)
ZOO: dict[str, Entry] = {e.id: e for e in ENTRIES}
REAL_CLIP = "clip-b32"  # the base the app serves online
DEFAULT_ZOO = (REAL_CLIP, "pmg-aft-b32", "tecoa-b32", "fare-b32")  # one base, one protocol, three methods


def register(entry: Entry) -> Entry:
    """Add an entry (tests register ones whose base is a tiny model); an id is registered once."""
    check(entry.id not in ZOO or ZOO[entry.id] == entry, f"The zoo already has an entry '{entry.id}'.")
    check(entry.format in FORMATS, f"Unknown zoo format '{entry.format}': use one of {', '.join(FORMATS)}.")
    ZOO[entry.id] = entry
    return entry


FORMATS = ("open_clip", "hf-hub", "pth.tar", "state-dict")


def get(entry_id: str) -> Entry:
    check(entry_id in ZOO, f"The zoo has no model '{entry_id}'; `python -m pmg_core zoo list` shows them.")
    return ZOO[entry_id]


def with_bases(ids: Sequence[str]) -> list[str]:
    """`ids` with, before each converted entry, the registry entry of its base (fetched first, then shared)."""
    out: list[str] = []
    for entry_id in ids:
        entry = get(entry_id)
        base = next((e.id for e in ZOO.values() if e.format == "open_clip" and e.base == entry.base), None)
        for i in ([base] if entry.converted and base else []) + [entry_id]:
            if i not in out:
                out.append(i)
    return out


def parse_zoo_ids(text: str | None) -> list[str]:
    """'a,b' -> ['a', 'b'] (--zoo / PMG_ZOO); empty -> the default set; 'none' -> CLIP alone (no published
    fine-tunes). Unknown ids are refused."""
    text = (text or "").strip()
    if not text:
        return list(DEFAULT_ZOO)
    if text.lower() == "none":
        return [DEFAULT_ZOO[0]]
    ids = [s.strip() for s in text.split(",") if s.strip()]
    for i in ids:
        get(i)
    return ids


# --- the cache and fetching -----------------------------------------------------------------------

def converted_path(entry: Entry) -> Path:
    return cache_dir() / "models" / f"{entry.id}.safetensors"


def mirror() -> str:
    """$PMG_ZOO_MIRROR: a base URL holding converted checkpoints as <id>.safetensors ('' for none)."""
    return os.environ.get("PMG_ZOO_MIRROR", "").strip().rstrip("/")


def mirror_url(entry: Entry) -> str | None:
    return f"{mirror()}/{entry.id}.safetensors" if mirror() else None


def is_cached(entry: Entry) -> bool:
    """Usable without network: converted in the cache, or (open_clip / hub models) in the hub cache."""
    if entry.converted:
        return converted_path(entry).is_file()
    from .models import _cached_hub_file, _open_clip

    if entry.format == "hf-hub":
        return _cached_hub_file(entry.base[len("hf-hub:"):] + "/open_clip_config.json") is not None
    arch, tag = entry.base.split(":", 1)
    cfg = _open_clip().get_pretrained_cfg(arch, tag) or {}
    return _cached_hub_file(cfg.get("hf_hub", "")) is not None


def spec(entry: Entry) -> str:
    """What load_model takes once the entry is fetched."""
    return str(converted_path(entry)) if entry.converted else entry.base


Report = Callable[[str], None]


def fetch(entry_id: str, progress=None, base_model: ClipModel | None = None, say: Report = log.info) -> str:
    """Make `entry_id` loadable here (download, check, convert); returns its spec for load_model.

    `progress(done_bytes, total_bytes_or_None)` sees the download; `say` gets one line per stage
    (the file's sha256 among them); `base_model`: the loaded base, shared by the conversion.
    """
    entry = get(entry_id)
    if not entry.converted:
        if base_model is None or base_model.spec != entry.base:
            load_model(entry.base)  # open_clip / huggingface_hub download it into their cache
        return entry.base
    out = converted_path(entry)
    if out.is_file():
        return str(out)
    from .downloads import download

    folder = cache_dir() / "downloads" / entry.id
    mirrored_at = mirror_url(entry)
    try:
        if mirrored_at:
            got = download(mirrored_at, folder / out.name, progress=progress, label=f"{entry.id} (mirror)")
            say(f"{entry.id}: sha256 {got.sha256} ({got.size:,} bytes, from the mirror)")
            _check_mirrored(entry, got.path, base_model)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got.path, out)
            return str(out)
        errors = []
        for url in entry.urls:
            try:
                got = download(url, folder / entry.filename, sha256=entry.sha256, progress=progress, label=entry.id)
                break
            except UserError as e:
                errors.append(e)
        else:
            raise errors[-1] if errors else UserError(f"The zoo entry '{entry.id}' names no file to download.")
        say(f"{entry.id}: sha256 {got.sha256} ({got.size:,} bytes){'' if entry.sha256 else ' - not pinned in the registry yet'}")
        _convert(entry, got.path, got.sha256, url, base_model)
        return str(out)
    finally:
        _tidy(folder)


def _convert(entry: Entry, raw: Path, digest: str, url: str, base_model: ClipModel | None) -> None:
    from .importers import import_checkpoint

    meta = {**entry.card(), "source_url": url, "source_sha256": digest, "zoo_format": entry.format}
    try:
        import_checkpoint(str(raw), converted_path(entry), base=entry.base, method=entry.method, preset=entry.preset,
                          extra_metadata=meta, base_model=base_model)
    except UserError as e:
        raise UserError(f"{entry.id}: {e}") from None


def _check_mirrored(entry: Entry, path: Path, base_model: ClipModel | None) -> None:
    """A mirrored file is a converted checkpoint of this very entry that fits its base (read as data)."""
    try:
        meta = read_metadata(path)
        check(meta.get("zoo_id") == entry.id and meta.get("base") == entry.base,
              f"the mirror's {path.name} is not a converted '{entry.id}' (fine-tune of {entry.base})")
        check(not entry.sha256 or meta.get("source_sha256") == entry.sha256,
              f"the mirror's {path.name} was converted from a file that does not match the pinned sha256")
        model = load_checkpoint_model(path, base=base_model if base_model is not None and base_model.spec == entry.base
                                      else None)
        bad = next((k for k, v in model.visual.state_dict().items()
                    if v.is_floating_point() and not torch.isfinite(v).all()), None)
        check(bad is None, f"the mirror's {path.name} has NaN or infinite values in '{bad}'")
    except UserError as e:
        path.unlink(missing_ok=True)
        raise UserError(f"{entry.id}: {str(e).rstrip('.')}; refused.") from None


def _tidy(folder: Path) -> None:
    """Drop what a fetch left in its download folder except a partial file the server can resume."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if not p.name.endswith(".part"):
            p.unlink(missing_ok=True) if p.is_file() else shutil.rmtree(p, ignore_errors=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def load_entry(entry_id: str, device="cpu", base: ClipModel | None = None, progress=None,
               say: Report = log.info) -> ClipModel:
    """Fetch (if needed) and load a zoo model, sharing `base` when it is its base; its card joins its metadata.

    open_clip / hf-hub entries are loaded once, by open_clip (huggingface_hub downloads them); a
    hub model is named by its zoo id, the OpenAI base by its spec as everywhere else."""
    entry = get(entry_id)
    shared = base if base is not None and base.spec == entry.base else None
    if entry.converted:
        return load_model(fetch(entry_id, progress, shared, say), device=device, base=shared)
    if shared is not None:
        return shared
    model = load_model(entry.base, device=device)
    if entry.format == "hf-hub":
        model.name = entry.id
    model.metadata = {**(model.metadata or {}), **entry.card()}
    return model


def order_key(model: ClipModel) -> tuple:
    """Bases first, then the original CLIP, TeCoA, PMG-AFT, FARE, then the rest by name."""
    name = model.name.lower()
    rank = next((i for i, k in enumerate(KNOWN_ORDER) if name.startswith(k)), len(KNOWN_ORDER))
    return (model.spec != model.base, rank, name)


def load_sharing_bases(spec: str, device, loaded: Sequence[ClipModel]) -> ClipModel:
    """Load `spec`; a fine-tune whose base model is among `loaded` shares it instead of loading it again."""
    bases = {m.spec: m for m in loaded if m.spec == m.base}
    path = checkpoint_path(spec)
    base = bases.get(read_metadata(path).get("base")) if path is not None else None
    return load_model(spec, device=device, base=base)


def load_models(specs: Sequence[str], device) -> list[ClipModel]:
    """Load models, letting fine-tunes of an already loaded base share its text side."""
    out: list[ClipModel] = []
    for spec in specs:
        out.append(load_sharing_bases(spec, device, out))
    return out


def finetunes_of(base: ClipModel, directory: Path, skip: Sequence[str] = (), device=None) -> list[ClipModel]:
    """Every fine-tune checkpoint in `directory` whose base is `base` (unreadable files are skipped and logged)."""
    out = []
    for path in list_checkpoints(directory):
        if path.stem in skip:
            continue
        try:
            meta = read_metadata(path)
            if meta["kind"] == "finetune" and meta.get("base") in (base.spec, base.name):
                out.append(load_checkpoint_model(path, device=device or base.device, base=base))
        except Exception as e:  # noqa: BLE001 - one bad file in the folder must not stop the app
            log.warning("skipping checkpoint %s: %s", path.name, first_line(e))
    return out


def _default_models(directory: Path, wait_for_download: bool = True) -> tuple[list[ClipModel], str]:
    """Real CLIP and its robust fine-tunes online; the embedded tiny world offline; random weights as last resort.
    Online, without `wait_for_download`, a real CLIP not yet in the cache is left to a background
    fetch and the embedded world serves meanwhile."""
    device = env.default_device()
    online = not env.is_offline()
    if online and not wait_for_download and not is_cached(ZOO[REAL_CLIP]):
        models, mode = _embedded_models(directory, device, REAL_CLIP_PENDING[1])
        return models, REAL_CLIP_PENDING[0] + mode
    if online:
        try:
            base = load_model(OPENAI_VIT_B32, device=device)
            base.metadata = {**(base.metadata or {}), **ZOO[REAL_CLIP].card()}
            return [base] + finetunes_of(base, directory), (
                "**Real CLIP**: OpenAI CLIP ViT-B/32 and the robust checkpoints for it found in checkpoints/.")
        except Exception as e:  # noqa: BLE001 - downloads fail in many ways; the embedded default always works
            log.warning("Real CLIP could not be loaded (%s); serving the embedded default instead.", first_line(e))
    return _embedded_models(directory, device)


# The mode text while real CLIP downloads in the background, and once that download failed or ended:
# (the sentence before the embedded world's, why the embedded world serves).
REAL_CLIP_PENDING = ("**Real CLIP is downloading** in the background (progress on the About tab). ",
                     "until real CLIP joins")
REAL_CLIP_FAILED = ("**Real CLIP could not be downloaded** (why: Published models, on the About tab). ",
                    "real CLIP's download failed")
REAL_CLIP_JOINED = ("**Real CLIP has joined**: OpenAI CLIP ViT-B/32 finished downloading in the background. ",
                    "served beside it")


def mode_after_download(mode: str, entry_id: str, failed: bool) -> str:
    """The mode text once `entry_id` finished its background download: real CLIP is no longer 'downloading'."""
    if entry_id != REAL_CLIP:
        return mode
    for pending, now in zip(REAL_CLIP_PENDING, REAL_CLIP_FAILED if failed else REAL_CLIP_JOINED):
        mode = mode.replace(pending, now)
    return mode


def _embedded_models(directory: Path, device, why: str = "offline") -> tuple[list[ClipModel], str]:
    if (directory / "clip-tiny.safetensors").is_file():
        base = load_model(str(directory / "clip-tiny.safetensors"), device=device)
        base.name = "clip-tiny"
        return [base] + finetunes_of(base, directory, skip=("clip-tiny",)), (
            f"**Embedded tiny world** ({why}): a tiny CLIP pretrained by this project on procedurally drawn "
            "32x32 scenes, with its fine-tunes from checkpoints/. Labels outside that world mean little to it.")
    torch.manual_seed(0)
    base = load_model("pmg-tiny", device=device)
    base.name = "pmg-tiny (random weights)"
    return [base] + finetunes_of(base, directory), (
        "**Fallback: random weights.** Neither real CLIP nor the embedded checkpoint clip-tiny was found, so "
        "this is an untrained pmg-tiny model: predictions are meaningless, but every tab works.")


def load_default_models(directory: Path | None = None, extra: Sequence[str] = (),
                        wait_for_download: bool = True) -> tuple[list[ClipModel], str]:
    """The default models plus `extra` specs (checkpoint files, hub ids...); a spec that fails is logged and skipped.
    `wait_for_download` False: an uncached real CLIP is not downloaded here (see _default_models)."""
    models, mode = _default_models(Path(directory or env.checkpoint_dir()), wait_for_download)
    for spec in extra:
        try:
            model = load_sharing_bases(spec, models[0].device, models)
        except Exception as e:  # noqa: BLE001 - the app serves without it and says why
            log.warning("Skipping the model '%s': %s", spec, first_line(e))
            mode += f"\n\nNot loaded: `{spec}` ({first_line(e)})."
            continue
        if model.name not in {m.name for m in models}:
            models.append(model)
    return models, mode


def parse_model_specs(text: str | None) -> list[str]:
    """'a.safetensors, hf-hub:org/repo' -> ['a.safetensors', 'hf-hub:org/repo'] (--models / PMG_MODELS)."""
    return [s.strip() for s in (text or "").split(",") if s.strip()]
