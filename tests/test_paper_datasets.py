"""The paper's datasets read from tiny fake copies in each on-disk layout the loaders use (no downloads)."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pmg_core.data import expand_names, get_dataset
from pmg_core.errors import UserError
from pmg_core.paper_datasets import IMAGENET_NAMES_FILE, PAPER_TEMPLATES, SPECS

# One clearly different grey level per class lets a test check that each image kept its own label.
LEVELS = [30, 130, 230]


def _img(path: Path, level: int, size=(40, 30), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, level if mode == "L" else (level,) * 3).save(path)


def _level(x: torch.Tensor) -> int:
    return round(float(x.mean()) * 255)


def _check_levels(ds, expected_size):
    assert ds.templates == PAPER_TEMPLATES
    for i in range(len(ds)):
        x, y = ds.data[i]
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, *expected_size)
        assert 0 <= x.min() and x.max() <= 1
        assert abs(_level(x) - LEVELS[y]) <= 3, f"image {i} does not look like class {y}"


def _tiny_imagenet(root: Path, sorted_val: bool = False) -> list[str]:
    base = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01440764", "n99999999"]  # goldfish, tench, and one only words.txt knows
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n99999999\tmade-up thing, other lemma\nn01440764\ttench, Tinca tinca\n")
    order = sorted(wnids)
    ann = []
    for w in wnids:
        lvl = LEVELS[order.index(w)]
        _img(base / "train" / w / "images" / f"{w}_0.JPEG", lvl, (64, 64))
        (base / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t10\t10\n")
        for k in range(2):
            name = f"val_{w}_{k}.JPEG"
            if sorted_val:
                _img(base / "val" / w / name, lvl, (64, 64))
            else:
                _img(base / "val" / "images" / name, lvl, (64, 64), mode="L" if k else "RGB")
                ann.append(f"{name}\t{w}\t0\t0\t63\t63")
    if not sorted_val:
        (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return order


@pytest.mark.parametrize("sorted_val", [False, True])
def test_tiny_imagenet_val_layouts_map_wnids_to_names(tmp_path, sorted_val):
    _tiny_imagenet(tmp_path, sorted_val)
    ds = get_dataset("tinyimagenet", split="test", root=str(tmp_path))
    # sorted wnids n01440764, n01443537, n99999999 -> CLIP names, words.txt for the unknown one
    assert ds.classes == ["tench", "goldfish", "made-up thing"]
    assert len(ds) == 6 and sorted(y for _, y in ds.data) == [0, 0, 1, 1, 2, 2]
    _check_levels(ds, (224, 224))


def test_tiny_imagenet_train_tree(tmp_path):
    _tiny_imagenet(tmp_path)
    ds = get_dataset("tinyimagenet", split="train", root=str(tmp_path))
    assert ds.classes == ["tench", "goldfish", "made-up thing"]
    assert len(ds) == 3  # the *_boxes.txt files are not images
    _check_levels(ds, (224, 224))


def test_tiny_imagenet_annotation_naming_an_unknown_class_is_one_sentence(tmp_path):
    _tiny_imagenet(tmp_path)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_x.JPEG\tn00000001\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="n00000001"):
        get_dataset("tinyimagenet", root=str(tmp_path))


def test_imagenet_val_folders_get_clip_names(tmp_path):
    for w, lvl in (("n01440764", LEVELS[0]), ("n04008634", LEVELS[1]), ("n04356056", LEVELS[2])):
        _img(tmp_path / "imagenet" / "val" / w / f"ILSVRC2012_val_{w}.JPEG", lvl, (300, 260))
    ds = get_dataset("imagenet", root=str(tmp_path))
    assert ds.classes == ["tench", "projectile", "sunglasses"]
    _check_levels(ds, (224, 224))


def test_imagenet_name_list_is_complete_and_distinct():
    rows = [line.split("\t") for line in IMAGENET_NAMES_FILE.read_text().splitlines()]
    wnids, names = zip(*rows)
    assert len(rows) == 1000 and list(wnids) == sorted(wnids) and len(set(wnids)) == 1000
    assert len(set(names)) == 1000 and all(n.strip() == n and n for n in names)
    assert (names[0], names[1], names[999]) == ("tench", "goldfish", "toilet paper")


def _cifar10(root: Path) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    labels = [2, 0, 1]
    data = np.stack([np.full(3072, LEVELS[y], dtype=np.uint8) for y in labels])
    for i in range(1, 6):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": data[:2], "labels": labels[:2]}, f)


def test_cifar10_stays_at_native_size(tmp_path, monkeypatch):
    import os

    from torchvision.datasets import cifar

    _cifar10(tmp_path)
    # The fake files cannot match the real md5 sums; everything else is torchvision's own reading.
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    ds = get_dataset("cifar10", root=str(tmp_path))
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and len(ds) == 2
    x, y = ds.data[0]
    assert tuple(x.shape) == (3, 32, 32) and y == 2
    assert torch.allclose(x, torch.full_like(x, LEVELS[2] / 255))  # exact pixels: no resampling
    assert len(get_dataset("cifar10", split="train", root=str(tmp_path))) == 15


def test_eurosat_folders_get_readable_names(tmp_path):
    for cls, lvl in (("AnnualCrop", LEVELS[0]), ("SeaLake", LEVELS[1])):
        _img(tmp_path / "eurosat" / "2750" / cls / f"{cls}_1.jpg", lvl, (64, 64))
    ds = get_dataset("eurosat", root=str(tmp_path))
    assert ds.classes == ["annual crop land", "lake or sea"]
    _check_levels(ds, (224, 224))


def test_caltech256_folder_numbers_are_stripped(tmp_path):
    cats = tmp_path / "caltech256" / "256_ObjectCategories"
    _img(cats / "001.ak47" / "001_0001.jpg", LEVELS[0])
    _img(cats / "002.faces-easy-101" / "002_0001.jpg", LEVELS[1], mode="L")  # greyscale comes out RGB
    ds = get_dataset("caltech256", root=str(tmp_path))
    assert ds.classes == ["ak47", "faces easy"]
    _check_levels(ds, (224, 224))


def test_dtd_and_food101_split_files(tmp_path):
    dtd = tmp_path / "dtd" / "dtd"
    _img(dtd / "images" / "banded" / "banded_0001.jpg", LEVELS[0])
    _img(dtd / "images" / "zigzagged" / "zigzagged_0001.jpg", LEVELS[1])
    (dtd / "labels").mkdir(parents=True)
    (dtd / "labels" / "test1.txt").write_text("banded/banded_0001.jpg\nzigzagged/zigzagged_0001.jpg\n")
    ds = get_dataset("dtd", root=str(tmp_path))
    assert ds.classes == ["banded", "zigzagged"]
    _check_levels(ds, (224, 224))

    food = tmp_path / "food-101"
    _img(food / "images" / "apple_pie" / "1.jpg", LEVELS[0])
    _img(food / "images" / "club_sandwich" / "7.jpg", LEVELS[1])
    (food / "meta").mkdir(parents=True)
    (food / "meta" / "test.json").write_text(json.dumps({"apple_pie": ["apple_pie/1"], "club_sandwich": ["club_sandwich/7"]}))
    ds = get_dataset("food101", root=str(tmp_path))
    assert ds.classes == ["apple pie", "club sandwich"]
    _check_levels(ds, (224, 224))


@pytest.mark.parametrize("name, says", [("stanford-cars", "cannot be downloaded"), ("cifar100", "cifar-100-python"),
                                        ("imagenet", "imagenet/val/<wnid>"), ("tinyimagenet", "val_annotations.txt")])
def test_missing_data_says_which_files_go_where(tmp_path, name, says):
    with pytest.raises(UserError, match="put it at") as e:
        get_dataset(name, root=str(tmp_path / "empty"))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_data_root_comes_from_the_environment(tmp_path, monkeypatch):
    for cls in ("Forest", "River"):
        _img(tmp_path / "eurosat" / "2750" / cls / "a.jpg", LEVELS[0])
    monkeypatch.setenv("PMG_DATA_ROOT", str(tmp_path))
    assert get_dataset("eurosat").classes == ["forest", "river"]


def test_registry_groups_and_splits():
    assert expand_names("paper") == list(SPECS) and len(SPECS) == 16
    assert "tinyimagenet" not in expand_names("paper-zeroshot") and len(expand_names("paper-zeroshot")) == 15
    assert [n for n, s in SPECS.items() if s.native] == ["cifar10", "cifar100", "stl10"]
    with pytest.raises(UserError, match="no training split"):
        get_dataset("sun397", split="train", root="/nonexistent")
    with pytest.raises(UserError, match="Split must be"):
        get_dataset("cifar10", split="validation", root="/nonexistent")
