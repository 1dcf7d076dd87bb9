"""The PMG-AFT paper's datasets: TinyImageNet for training and the 16 zero-shot evaluation sets.

Each is registered by name (group "paper": all 16 in the paper's table order; "paper-zeroshot":
the 15 that are not the training set) and comes out as a `ZeroShotDataset` whose class names and
templates follow a prompt protocol, ``prompts="public-code"`` (the default: the public PMG-AFT
code's, with which the paper's numbers were made) or ``"clip"`` (OpenAI's curated ones); the
protocols are paper_prompts.py. torchvision's dataset classes read the files where they exist;
ImageNet and TinyImageNet are read here (ImageFolder trees, TinyImageNet's val_annotations.txt),
their WordNet ids named from the dataset's own synset list or OpenAI's names.

Files live under a data root: `root` (``--data-root``), else $PMG_DATA_ROOT, else ./data.
torchvision downloads what it can when the machine is online (or when asked with download=True);
otherwise a missing dataset is one sentence saying which files go where.

Image sizes follow the public code: CIFAR-10/100 and STL-10 stay at native size (the classifier
resizes inside, so eps is measured on the native pixels); every other set is
Resize(256) + CenterCrop(224).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from .datasets import ZeroShotDataset, register_dataset, register_group
from ..core.env import data_root
from ..core.errors import UserError, check, first_line
from .paper_prompts import check_prompts, class_prompts, first_synonyms, openai_imagenet_names

IMAGENET_NAMES_FILE = Path(__file__).parent / "class_names" / "imagenet.txt"


@dataclass(frozen=True)
class PaperDataset:
    name: str
    title: str
    native: bool  # True: keep the native resolution; False: Resize(256) + CenterCrop(224)
    disk: str  # approximate disk space, for the docs and `datasets` listing
    where: str  # which files go where under the data root ({root} is filled in)
    splits: dict  # our split name ("train" | "test") -> the dataset's own split name (None: whole set)
    downloadable: bool
    source: str = ""  # where torchvision downloads it from, when that needs saying


def _to_rgb(image):
    return image.convert("RGB")


def image_transform(native: bool) -> Callable:
    from torchvision import transforms

    steps = [transforms.Lambda(_to_rgb)]
    if not native:
        steps += [transforms.Resize(256), transforms.CenterCrop(224)]
    return transforms.Compose(steps + [transforms.ToTensor()])


def imagenet_names() -> dict[str, str]:
    """ImageNet wnid -> readable class name, in the 1000 classes' order."""
    lines = IMAGENET_NAMES_FILE.read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines if line.strip())


def imagenet_words(wnids: list[str], directory: Path, prompts: str) -> list[str]:
    """Each WordNet id's class name before the protocol words it: OpenAI's name under "clip" (for a
    class outside ImageNet-1k, as under "public-code", the first synonym in the dataset's own synset
    list in `directory`)."""
    known = dict(zip(imagenet_names(), openai_imagenet_names())) if prompts == "clip" else {}
    if all(w in known for w in wnids):
        return [known[w] for w in wnids]
    synonyms = first_synonyms(directory)
    missing = [w for w in wnids if w not in known and w not in synonyms]
    if missing:
        raise UserError(f"No class name for WordNet id {missing[0]}: put the dataset's synset list (words.txt, "
                        f"LOC_synset_mapping.txt or torchvision's meta.bin) in {directory}.")
    return [known.get(w) or synonyms[w] for w in wnids]


# --- on-disk readers for what torchvision has no class for -------------------------------------

class FileList(Dataset):
    """(image path, label) pairs -> (transformed RGB image, label)."""

    def __init__(self, items: list[tuple[Path, int]], transform: Callable):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as im:
            return self.transform(im), label


def _wnid_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []


def _image_folder(directory: Path, transform: Callable):
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(directory), transform=transform)  # FileNotFoundError when missing or empty


def tiny_imagenet(split: str, base: Path, transform: Callable) -> tuple[Dataset, list[str]]:
    """(data, WordNet ids): tiny-imagenet-200 as unpacked: train/<wnid>/images/*.JPEG and val/images + val/val_annotations.txt
    (or val/ already sorted into <wnid>/ folders, as the public code expects)."""
    train_wnids = _wnid_dirs(base / "train")
    wnids_file = base / "wnids.txt"
    wnids = sorted(wnids_file.read_text().split()) if wnids_file.is_file() else train_wnids
    if split == "train":
        data = _image_folder(base / "train", transform)
        return data, data.classes
    annotations = base / "val" / "val_annotations.txt"
    if annotations.is_file():
        check(bool(wnids), f"TinyImageNet at {base} lacks wnids.txt (and train/), so the label order is unknown.")
        index = {w: i for i, w in enumerate(wnids)}
        items = []
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                check(parts[1] in index, f"{annotations} names class {parts[1]}, which is not in wnids.txt.")
                items.append((base / "val" / "images" / parts[0], index[parts[1]]))
        check(bool(items), f"{annotations} lists no images.")
        return FileList(items, transform), wnids
    data = _image_folder(base / "val", transform)
    return data, data.classes


def imagenet(split: str, base: Path, transform: Callable) -> tuple[Dataset, list[str]]:
    """(data, WordNet ids): ImageNet-1k as class folders: <base>/val/<wnid>/*.JPEG (and train/<wnid>/ for training)."""
    data = _image_folder(base / ("train" if split == "train" else "val"), transform)
    return data, data.classes


# --- the table -----------------------------------------------------------------------------------

def _specs() -> list[PaperDataset]:
    both, test_only = {"train": "train", "test": "test"}, {"test": None}
    return [
        PaperDataset("cifar10", "CIFAR-10", True, "~170 MB",
                     "{root}/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta from cifar-10-python.tar.gz)",
                     both, True),
        PaperDataset("cifar100", "CIFAR-100", True, "~170 MB",
                     "{root}/cifar-100-python/ (train, test, meta from cifar-100-python.tar.gz)", both, True),
        PaperDataset("stl10", "STL-10", True, "~2.6 GB",
                     "{root}/stl10_binary/ (test_X.bin, test_y.bin, class_names.txt from stl10_binary.tar.gz)",
                     both, True),
        PaperDataset("sun397", "SUN397", False, "~37 GB archive, about as much unpacked",
                     "{root}/SUN397/ (ClassName.txt and the a/abbey/sun_*.jpg tree from SUN397.tar.gz)", test_only, True),
        PaperDataset("food101", "Food101", False, "~5 GB",
                     "{root}/food-101/ (images/ and meta/ from food-101.tar.gz)", both, True),
        PaperDataset("oxford-pets", "Oxford-IIIT Pets", False, "~0.8 GB",
                     "{root}/oxford-iiit-pet/ (images/ and annotations/ from images.tar.gz and annotations.tar.gz)",
                     {"train": "trainval", "test": "test"}, True),
        PaperDataset("flowers102", "Flowers102", False, "~0.35 GB",
                     "{root}/flowers-102/ (jpg/, imagelabels.mat, setid.mat)", both, True),
        PaperDataset("dtd", "DTD", False, "~0.6 GB",
                     "{root}/dtd/dtd/ (images/ and labels/ from dtd-r1.0.1.tar.gz)", both, True),
        PaperDataset("eurosat", "EuroSAT", False, "~0.1 GB",
                     "{root}/eurosat/2750/<Class>/*.jpg (EuroSAT RGB)", test_only, True),
        PaperDataset("fgvc-aircraft", "FGVC Aircraft", False, "~2.7 GB",
                     "{root}/fgvc-aircraft-2013b/data/ (images/, variants.txt, images_variant_test.txt)",
                     {"train": "trainval", "test": "test"}, True),
        PaperDataset("tinyimagenet", "TinyImageNet", False, "~0.25 GB zip, ~0.5 GB unpacked",
                     "{root}/tiny-imagenet-200/ as unpacked from tiny-imagenet-200.zip (wnids.txt, words.txt, "
                     "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt)", both, False),
        PaperDataset("imagenet", "ImageNet", False, "~6.4 GB validation set (~140 GB with train)",
                     "{root}/imagenet/val/<wnid>/*.JPEG, one folder per class (torchvision.datasets.ImageNet"
                     "('{root}/imagenet', split='val') builds it from ILSVRC2012_img_val.tar and "
                     "ILSVRC2012_devkit_t12.tar.gz)", both, False),
        PaperDataset("caltech101", "Caltech101", False, "~0.15 GB",
                     "{root}/caltech101/101_ObjectCategories/<class>/image_*.jpg", test_only, True),
        PaperDataset("caltech256", "Caltech256", False, "~1.2 GB",
                     "{root}/caltech256/256_ObjectCategories/<NNN.class>/*.jpg (from 256_ObjectCategories.tar)",
                     test_only, True),
        PaperDataset("stanford-cars", "Stanford Cars", False, "~1.9 GB",
                     "{root}/stanford_cars/ (devkit/cars_meta.mat, cars_test/*.jpg and cars_test_annos_withlabels.mat)",
                     both, False),
        PaperDataset("pcam", "PCAM", False, "~0.8 GB test split (~7.5 GB all splits)",
                     "{root}/pcam/camelyonpatch_level_2_split_test_x.h5 and ..._test_y.h5 (read with h5py)",
                     {"train": "train", "test": "test"}, True, "from Google Drive, with gdown"),
    ]


SPECS: dict[str, PaperDataset] = {s.name: s for s in _specs()}


def _torchvision(spec: PaperDataset, split, root: Path, transform, download: bool) -> tuple[Dataset, list[str]]:
    """Build the torchvision dataset for `spec` and its class names as torchvision gives them."""
    from torchvision import datasets as tv

    r = str(root)
    n = spec.name
    if n in ("cifar10", "cifar100"):
        ds = (tv.CIFAR10 if n == "cifar10" else tv.CIFAR100)(r, train=split == "train", transform=transform,
                                                               download=download)
    elif n == "stl10":
        ds = tv.STL10(r, split=split, transform=transform, download=download)
    elif n == "sun397":
        ds = tv.SUN397(r, transform=transform, download=download)
    elif n == "food101":
        ds = tv.Food101(r, split=split, transform=transform, download=download)
    elif n == "oxford-pets":
        ds = tv.OxfordIIITPet(r, split=split, transform=transform, download=download)
    elif n == "flowers102":
        return tv.Flowers102(r, split=split, transform=transform, download=download), list(tv.Flowers102.classes)
    elif n == "dtd":
        ds = tv.DTD(r, split=split, transform=transform, download=download)
    elif n == "eurosat":
        ds = tv.EuroSAT(r, transform=transform, download=download)
    elif n == "fgvc-aircraft":
        ds = tv.FGVCAircraft(r, split=split, annotation_level="variant", transform=transform, download=download)
    elif n == "caltech101":
        ds = tv.Caltech101(r, target_type="category", transform=transform, download=download)
        return ds, list(ds.categories)
    elif n == "caltech256":
        ds = tv.Caltech256(r, transform=transform, download=download)
        return ds, list(ds.categories)
    elif n == "stanford-cars":
        ds = tv.StanfordCars(r, split=split, transform=transform, download=False)
    elif n == "pcam":
        ds = tv.PCAM(r, split=split, transform=transform, download=download)
        return ds, ["no tumour", "tumour"]  # labels 0 and 1; both protocols give PCAM its own sentences
    else:
        raise AssertionError(f"no torchvision reader for {n}")
    return ds, list(ds.classes)


def _check_pcam_packages(base: Path, split: str, fetch: bool) -> None:
    """PCAM is HDF5 files (read with h5py) on Google Drive (fetched with gdown): say so before torchvision fails."""
    from importlib.util import find_spec

    need = ["h5py"]
    if fetch and not (base / "pcam" / f"camelyonpatch_level_2_split_{split}_x.h5").is_file():
        need.append("gdown")
    missing = [name for name in need if find_spec(name) is None]
    check(not missing, f"PCAM needs the Python package{'s' if len(missing) > 1 else ''} {' and '.join(missing)}: "
                       f"pip install {' '.join(missing)} (requirements.txt lists them).")


def _should_download(spec: PaperDataset, download: bool | None) -> bool:
    if not spec.downloadable:
        return False
    if download is None:
        from ..core import env

        return not env.is_offline()
    return bool(download)


def build(name: str, split: str = "test", root: str | os.PathLike | None = None, download: bool | None = None,
          prompts: str = "public-code", **_) -> ZeroShotDataset:
    """One of the paper's datasets as a ZeroShotDataset (split 'test' or 'train'), its class names
    and templates those of the `prompts` protocol (paper_prompts.py)."""
    spec = SPECS[name]
    check_prompts(prompts)
    check(split in ("train", "test"), f"Split must be 'train' or 'test'; got {split!r}.")
    check(split in spec.splits, f"{spec.title} has no training split here; the paper uses it only for evaluation.")
    base = data_root(root)
    where = spec.where.format(root=base)
    transform = image_transform(spec.native)
    fetch = _should_download(spec, download)
    try:
        if name in ("tinyimagenet", "imagenet"):
            directory = base / ("tiny-imagenet-200" if name == "tinyimagenet" else "imagenet")
            data, wnids = (tiny_imagenet if name == "tinyimagenet" else imagenet)(split, directory, transform)
            raw = imagenet_words(wnids, directory, prompts)
        else:
            if name == "pcam":
                _check_pcam_packages(base, spec.splits[split], fetch)
            if fetch:
                base.mkdir(parents=True, exist_ok=True)
            data, raw = _torchvision(spec, spec.splits[split], base, transform, fetch)
    except (RuntimeError, OSError, ValueError) as e:
        # torchvision's "not found" advice names its own download=True flag; ours is to be online.
        first = first_line(e)
        missing = isinstance(e, FileNotFoundError) or "not found" in first
        detail = "" if missing else f" ({first})"
        source = f" ({spec.source})" if spec.source else ""
        how = (f"it downloads by itself{source} when this machine is online" if spec.downloadable
               else "it cannot be downloaded automatically")
        if download is False and spec.downloadable:  # a public server: visitors never start downloads
            how = "downloads are switched off here: only the embedded datasets and those already on disk are used"
        raise UserError(f"{spec.title} {split} data is missing or incomplete under {base}{detail}: "
                        f"put it at {where}; {how}.") from None
    classes, templates = class_prompts(name, raw, prompts)
    info = {"title": spec.title, "root": str(base), "split": split, "prompts": prompts,
            "resolution": "native" if spec.native else "Resize(256)+CenterCrop(224)"}
    return ZeroShotDataset(name, data, classes, templates, info)


def _register() -> None:
    for spec in SPECS.values():
        size = "native size" if spec.native else "224 px"
        register_dataset(spec.name, f"{spec.title} ({size}; {spec.disk})", "paper")(
            lambda split="test", root=None, _n=spec.name, **kw: build(_n, split, root, **kw))
    register_group("paper", list(SPECS))
    register_group("paper-zeroshot", [n for n in SPECS if n != "tinyimagenet"])


_register()
