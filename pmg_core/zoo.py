"""The one place that knows which models exist: model discovery for the app and the commands.

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
from pathlib import Path
from typing import Sequence

import torch

from .checkpoints import load_checkpoint_model, read_metadata
from .errors import first_line
from .models import (CHECKPOINT_DIR, OPENAI_VIT_B32, ClipModel, checkpoint_path, default_device, is_offline,
                     list_checkpoints, load_model)

log = logging.getLogger(__name__)
KNOWN_ORDER = ("clip", "tecoa", "pmg-aft", "fare")  # how checkpoints are listed: original first


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


def _default_models(directory: Path) -> tuple[list[ClipModel], str]:
    """Real CLIP and its robust fine-tunes online; the embedded tiny world offline; random weights as last resort."""
    device = default_device()
    if not is_offline():
        try:
            base = load_model(OPENAI_VIT_B32, device=device)
            return [base] + finetunes_of(base, directory), (
                "**Real CLIP**: OpenAI CLIP ViT-B/32 and the robust checkpoints for it found in checkpoints/.")
        except Exception as e:  # noqa: BLE001 - downloads fail in many ways; the embedded default always works
            log.warning("Real CLIP could not be loaded (%s); serving the embedded default instead.", first_line(e))
    if (directory / "clip-tiny.safetensors").is_file():
        base = load_model(str(directory / "clip-tiny.safetensors"), device=device)
        base.name = "clip-tiny"
        return [base] + finetunes_of(base, directory, skip=("clip-tiny",)), (
            "**Embedded tiny world** (offline): a tiny CLIP pretrained by this project on procedurally drawn "
            "32x32 scenes, with its fine-tunes from checkpoints/. Labels outside that world mean little to it.")
    torch.manual_seed(0)
    base = load_model("pmg-tiny", device=device)
    base.name = "pmg-tiny (random weights)"
    return [base] + finetunes_of(base, directory), (
        "**Fallback: random weights.** Neither real CLIP nor the embedded checkpoint clip-tiny was found, so "
        "this is an untrained pmg-tiny model: predictions are meaningless, but every tab works.")


def load_default_models(directory: Path = CHECKPOINT_DIR, extra: Sequence[str] = ()) -> tuple[list[ClipModel], str]:
    """The default models plus `extra` specs (checkpoint files, hub ids...); a spec that fails is logged and skipped."""
    models, mode = _default_models(directory)
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
