"""Import published robust CLIP image encoders into this project's checkpoint format.

Sources understood:
- ``.pth.tar`` / ``.pt`` / ``.pth`` files of the public PMG-AFT and TeCoA code: a dict holding
  ``vision_encoder_state_dict`` (AdvFLYP's: ``partial_state_dict``, under whole-CLIP key names; or
  ``state_dict``), keys possibly prefixed ``module.``; also a plain state dict of the image encoder, as RobustVLM's TeCoA / FARE files are (ViT-B/32, ViT-L/14),
  or of a whole CLIP (its ``visual.*`` part is taken). Read with ``torch.load(weights_only=True)``:
  a file that would need arbitrary objects unpickled is refused without running anything.
- ``.safetensors`` files of bare image-encoder weights (no pmg_core metadata), or of a whole CLIP
  in the Hugging Face transformers layout (``model.safetensors`` of ``CLIPModel``; its image tower
  is taken, and ``import_transformers_clip`` also takes its text tower: pmg_core.models.transformers_layout).
- ``hf-hub:ORG/REPO`` open_clip models such as RobustVLM's ``hf-hub:chs20/tecoa4-clip`` and
  ``hf-hub:chs20/fare2-clip`` (downloaded once; offline they must already be cached).

The result is a fine-tune checkpoint of its base CLIP, with metadata naming the source, so every
command can load it. The base is ``--base`` if given; for an hf-hub model, the hub model itself
(its own open_clip config and text encoder, published with the image encoder); for a file, the
OpenAI CLIP its tensor shapes match.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from .checkpoints import load_text_into, load_visual_into, save_finetune, save_finetune_with_text
from ..core.errors import UserError, check
from .integrity import check_torch_zip, sha256_file
from .transformers_layout import is_transformers_clip, to_open_clip

# (width, patch size, layers, positional tokens) of OpenAI's ViT image encoders -> base model spec.
OPENAI_BASES = {
    (768, 32, 12, 50): "ViT-B-32-quickgelu:openai",
    (768, 16, 12, 197): "ViT-B-16-quickgelu:openai",
    (1024, 14, 24, 257): "ViT-L-14-quickgelu:openai",
    (1024, 14, 24, 577): "ViT-L-14-336-quickgelu:openai",
}
STATE_KEYS = ("vision_encoder_state_dict", "partial_state_dict", "state_dict", "model", "model_state_dict")
METHOD_HINTS = (("pmg", "pmg-aft"), ("tecoa", "tecoa"), ("fare", "fare"))


def _strip(key: str, prefix: str) -> str:
    while key.startswith(prefix):
        key = key[len(prefix):]
    return key


def visual_state(state: dict, source: str) -> dict[str, torch.Tensor]:
    """A foreign state dict -> image-encoder tensors with open_clip's key names (no 'visual.' prefix)."""
    check(isinstance(state, dict), f"{source} holds no state dict of weights.")
    out = {_strip(str(k), "module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in out):
        out = {k[len("visual."):]: v for k, v in out.items() if k.startswith("visual.")}
    check(bool(out), f"{source} holds no image-encoder weights.")
    bad = next((k for k, v in out.items() if not torch.is_tensor(v)), None)
    check(bad is None, f"{source} has a non-tensor entry '{bad}' where weights were expected.")
    bad = next((k for k, v in out.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    check(bad is None, f"{source} has NaN or infinite values in '{bad}'; refused.")
    return out


def _pick_state(obj, source: str) -> dict:
    """The public code's checkpoint dict -> the weights inside it (or `obj` when it is the weights)."""
    check(isinstance(obj, dict), f"{source} holds a {type(obj).__name__}, not a dict of weights.")
    for key in STATE_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
            return inner
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj
    raise UserError(f"{source} has none of {', '.join(STATE_KEYS)} holding weights, and is not a plain state dict.")


def _numpy_scalar_globals() -> list:
    """What unpickling a numpy number needs (the public code saves best_acc1 as numpy.float64):
    rebuilding a scalar from a dtype and raw bytes, which runs no code. Files pickled under numpy
    1.x (the published .pth.tar ones) name the rebuilder ``numpy.core.multiarray.scalar``; numpy 2
    moved it to ``numpy._core``, so the old name is allowed too, for that one function only."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    kinds = (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *(type(np.dtype(k)) for k in kinds)]


def load_torch_file(path: Path) -> dict:
    """torch.load with weights_only=True: tensors, plain containers and numpy numbers, never arbitrary objects.
    A zip archive (torch.save's format) must first pass the CRC-32 check of every member
    (pmg_core.models.integrity), which torch.load itself skips."""
    check_torch_zip(path)
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():
            raise UserError(f"'{path.name}' needs arbitrary Python objects unpickled to load, which could run code; "
                            "refused (only plain tensors and containers are read).") from None
        raise UserError(unreadable_torch_file(path)) from None
    except Exception:  # noqa: BLE001 - hostile bytes fail inside torch.load as KeyError, IndexError, OSError...
        raise UserError(unreadable_torch_file(path)) from None


def unreadable_torch_file(path: Path) -> str:
    """Why torch.load could not read `path`, for people. torch's own messages ("PytorchStreamReader
    failed ... internal miniz error", "[Errno 22] Invalid argument") name its internals, not the file's problem."""
    return (f"'{path.name}' is not a PyTorch checkpoint that can be read safely (damaged, or another kind of file); "
            "refused.")


def read_source(source: str):
    """(image-encoder tensors of `source`, metadata saying where they came from, the hf-hub model or None).

    An hf-hub model is loaded whole by open_clip from the hub's own config, so it is also the base
    its encoder pairs with (a LAION ViT-B/32 must not get OpenAI's text encoder from a shape guess).
    """
    if source.startswith("hf-hub:"):
        from .clip import load_model

        model = load_model(source)  # offline and uncached: one-sentence UserError, no network wait
        return {k: v.detach().clone() for k, v in model.visual.state_dict().items()}, \
            {"source": source, "source_format": "open_clip hf-hub model"}, model
    path = Path(source)
    check(path.is_file(), f"'{source}' is neither a file nor an hf-hub:ORG/REPO id.")
    digest = sha256_file(path)
    if path.suffix == ".safetensors":
        from .checkpoints import header_metadata, load_tensors

        state, fmt = load_tensors(path), "safetensors state dict"  # one-sentence error if unreadable
        check(header_metadata(path) is None,
              f"'{path.name}' is already a pmg_core checkpoint; use it as a model spec directly.")
        if is_transformers_clip(state):
            state, fmt = to_open_clip(state, f"'{path.name}'")[0], "transformers CLIP safetensors (image tower)"
    else:
        obj = load_torch_file(path)
        state = _pick_state(obj, f"'{path.name}'")
        fmt = "torch checkpoint" + (" (public PMG-AFT/TeCoA code layout)" if state is not obj else " (plain state dict)")
    return (visual_state(state, f"'{path.name}'"), {"source": path.name, "source_format": fmt, "source_sha256": digest},
            None)


def guess_base(state: dict[str, torch.Tensor]) -> str:
    """OpenAI CLIP spec whose image encoder has these shapes (ViT-B/32, B/16, L/14, L/14@336)."""
    conv, pos = state.get("conv1.weight"), state.get("positional_embedding")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    key = (conv.shape[0], conv.shape[-1], len(layers), pos.shape[0]) if conv is not None and pos is not None else None
    check(key in OPENAI_BASES, "Cannot tell which CLIP these weights fine-tune from their shapes; "
                               "name the base model with --base (e.g. ViT-B-32-quickgelu:openai).")
    return OPENAI_BASES[key]


def guess_method(source: str) -> str:
    name = source.lower()
    return next((method for hint, method in METHOD_HINTS if hint in name), "imported")


def default_out(source: str) -> Path:
    from ..core.env import checkpoint_dir

    name = source.split("/")[-1] if source.startswith("hf-hub:") else Path(source).name
    name = re.sub(r"(\.pth\.tar|\.pth|\.pt|\.tar|\.bin|\.safetensors)$", "", name) or "imported"
    return checkpoint_dir() / f"{name}.safetensors"


def import_checkpoint(source: str, out: str | Path | None = None, base: str | None = None,
                      method: str | None = None, device="cpu", preset: str | None = None,
                      extra_metadata: dict | None = None, base_model=None):
    """Convert `source` to a fine-tune checkpoint at `out`; returns (path, the loaded ClipModel).

    `preset`: the numerics the weights were trained with (only checkpoints of the public PMG-AFT
    code are "public-code"); recorded, so evaluation judges the model with them unless told
    otherwise. `extra_metadata` joins the checkpoint's metadata (the zoo records who trained it, the
    source address and the licence); `base_model`: the loaded base `base` names, to share.
    """
    from .clip import load_model
    from ..data.presets import get_preset

    if preset is not None:
        get_preset(preset)  # one sentence for an unknown name, before any loading
    state, meta, hub_model = read_source(source)
    out = Path(out) if out else default_out(source)
    if hub_model is not None and not base:
        base_model = hub_model
    elif base_model is None or base_model.spec != (base or guess_base(state)):
        base_model = load_model(base or guess_base(state), device="cpu")
    model = base_model.fork(out.stem, str(out), {})
    load_visual_into(model, {f"visual.{k}": v for k, v in state.items()}, f"'{meta['source']}'")
    meta = {"method": method or guess_method(source), "imported": True, **meta,
            **({"preset": preset} if preset else {}), **(extra_metadata or {})}
    path = save_finetune(out, model, meta)
    model.spec, model.metadata = str(path), {"kind": "finetune", "base": model.base, **meta}
    return path, model.to(device)


def import_transformers_clip(source: str | Path, out: str | Path, base: str | None = None, *, text_tower: bool,
                             method: str = "imported", preset: str | None = None,
                             extra_metadata: dict | None = None, base_model=None):
    """A whole CLIP saved by transformers (``model.safetensors``) -> a fine-tune checkpoint of `base`
    (guessed from the image tower's shapes when not given) at `out`; `text_tower`: take its text
    encoder too (LEAF's robust one), else only the image encoder. Returns (path, the loaded ClipModel)."""
    from .checkpoints import load_tensors
    from .clip import load_model

    path, out = Path(source), Path(out)
    label = f"'{path.name}'"
    state = load_tensors(path)  # safetensors: data only; one sentence if unreadable
    check(is_transformers_clip(state), f"{label} is not a CLIP in the transformers layout (no vision_model.* keys).")
    visual, text = to_open_clip(state, label)
    visual = visual_state(visual, label)  # tensors only, all finite
    base = base or guess_base(visual)
    if base_model is None or base_model.spec != base:
        base_model = load_model(base, device="cpu")
    model = base_model.fork(out.stem, str(out), {})
    load_visual_into(model, {f"visual.{k}": v for k, v in visual.items()}, label)
    meta = {"method": method, "imported": True, "source": path.name, "source_sha256": sha256_file(path),
            "source_format": "transformers CLIP safetensors" + (" (both towers)" if text_tower else " (image tower)"),
            **({"preset": preset} if preset else {}), **(extra_metadata or {})}
    if text_tower:
        check(bool(text), f"{label} holds no text tower to take.")
        model.own_text_side()
        load_text_into(model, text, label)
        saved = save_finetune_with_text(out, model, meta)
    else:
        saved = save_finetune(out, model, meta)
    model.spec, model.metadata = str(saved), {"kind": "finetune", "base": model.base, "text_tower": text_tower, **meta}
    return saved, model
