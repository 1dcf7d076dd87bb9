"""The paper's datasets read from tiny fake copies in each on-disk layout the loaders use (no downloads).

Class names are those of the default prompt protocol, the public code's (test_paper_prompts.py
checks both protocols' wording)."""
import json
import sys
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pmg_core.attacks.pgd import AutoAttackAdapter, make_attack
from pmg_core.data.datasets import expand_names, get_dataset
from pmg_core.core.errors import UserError
from pmg_core.data.paper_datasets import IMAGENET_NAMES_FILE, SPECS

# One clearly different grey level per class lets a test check that each image kept its own label.
LEVELS = [30, 130, 230]


def _img(path: Path, level: int, size=(40, 30), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, level if mode == "L" else (level,) * 3).save(path)


def _level(x: torch.Tensor) -> int:
    return round(float(x.mean()) * 255)


def _check_levels(ds, expected_size):
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
    (base / "words.txt").write_text("n99999999\tmade-up thing, other lemma\nn01440764\ttench, Tinca tinca\n"
                                    "n01443537\tgoldfish, Carassius auratus\n")
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
    # sorted wnids n01440764, n01443537, n99999999 -> the first synonyms in words.txt, in the public code's wording
    assert ds.classes == ["tench", "goldfish", "made up thing"] and ds.templates == ("This is a photo of a {}",)
    # OpenAI's names under "clip", the first synonym for the class ImageNet-1k does not have
    assert get_dataset("tinyimagenet", root=str(tmp_path), prompts="clip").classes == ["tench", "goldfish", "made-up thing"]
    assert len(ds) == 6 and sorted(y for _, y in ds.data) == [0, 0, 1, 1, 2, 2]
    _check_levels(ds, (224, 224))


def test_tiny_imagenet_train_tree(tmp_path):
    _tiny_imagenet(tmp_path)
    ds = get_dataset("tinyimagenet", split="train", root=str(tmp_path))
    assert ds.classes == ["tench", "goldfish", "made up thing"]
    assert len(ds) == 3  # the *_boxes.txt files are not images
    _check_levels(ds, (224, 224))


def test_tiny_imagenet_annotation_naming_an_unknown_class_is_one_sentence(tmp_path):
    _tiny_imagenet(tmp_path)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_x.JPEG\tn00000001\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="n00000001"):
        get_dataset("tinyimagenet", root=str(tmp_path))


def test_imagenet_val_folders_get_first_synonyms_or_clip_names(tmp_path):
    for w, lvl in (("n01440764", LEVELS[0]), ("n04008634", LEVELS[1]), ("n04356056", LEVELS[2])):
        _img(tmp_path / "imagenet" / "val" / w / f"ILSVRC2012_val_{w}.JPEG", lvl, (300, 260))
    with pytest.raises(UserError, match="synset list"):  # the public code's names need the dataset's synset list
        get_dataset("imagenet", root=str(tmp_path))
    (tmp_path / "imagenet" / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn04008634 projectile, missile\nn04356056 sunglasses, dark glasses, shades\n")
    ds = get_dataset("imagenet", root=str(tmp_path))
    assert ds.classes == ["tench", "projectile", "sunglasses"]
    _check_levels(ds, (224, 224))
    assert get_dataset("imagenet", root=str(tmp_path), prompts="clip").classes == ["tench", "missile", "sunglasses"]


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
    assert ds.classes == ["annualcrop", "sealake"]
    _check_levels(ds, (224, 224))


def test_caltech256_folder_numbers_are_stripped(tmp_path):
    cats = tmp_path / "caltech256" / "256_ObjectCategories"
    _img(cats / "001.ak47" / "001_0001.jpg", LEVELS[0])
    _img(cats / "002.faces-easy-101" / "002_0001.jpg", LEVELS[1], mode="L")  # greyscale comes out RGB
    ds = get_dataset("caltech256", root=str(tmp_path))
    assert ds.classes == ["ak47", "faces easy 101"]  # the public code keeps the suffix
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


# --- the torchvision layouts: tiny fakes written the way torchvision 0.29's classes read them -----

def _check_items(ds, level_of: dict[int, int], size) -> list[int]:
    """Every image has its label's grey level and the expected size; returns the labels, sorted."""
    labels = []
    for i in range(len(ds)):
        x, y = ds.data[i]
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, *size)
        assert abs(_level(x) - level_of[y]) <= 3, f"image {i} does not look like class {y}"
        labels.append(y)
    return sorted(labels)


def _no_md5(monkeypatch, module) -> None:
    # The fake files cannot match the real md5 sums; everything else is torchvision's own reading.
    import os

    monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def test_cifar100_fine_labels_and_names(tmp_path, monkeypatch):
    from torchvision.datasets import cifar

    base = tmp_path / "cifar-100-python"
    base.mkdir()
    names = [f"class_{i}" for i in range(100)]
    names[3], names[57], names[99] = "bear", "pickup_truck", "worm"
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": ["x"] * 20}, f)
    labels = [57, 3, 99]
    data = np.stack([np.full(3072, lvl, dtype=np.uint8) for lvl in LEVELS])
    for split in ("train", "test"):
        with open(base / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0, 1, 2]}, f)
    _no_md5(monkeypatch, cifar)
    ds = get_dataset("cifar100", root=str(tmp_path))
    assert len(ds.classes) == 100 and [ds.classes[i] for i in (3, 57, 99)] == ["bear", "pickup truck", "worm"]
    assert _check_items(ds, dict(zip(labels, LEVELS)), (32, 32)) == [3, 57, 99]


def test_stl10_binary_files_keep_orientation_and_native_size(tmp_path, monkeypatch):
    from torchvision.datasets import stl10

    base = tmp_path / "stl10_binary"
    base.mkdir()
    images = np.zeros((2, 96, 96, 3), dtype=np.uint8)  # HWC: a bright top half, then a bright left half
    images[0, :48], images[1, :, :48] = 255, 255
    # STL-10 stores each image channel by channel, column-major (torchvision transposes it back).
    (base / "test_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes())
    (base / "test_y.bin").write_bytes(bytes([10, 1]))  # 1-based labels: ship, airplane
    for name in ("train_X.bin", "train_y.bin", "unlabeled_X.bin"):
        (base / name).write_bytes(b"")
    (base / "class_names.txt").write_text("airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n")
    _no_md5(monkeypatch, stl10)
    ds = get_dataset("stl10", root=str(tmp_path))
    assert ds.classes[0] == "airplane" and ds.classes[8] == "ship" and len(ds) == 2
    (top, y0), (left, y1) = ds.data[0], ds.data[1]
    assert (y0, y1) == (9, 0) and tuple(top.shape) == (3, 96, 96)
    assert top[:, :48].min() == 1 and top[:, 48:].max() == 0
    assert left[:, :, :48].min() == 1 and left[:, :, 48:].max() == 0


def test_sun397_nested_class_folders(tmp_path):
    base = tmp_path / "SUN397"
    base.mkdir()
    (base / "ClassName.txt").write_text("/a/abbey\n/b/bakery/shop\n/y/youth_hostel\n")
    _img(base / "a" / "abbey" / "sun_aaa.jpg", LEVELS[0])
    _img(base / "b" / "bakery" / "shop" / "sun_bbb.jpg", LEVELS[1])
    _img(base / "b" / "bakery" / "shop" / "sun_bbc.jpg", LEVELS[1])
    _img(base / "y" / "youth_hostel" / "sun_ccc.jpg", LEVELS[2])
    ds = get_dataset("sun397", root=str(tmp_path))
    assert ds.classes == ["abbey", "bakery shop", "youth hostel"]
    assert _check_items(ds, dict(enumerate(LEVELS)), (224, 224)) == [0, 1, 1, 2]


def test_oxford_pets_split_file(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    rows = [("Abyssinian_1", 1, 1), ("american_bulldog_10", 2, 2), ("Abyssinian_7", 1, 1)]
    for image_id, label, _ in rows:
        _img(base / "images" / f"{image_id}.jpg", LEVELS[label - 1])
    (base / "annotations").mkdir(parents=True)
    (base / "annotations" / "test.txt").write_text("".join(f"{i} {c} {s} 1\n" for i, c, s in rows))
    ds = get_dataset("oxford-pets", root=str(tmp_path))
    assert ds.classes == ["abyssinian", "american bulldog"]
    assert _check_items(ds, dict(enumerate(LEVELS)), (224, 224)) == [0, 0, 1]


def test_flowers102_mat_files(tmp_path, monkeypatch):
    from scipy.io import savemat
    from torchvision.datasets import flowers102

    base = tmp_path / "flowers-102"
    for i, lvl in ((1, LEVELS[0]), (2, LEVELS[1]), (3, LEVELS[0]), (4, LEVELS[2])):
        _img(base / "jpg" / f"image_{i:05d}.jpg", lvl)
    savemat(base / "imagelabels.mat", {"labels": np.array([[1, 2, 1, 3]])})  # 1-based, per image id
    savemat(base / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3, 4]]), "tstid": np.array([[2, 3, 4]])})
    _no_md5(monkeypatch, flowers102)
    ds = get_dataset("flowers102", root=str(tmp_path))
    assert ds.classes[:3] == ["pink primrose", "hard leaved pocket orchid", "canterbury bells"] and len(ds.classes) == 102
    assert _check_items(ds, dict(enumerate(LEVELS)), (224, 224)) == [0, 1, 2]


def test_fgvc_aircraft_variants(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nA300B4\nF/A-18\n")
    rows = [("0034309", "F/A-18", LEVELS[2]), ("0056978", "707-320", LEVELS[0]), ("1514522", "A300B4", LEVELS[1])]
    for image, variant, lvl in rows:
        _img(data / "images" / f"{image}.jpg", lvl)
    (data / "images_variant_test.txt").write_text("".join(f"{i} {v}\n" for i, v, _ in rows))
    ds = get_dataset("fgvc-aircraft", root=str(tmp_path))
    assert ds.classes == ["boeing 707-320", "a300b4", "f/a-18"]
    assert _check_items(ds, dict(enumerate(LEVELS)), (224, 224)) == [0, 1, 2]


def test_caltech101_folders(tmp_path):
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    _img(cats / "BACKGROUND_Google" / "image_0001.jpg", 0)  # not a class: torchvision drops it
    _img(cats / "Faces_easy" / "image_0001.jpg", LEVELS[0])
    _img(cats / "Faces_easy" / "image_0002.jpg", LEVELS[0], mode="L")
    _img(cats / "airplanes" / "image_0001.jpg", LEVELS[1])
    _img(cats / "water_lilly" / "image_0001.jpg", LEVELS[2])
    ds = get_dataset("caltech101", root=str(tmp_path))
    assert ds.classes == ["faces easy", "airplanes", "water lilly"]
    assert _check_items(ds, dict(enumerate(LEVELS)), (224, 224)) == [0, 0, 1, 2]


def test_stanford_cars_devkit_mat_files(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Volvo XC90 SUV 2007"], dtype=object)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names.reshape(1, -1)})
    rows = [("00001.jpg", 3), ("00002.jpg", 1), ("00003.jpg", 2)]  # 1-based classes
    annos = np.array([(f, c) for f, c in rows], dtype=[("fname", object), ("class", np.uint8)])
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annos.reshape(1, -1)})
    for fname, c in rows:
        _img(base / "cars_test" / fname, LEVELS[c - 1])
    ds = get_dataset("stanford-cars", root=str(tmp_path))
    assert ds.classes == ["am general hummer suv", "acura rl sedan", "volvo xc90 suv"]  # the year cut off
    assert _check_items(ds, dict(enumerate(LEVELS)), (224, 224)) == [0, 1, 2]


def test_pcam_h5_files(tmp_path):
    h5py = pytest.importorskip("h5py", reason="PCAM's files are HDF5; h5py is in requirements.txt")
    base = tmp_path / "pcam"
    base.mkdir()
    labels = [1, 0, 1]
    with h5py.File(base / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f["x"] = np.stack([np.full((96, 96, 3), LEVELS[y], dtype=np.uint8) for y in labels])
    with h5py.File(base / "camelyonpatch_level_2_split_test_y.h5", "w") as f:
        f["y"] = np.array(labels, dtype=np.uint8).reshape(-1, 1, 1, 1)
    ds = get_dataset("pcam", root=str(tmp_path))
    assert ds.classes == ["Tthis is a photo of healthy lymph node tissue.", "This is a photo of lymph node tumor tissue."]
    assert _check_items(ds, dict(enumerate(LEVELS)), (224, 224)) == [0, 1, 1]


def test_pcam_without_h5py_says_which_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # importlib then finds no h5py
    with pytest.raises(UserError, match=r"PCAM needs the Python package h5py: pip install h5py") as e:
        get_dataset("pcam", root=str(tmp_path))
    assert "\n" not in str(e.value)


# --- AutoAttack on the paper's few-class sets (PCAM has 2 classes) --------------------------------

TWO = ["lymph node", "lymph node containing metastatic tumor tissue"]

# eps where APGD-CE leaves images standing on this random model, so FAB-T and Square run on them too.
@pytest.mark.parametrize("classes, eps", [(TWO, 2 / 255), (["cat", "dog", "bird"], 48 / 255)])
def test_autoattack_runs_on_two_and_three_classes(model, classes, eps):
    clf = model.classifier(classes).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = clf(x).argmax(1)  # every image starts correctly classified
    correct = {}
    for version in ("fast", "standard"):  # steps and Square's queries cut short for speed
        adv = AutoAttackAdapter(clf, eps, version=version, steps=5, n_queries=20)(x, y)
        assert (adv - x).abs().max() <= eps + 1e-6 and 0 <= adv.min() and adv.max() <= 1
        with torch.no_grad():
            correct[version] = int((clf(adv).argmax(1) == y).sum())
    # "standard" runs the "fast" attacks first, then more: it can only fool more images.
    assert correct["standard"] <= correct["fast"] <= len(y) and correct["standard"] < len(y)


def test_autoattack_targets_at_most_nine_classes_and_takes_the_step_count(model):
    attack = make_attack("autoattack-standard", model.classifier([f"c{i}" for i in range(20)]), 1 / 255, steps=7)
    apgd, apgdt, fab, square = attack.attack.attacks
    assert (apgdt.n_target_classes, fab.n_target_classes) == (9, 9)
    assert apgd.steps == apgdt.steps == fab.steps == 7 and square.n_queries == 5000


def test_autoattack_leaves_the_callers_random_stream_alone(model):
    clf = model.classifier(TWO).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = clf(x).argmax(1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    AutoAttackAdapter(clf, 8 / 255, steps=2)(x, y)  # torchattacks reseeds the global generator inside
    assert torch.equal(torch.rand(3), expected)
