"""The prompts each protocol gives the paper's datasets, checked against the sources' own wording.

public-code: the public PMG-AFT code at a53fdd8 (its replaced torchvision dataset files, PMG_AFT.py's
"This is a photo of a {}" and refine_classname); clip: CLIP_benchmark's (OpenAI's) names and templates.
No dataset files are needed: the mapping from the names a dataset's files give to prompts is tested.
"""
import pytest
from torchvision.datasets import Flowers102

from pmg_core.core.errors import UserError
from pmg_core.evaluation.accuracy import EvalConfig
from pmg_core.data.paper_datasets import imagenet_names
from pmg_core.data.paper_prompts import class_prompts, first_synonyms
from pmg_core.training.loop import TrainConfig


def prompts(dataset: str, raw: list[str], protocol: str = "public-code") -> list[str]:
    """The sentences the text encoder reads, class by class (templates of one class joined by ' | ')."""
    names, templates = class_prompts(dataset, raw, protocol)
    return [" | ".join(t.format(n) for t in templates) for n in names]


PUBLIC_CODE = [  # (dataset, names as torchvision gives them, the public code's prompts for them)
    ("dtd", ["banded", "zigzagged"], ["A surface with a banded texture.", "A surface with a zigzagged texture."]),
    ("eurosat", ["AnnualCrop", "HerbaceousVegetation", "SeaLake"],
     ["A centered satellite photo of annualcrop.", "A centered satellite photo of herbaceousvegetation.",
      "A centered satellite photo of sealake."]),
    ("fgvc-aircraft", ["707-320", "A300B4", "F/A-18", "Cessna 172"],
     ["A photo of a boeing 707-320, a type of aircraft.", "A photo of a a300b4, a type of aircraft.",
      "A photo of a f/a-18, a type of aircraft.", "A photo of a cessna 172, a type of aircraft."]),
    ("food101", ["apple_pie", "club_sandwich"], ["A photo of apple pie, a type of food.", "A photo of club sandwich, a type of food."]),
    ("oxford-pets", ["Abyssinian", "American Bulldog", "Staffordshire Bull Terrier"],
     ["A photo of a abyssinian, a type of pet.", "A photo of a american bulldog, a type of pet.",
      "A photo of a staffordshire bull terrier, a type of pet."]),
    ("stanford-cars", ["AM General Hummer SUV 2000", "Mercedes-Benz SL-Class Coupe 2009"],
     ["A photo of a am general hummer suv.", "A photo of a mercedes benz sl class coupe."]),
    ("caltech101", ["Faces_easy", "airplanes", "car_side"],
     ["A photo of a faces easy.", "A photo of a airplanes.", "A photo of a car side."]),
    ("caltech256", ["001.ak47", "232.t-shirt", "253.faces-easy-101"],
     ["A photo of a ak47.", "A photo of a t shirt.", "A photo of a faces easy 101."]),
    ("cifar100", ["aquarium_fish", "pickup_truck"], ["This is a photo of a aquarium fish", "This is a photo of a pickup truck"]),
    ("stl10", ["airplane", "ship"], ["This is a photo of a airplane", "This is a photo of a ship"]),
    ("sun397", ["abbey", "apartment_building/outdoor"],
     ["This is a photo of a abbey", "This is a photo of a apartment building outdoor"]),
    ("tinyimagenet", ["goldfish", "English setter", "jack-o'-lantern"],
     ["This is a photo of a goldfish", "This is a photo of a english setter", "This is a photo of a jack o' lantern"]),
    ("pcam", ["no tumour", "tumour"],
     ["Tthis is a photo of healthy lymph node tissue.", "This is a photo of lymph node tumor tissue."]),
]


@pytest.mark.parametrize("dataset, raw, expected", PUBLIC_CODE, ids=[c[0] for c in PUBLIC_CODE])
def test_public_code_prompts_are_the_public_codes(dataset, raw, expected):
    assert prompts(dataset, raw) == expected


def test_public_code_flowers_keep_its_list_and_its_trailing_spaces():
    got = dict(zip(Flowers102.classes, prompts("flowers102", list(Flowers102.classes))))
    assert got["hard-leaved pocket orchid"] == "A photo of a hard leaved pocket orchid, a type of flower."
    assert got["colt's foot"] == "A photo of a colts foot, a type of flower."
    assert got["cyclamen"] == "A photo of a cyclamen , a type of flower."


def test_public_code_imagenet_names_may_repeat_as_its_do():
    names, _ = class_prompts("imagenet", ["crane", "Cardigan", "crane", "cardigan"], "public-code")
    assert names == ["crane", "cardigan", "crane", "cardigan"]  # kept: the public code's classifier has them too


CLIP = [  # (dataset, names as torchvision gives them, the first prompt of each class, templates in the ensemble)
    ("dtd", ["banded", "zigzagged"], ["a photo of a banded texture.", "a photo of a zigzagged texture."], 8),
    ("eurosat", ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
                 "Residential", "River", "SeaLake"],
     ["a centered satellite photo of annual crop land.", "a centered satellite photo of forest.",
      "a centered satellite photo of brushland or shrubland."], 3),
    ("food101", ["apple_pie"], ["a photo of apple pie, a type of food."], 1),
    ("cifar10", ["airplane", "automobile"], ["a photo of a airplane.", "a photo of a automobile."], 18),
    ("cifar100", ["aquarium_fish"], ["a photo of a aquarium_fish."], 18),  # CLIP_benchmark leaves the underscore
    ("sun397", ["apartment_building/outdoor"], ["a photo of a apartment building outdoor."], 2),
    ("fgvc-aircraft", ["707-320"], ["a photo of a 707-320, a type of aircraft."], 2),
    ("stanford-cars", ["AM General Hummer SUV 2000"], ["a photo of a AM General Hummer SUV 2000."], 8),
    ("pcam", ["no tumour", "tumour"], ["a histopathology slide showing lymph node",
                                      "a histopathology slide showing lymph node containing metastatic tumor tissue"], 2),
    ("caltech256", ["001.ak47"], ["a bad photo of a 001.ak47."], 80),  # no entry of its own: ImageNet's templates
]


@pytest.mark.parametrize("dataset, raw, first, n_templates", CLIP, ids=[c[0] for c in CLIP])
def test_clip_prompts_are_clip_benchmarks(dataset, raw, first, n_templates):
    names, templates = class_prompts(dataset, raw, "clip")
    assert len(templates) == n_templates
    assert [templates[0].format(n) for n in names][: len(first)] == first


def test_clip_curated_names_go_by_position_in_the_datasets_class_order():
    caltech = ["Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes"] + [f"c{i}" for i in range(95)]
    names, templates = class_prompts("caltech101", caltech, "clip")
    assert names[:6] == ["off-center face", "centered face", "leopard", "motorbike", "accordion", "airplane"]
    assert len(templates) == 34
    flowers, _ = class_prompts("flowers102", list(Flowers102.classes), "clip")
    assert flowers[list(Flowers102.classes).index("ball moss")] == "air plant"  # OpenAI's wording, not torchvision's
    with pytest.raises(UserError, match="CLIP's list names 10"):
        class_prompts("eurosat", ["AnnualCrop", "Forest"], "clip")


def test_clip_imagenet_names_and_templates_are_openais():
    from pmg_core.data.paper_datasets import imagenet_words

    wnids = list(imagenet_names())
    names = imagenet_words(wnids, directory=None, prompts="clip")
    assert (names[0], names[1], len(names)) == ("tench", "goldfish", 1000)
    assert len(set(names)) == 998  # OpenAI's list names "missile" and "sunglasses" twice; kept as CLIP_benchmark does
    _, templates = class_prompts("imagenet", names, "clip")
    assert len(templates) == 80 and templates[0] == "a bad photo of a {}."


def test_first_synonyms_come_from_the_datasets_own_synset_list(tmp_path):
    import torch

    (tmp_path / "words.txt").write_text("n02113186\tCardigan, Cardigan Welsh corgi\n")
    (tmp_path / "LOC_synset_mapping.txt").write_text("n02012849 crane\n")
    torch.save(({"n03710721": ("maillot", "tank suit")}, ["n03710721"]), tmp_path / "meta.bin")  # torchvision's
    assert first_synonyms(tmp_path) == {"n02113186": "Cardigan", "n02012849": "crane", "n03710721": "maillot"}


@pytest.mark.parametrize("config", [EvalConfig, TrainConfig])
def test_an_unknown_protocol_is_one_sentence(config):
    with pytest.raises(UserError, match="Unknown prompts 'openai': choose one of public-code, clip"):
        config(prompts="openai").validate()
