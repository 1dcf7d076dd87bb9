"""Class names and prompt templates of the paper's datasets under each prompt protocol.

Zero-shot accuracy depends on the words given to the text encoder, so a number is comparable
with another only under the same protocol. Two are offered (``--prompts``):

- ``public-code`` (the default): what the public PMG-AFT code feeds its text encoder, and so how
  the paper's numbers were made. Its replaced torchvision dataset files give ten sets their own
  template and their own wording of the class names (DTD "A surface with a {} texture.", EuroSAT
  "A centered satellite photo of {}." over its lower-cased folder names, ...; PCAM two fixed
  sentences); every other set (CIFAR-10/100, STL-10, SUN397, ImageNet, TinyImageNet), and the
  training set, gets "This is a photo of a {}" with the names lower-cased and '_', '-', '/' read
  as spaces; ImageNet and TinyImageNet names are the first WordNet synonym of each class (the
  public code's imagenet_classes_names.txt lists exactly those), read here from the dataset's own
  synset list. Its quirks are kept: Flowers102's "cyclamen " and "hippeastrum " keep a trailing
  space, PCAM's first sentence begins "Tthis", three pairs of ImageNet classes share a name
  (cardigan, crane, maillot), Caltech256's "-101" suffixes stay (as " 101"), FGVC Aircraft keeps its
  hyphens and prefixes the 7x7 variants with "Boeing". One thing cannot be followed: both its
  Caltech files call a tensor method (``.clone()``) on each folder name, a string, so they cannot
  run as published. Here Caltech256 gets what they would give without that call (the "001."
  prefix cut off) and Caltech101 its folder names whole, since the same four-character cut, copied
  into its file, would leave fragments ("accordion" -> "rdion").
- ``clip``: OpenAI CLIP's curated class names and template ensembles, as CLIP_benchmark uses them
  (class_names/clip_benchmark.json, the source named inside; ImageNet's from open_clip).

Functions here map the names a dataset's files give (torchvision's `classes`, WordNet ids, ...)
to (class names, templates); they need no images, so tests check them directly.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Sequence

from ..core.errors import UserError, check

PROMPTS = ("public-code", "clip")
PUBLIC_CODE_TEMPLATE = "This is a photo of a {}"  # for the sets whose file the public code did not replace
CLIP_BENCHMARK_FILE = Path(__file__).parent / "class_names" / "clip_benchmark.json"

# The public code's own template per dataset, from its replaced torchvision dataset files.
PUBLIC_CODE_TEMPLATES = {
    "food101": "A photo of {}, a type of food.",
    "oxford-pets": "A photo of a {}, a type of pet.",
    "flowers102": "A photo of a {}, a type of flower.",
    "dtd": "A surface with a {} texture.",
    "eurosat": "A centered satellite photo of {}.",
    "fgvc-aircraft": "A photo of a {}, a type of aircraft.",
    "caltech101": "A photo of a {}.",
    "caltech256": "A photo of a {}.",
    "stanford-cars": "A photo of a {}.",
}
PUBLIC_CODE_PCAM = ("Tthis is a photo of healthy lymph node tissue.",  # sic: its file's typo, kept
                    "This is a photo of lymph node tumor tissue.")
# Where its Flowers102 list differs from torchvision's (trailing spaces included).
PUBLIC_CODE_FLOWERS = {"colt's foot": "colts foot", "cyclamen": "cyclamen ", "hippeastrum": "hippeastrum "}


def check_prompts(prompts: str) -> None:
    check(prompts in PROMPTS, f"Unknown prompts '{prompts}': choose one of {', '.join(PROMPTS)}.")


def words(name: str, separators: str = "_-/") -> str:
    """The public code's wording: lower case, each separator read as a space (nothing stripped)."""
    name = name.lower()
    for sep in separators:
        name = name.replace(sep, " ")
    return name


def public_code(dataset: str, raw: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """(class names, templates) as the public PMG-AFT code builds its prompts for `dataset`, from the
    class names torchvision gives (for ImageNet/TinyImageNet: each class's first WordNet synonym)."""
    template = PUBLIC_CODE_TEMPLATES.get(dataset, PUBLIC_CODE_TEMPLATE)
    if dataset == "pcam":
        return list(PUBLIC_CODE_PCAM), ("{}",)
    if dataset == "fgvc-aircraft":
        names = [words(f"Boeing {n}" if n.startswith("7") else n, "_") for n in raw]
    elif dataset == "stanford-cars":
        names = [words(n[:-5], "_-") for n in raw]  # the model year (" 2012") cut off
    elif dataset == "caltech256":
        names = [words(n[4:].replace("-256", ""), "_-").strip() for n in raw]  # "001.ak47" -> "ak47"
    elif dataset == "flowers102":
        names = [words(PUBLIC_CODE_FLOWERS.get(n, n), "_-") for n in raw]
    elif dataset in PUBLIC_CODE_TEMPLATES:
        names = [words(n, "_-") for n in raw]
    else:
        names = [words(n) for n in raw]
    return names, (template,)


@functools.cache
def _clip_benchmark() -> dict:
    return json.loads(CLIP_BENCHMARK_FILE.read_text())


def clip(dataset: str, raw: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """(class names, templates) as CLIP_benchmark builds them: OpenAI's curated names where it has
    them (by position in the dataset's class order), else torchvision's names ('_' as a space for
    Food101, '_' and '/' for SUN397); OpenAI's template ensemble of the dataset, ImageNet's for the
    sets it has none for. For ImageNet and TinyImageNet `raw` must already be OpenAI's names."""
    data = _clip_benchmark()
    curated = data["classes"].get(dataset)
    if curated is not None:
        check(len(curated) == len(raw), f"{dataset} has {len(raw)} classes here, but CLIP's list names {len(curated)}.")
        names = list(curated)
    elif dataset == "food101":
        names = [n.replace("_", " ") for n in raw]
    elif dataset == "sun397":
        names = [n.replace("_", " ").replace("/", " ") for n in raw]
    else:
        names = list(raw)
    templates = data["templates"].get(dataset)
    return names, tuple(templates) if templates else openai_imagenet_templates()


def openai_imagenet_templates() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def openai_imagenet_names() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def class_prompts(dataset: str, raw: Sequence[str], prompts: str) -> tuple[list[str], tuple[str, ...]]:
    """(class names, templates) of `dataset` under the `prompts` protocol, from its raw class names."""
    check_prompts(prompts)
    return (public_code if prompts == "public-code" else clip)(dataset, raw)


def first_synonyms(directory: Path) -> dict[str, str]:
    """WordNet id -> first synonym, from the dataset's own synset list in `directory`: words.txt
    (TinyImageNet), LOC_synset_mapping.txt (ImageNet from Kaggle) or meta.bin (torchvision's ImageNet)."""
    out: dict[str, str] = {}
    for fname in ("words.txt", "LOC_synset_mapping.txt"):
        f = directory / fname
        if f.is_file():
            for line in f.read_text().splitlines():
                parts = line.strip().split(None, 1)
                if len(parts) == 2:
                    out.setdefault(parts[0], parts[1].split(",")[0].strip())
    meta = directory / "meta.bin"
    if meta.is_file():
        import torch

        try:
            wnid_to_classes = torch.load(meta, weights_only=True)[0]
        except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways
            raise UserError(f"{meta} is not torchvision's ImageNet meta file ({type(e).__name__}).") from None
        for wnid, synonyms in wnid_to_classes.items():
            out.setdefault(wnid, synonyms[0])
    return out
