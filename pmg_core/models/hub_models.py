"""open_clip models on the Hugging Face hub (``hf-hub:ORG/REPO``): fetched, checked, then built by open_clip.

open_clip would download and build a hub model in one call; this module splits the call so that
checks come between the download and the build:
- the files come from the hub cache (huggingface_hub downloads them; offline, only the cache is
  read): ``open_clip_config.json``, the weights file open_clip would pick (safetensors first), and,
  for a model whose tokenizer is a Hugging Face one kept in the same repo, its tokenizer files;
- a weights file that is a torch zip archive passes the CRC-32 check of every member
  (pmg_core.models.integrity) before open_clip unpickles it (weights-only);
- the config is normalised for the installed open_clip: keys it does not accept are dropped only
  where their meaning is known to be carried elsewhere (``DROPPED``, e.g. a text tower's
  ``vocab_path``: the tokenizer is named by ``hf_tokenizer_name``, or is the repo's own tokenizer
  files); any other unknown key is refused in one sentence naming it, since the zoo cannot tell
  whether it changes the architecture (a weight file that does not fit is refused by open_clip's
  strict loading anyway);
- a model that needs an optional package (a Hugging Face tokenizer needs ``transformers``, the
  extra in requirements-extra.txt) says so in one sentence before anything is built.
open_clip then builds the model through its ``local-dir:`` schema from a temporary folder: the
normalised config beside links to the hub cache's files.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core import env
from ..core.errors import UserError, check, first_line
from .integrity import check_torch_zip

log = logging.getLogger(__name__)
CONFIG_NAME = "open_clip_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "spiece.model", "added_tokens.json")
# Keys published configs carry that open_clip 3.3 does not accept, and why dropping them changes nothing built.
DROPPED = {
    ("text_cfg", "vocab_path"): "the tokenizer's vocabulary file: the tokenizer is loaded from hf_tokenizer_name (or the "
                                "repo's own tokenizer files), not from this key",
}
EXTRA = "pip install -r requirements-extra.txt"  # the optional packages some published models need


@dataclass
class HubFiles:
    """A hub model's files in the local cache, checked, and what building it needs."""

    repo: str
    config: dict  # the normalised open_clip_config.json
    weights: Path
    tokenizer_files: list[Path]  # the repo's own Hugging Face tokenizer, when its config uses it
    dropped: list[str]  # config keys dropped by normalisation, as "text_cfg.vocab_path"
    needs: tuple[str, ...]  # optional packages it needs (transformers for a Hugging Face tokenizer or text model)


def repo_of(spec: str) -> str:
    return spec[len("hf-hub:"):] if spec.startswith("hf-hub:") else spec


def missing_packages(needs) -> list[str]:
    out = []
    for name in needs:
        try:
            importlib.import_module(name)
        except ImportError:
            out.append(name)
    return out


def extra_refusal(label: str, missing: list[str]) -> str:
    """The one sentence a model says when an optional package it needs is not installed."""
    return (f"{label} needs the optional package {' and '.join(missing)} (for its Hugging Face tokenizer or text "
            f"model), which is not installed: `{EXTRA}` installs it.")


def _download(repo: str, name: str, local_only: bool = False) -> Path | None:
    """The cached path of one repo file (downloaded first when online and not `local_only`), or None where
    the repo has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    offline = env.is_offline()
    if offline:
        env.go_offline()
    try:
        return Path(hf_hub_download(repo, name, local_files_only=offline or local_only))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; each becomes one sentence
        raise UserError(f"Could not download {name} of 'hf-hub:{repo}' from the Hugging Face hub ({first_line(e)}); check the "
                        "id and the network connection.") from None


def _weights_names() -> list[str]:
    """The weights files open_clip looks for in a hub repo, in its order of preference (safetensors first)."""
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

    return [*_get_safe_alternatives(HF_WEIGHTS_NAME), HF_WEIGHTS_NAME]


def weights_file(repo: str, local_only: bool = False) -> Path | None:
    """The weights file open_clip would load from a hub repo (downloaded first unless `local_only`), or None."""
    return next((p for p in (_download(repo, n, local_only) for n in _weights_names()) if p is not None), None)


def fetch(spec: str) -> HubFiles:
    """Download (or find in the cache) and check a hub model's files (module docstring)."""
    repo = repo_of(spec)
    config_path = _download(repo, CONFIG_NAME)
    if config_path is None:
        raise UserError(f"'hf-hub:{repo}' is not in the local Hugging Face cache and this machine is offline; connect "
                        "once to download it, or use the embedded default 'clip-tiny'." if env.is_offline() else
                        f"Could not download the {CONFIG_NAME} of 'hf-hub:{repo}' (not an open_clip model, or no "
                        "connection to the Hugging Face hub).")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"The {CONFIG_NAME} of 'hf-hub:{repo}' is not readable JSON ({first_line(e)}).") from None
    check(isinstance(raw, dict) and isinstance(raw.get("model_cfg"), dict),
          f"The {CONFIG_NAME} of 'hf-hub:{repo}' has no model_cfg.")
    weights = weights_file(repo)
    check(weights is not None, f"'hf-hub:{repo}' has no weights file ({', '.join(_weights_names())}).")
    check_torch_zip(weights, f"The weights of 'hf-hub:{repo}' ({weights.name})")
    text_cfg = raw["model_cfg"].get("text_cfg") or {}
    named = text_cfg.get("hf_tokenizer_name")
    own_tokenizer = named == repo or (not named and "vocab_path" in text_cfg)  # the repo's own tokenizer files
    tokenizer_files = [p for p in (_download(repo, n) for n in TOKENIZER_FILES) if p is not None] if own_tokenizer else []
    config, dropped = normalise(raw, repo, has_tokenizer=bool(tokenizer_files))
    text_cfg = config["model_cfg"].get("text_cfg") or {}
    uses_transformers = bool(text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name"))
    return HubFiles(repo, config, weights, tokenizer_files, dropped, ("transformers",) if uses_transformers else ())


def normalise(raw: dict, repo: str, has_tokenizer: bool) -> tuple[dict, list[str]]:
    """The config open_clip 3.3 accepts, and the keys dropped for it; unknown keys are refused (module docstring)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    config = json.loads(json.dumps(raw))  # a deep copy the caller's dict never sees changed
    model_cfg = config["model_cfg"]
    dropped, unknown = [], []
    accepted = {"text_cfg": {f.name for f in dataclasses.fields(CLIPTextCfg)},
                "vision_cfg": {f.name for f in dataclasses.fields(CLIPVisionCfg)}}
    for tower, names in accepted.items():
        cfg = model_cfg.get(tower) or {}
        for key in list(cfg):
            if key in names:
                continue
            if (tower, key) in DROPPED:
                del cfg[key]
                dropped.append(f"{tower}.{key}")
            else:
                unknown.append(f"{tower}.{key}")
    top = set(inspect.signature(CLIP.__init__).parameters) - {"self"} | {"custom_text", "multimodal_cfg"}
    unknown += [k for k in model_cfg if k not in top]
    check(not unknown, f"The {CONFIG_NAME} of 'hf-hub:{repo}' has keys open_clip cannot build ({', '.join(unknown)}), "
                       "and the zoo cannot tell whether they change the model; refused.")
    text_cfg = model_cfg.get("text_cfg") or {}
    if "text_cfg.vocab_path" in dropped and not text_cfg.get("hf_tokenizer_name"):
        check(has_tokenizer, f"The {CONFIG_NAME} of 'hf-hub:{repo}' names its vocabulary only by vocab_path, which "
                             "open_clip cannot read, and the repo holds no tokenizer files to read instead; refused.")
        text_cfg["hf_tokenizer_name"] = repo  # the repo's own tokenizer files, as open_clip falls back to
    return config, dropped


def _folder(files: HubFiles, folder: Path) -> Path:
    """Lay out what open_clip builds the model from: the normalised config beside links to the cached files."""
    (folder / CONFIG_NAME).write_text(json.dumps(files.config, indent=1), encoding="utf-8")
    for path in [files.weights, *files.tokenizer_files]:
        try:
            os.symlink(path.resolve(), folder / path.name)
        except OSError:  # no symlinks (some Windows setups): a copy does the same
            shutil.copyfile(path, folder / path.name)
    return folder


def load(spec: str, device="cpu"):
    """(the open_clip model, its tokenizer) of a hub model, after fetch's checks; one sentence for any failure."""
    import open_clip

    files = fetch(spec)
    missing = missing_packages(files.needs)
    if missing:
        raise UserError(extra_refusal(f"'{spec}'", missing))
    if files.dropped:
        log.info("%s: config keys open_clip does not accept, dropped: %s", spec, ", ".join(files.dropped))
    # A folder of its own per load (gone once built: the model and its tokenizer are then in memory), so
    # two loads never share one.
    with tempfile.TemporaryDirectory(prefix="pmg-hub-") as tmp:
        folder = _folder(files, Path(tmp))
        try:
            model = open_clip.create_model(f"local-dir:{folder}", device=device)
            if files.tokenizer_files or not files.needs:
                tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
            else:  # a Hugging Face tokenizer named in another repo: transformers fetches it
                tokenizer = open_clip.get_tokenizer(spec)
        except Exception as e:  # noqa: BLE001 - a config or file open_clip rejects fails in many types
            raise UserError(f"open_clip could not build '{spec}' ({first_line(e)}).") from None
    return model, tokenizer
