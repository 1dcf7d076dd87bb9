"""CLIP weights in the Hugging Face transformers layout -> open_clip's key names.

transformers' ``CLIPModel.save_pretrained`` writes ``model.safetensors`` (safetensors: read as
data, nothing unpickled) with keys such as ``vision_model.encoder.layers.3.self_attn.q_proj.weight``;
open_clip names the same tensors ``visual.transformer.resblocks.3.attn.in_proj_weight`` and differs
in three ways this module undoes:
- attention: separate q/k/v projections there, one packed ``in_proj`` (rows q, then k, then v) here;
- projections: ``visual_projection.weight`` / ``text_projection.weight`` are Linear weights
  (out x in) there, plain matrices (in x out) here, so they are transposed;
- names: ``patch_embedding`` is ``conv1``, ``pre_layrnorm`` (sic) ``ln_pre``, ``post_layernorm``
  ``ln_post``, ``final_layer_norm`` ``ln_final``, ``layer_norm1/2`` ``ln_1/2``, ``fc1/fc2``
  ``c_fc/c_proj``; ``position_ids`` buffers are dropped.
Only the vision and text towers of an OpenAI-style ViT CLIP are understood (LEAF's files are
these); an unknown key is refused in one sentence rather than guessed.
"""
from __future__ import annotations

import re

import torch

from ..core.errors import UserError, check

_LAYER = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}
_VISION = {
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight", "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight", "vision_model.post_layernorm.bias": "ln_post.bias",
}
_TEXT = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
_DROPPED = re.compile(r"^(vision_model|text_model)\.embeddings\.position_ids$")
_BLOCK = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def is_transformers_clip(state: dict) -> bool:
    return any(k.startswith("vision_model.") for k in state)


def to_open_clip(state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    """(image-tower tensors without the 'visual.' prefix, text-tower tensors) in open_clip's names."""
    visual: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    qkv: dict[tuple, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if _DROPPED.match(key):
            continue
        if key in _VISION:
            visual[_VISION[key]] = value
        elif key in _TEXT:
            text[_TEXT[key]] = value
        elif key == "visual_projection.weight":
            visual["proj"] = value.t().contiguous()
        elif key == "text_projection.weight":
            text["text_projection"] = value.t().contiguous()
        elif m := _BLOCK.match(key):
            tower, layer, part, kind = m.groups()
            out = visual if tower == "vision_model" else text
            prefix = f"transformer.resblocks.{layer}."
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((tower, layer, kind), {})[part[-6]] = value
            elif part in _LAYER:
                out[f"{prefix}{_LAYER[part]}.{kind}"] = value
            else:
                raise UserError(f"{source} has a transformers CLIP key this project does not know: '{key}'.")
        else:
            raise UserError(f"{source} has a key outside the vision and text towers of a transformers CLIP: '{key}'.")
    for (tower, layer, kind), parts in qkv.items():
        check(set(parts) == {"q", "k", "v"}, f"{source} lacks part of layer {layer}'s attention ({tower}).")
        out = visual if tower == "vision_model" else text
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"transformer.resblocks.{layer}.attn.{name}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    check(bool(visual), f"{source} holds no vision tower in the transformers CLIP layout.")
    return visual, text
