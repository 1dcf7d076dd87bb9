"""The embedded captioned world: determinism, correct labels, held-out combinations, the tasks."""
import json
import re

import numpy as np
import pytest
import torch

from pmg_core.data import synthetic as S
from pmg_core.data.datasets import expand_names, get_dataset, list_groups

EVAL_TASKS = [n for n, t in S.TASKS.items() if t.group == "mini"]


def _held_out(colour: np.ndarray, shape: np.ndarray) -> np.ndarray:
    pairs = {(S.COLOUR_NAMES.index(c), S.SHAPES.index(s)) for c, s in S.HELDOUT_COMBOS}
    return np.array([(int(c), int(s)) in pairs for c, s in zip(colour, shape)], dtype=bool)


def test_same_seed_same_pixels_different_seed_different_pixels():
    a = S.render(S.sample_pretraining(np.random.default_rng(1), 64))
    b = S.render(S.sample_pretraining(np.random.default_rng(1), 64))
    c = S.render(S.sample_pretraining(np.random.default_rng(2), 64))
    assert a.dtype == torch.uint8 and a.shape == (64, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    (x1, t1), (x2, t2), (x3, _) = (next(S.pretraining_batches(32, seed=s)) for s in (5, 5, 6))
    assert torch.equal(x1, x2) and t1 == t2
    assert not torch.equal(x1, x3)
    assert x1.dtype == torch.float32 and 0 <= x1.min() and x1.max() <= 1


def test_task_splits_are_fixed_and_distinct():
    a, b = get_dataset("synth-shape", split="test", n=40), get_dataset("synth-shape", split="test", n=40)
    assert torch.equal(a.data.images, b.data.images)
    assert torch.equal(a.data.labels, b.data.labels)
    train = get_dataset("synth-shape", split="train", n=40)
    assert not torch.equal(a.data.images, train.data.images)
    seeds = {tuple(S.task_seed(n, sp)) for n in list(S.TASKS) + [S.REAL_DIGITS] for sp in S.SPLITS}
    assert len(seeds) == 2 * (len(S.TASKS) + 1)


def test_registry_groups_and_task_shapes():
    mini = expand_names("mini")
    assert len(mini) >= 9 and S.REAL_DIGITS in mini and "synth-heldout" in mini
    assert list_groups()["finetune"] == ["synth-finetune"]
    for name in mini:
        ds = get_dataset(name, split="test", n=30 if name != S.REAL_DIGITS else None)
        x, y = ds.data[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert all("{}" in t for t in ds.templates) and len(set(ds.classes)) == len(ds.classes)
        labels = ds.data.labels
        assert labels.min() >= 0 and labels.max() < len(ds.classes)
    assert len(get_dataset("synth-colour")) == 500
    assert len(get_dataset(S.REAL_DIGITS)) == 500


@pytest.mark.parametrize("name", EVAL_TASKS + ["synth-finetune"])
def test_labels_match_the_generators_attributes(name):
    spec = S.TASKS[name]
    ds = get_dataset(name, split="test", n=120)
    sc, labels = S.task_scenes(name, "test", 120)  # regenerated independently
    np.testing.assert_array_equal(ds.data.labels.numpy(), labels)
    attrs = ds.info["attributes"]
    for key, value in sc.attributes().items():
        np.testing.assert_array_equal(attrs[key], value)
    assert set(labels) == set(range(len(spec.classes)))
    if spec.label == "count":
        np.testing.assert_array_equal(sc.count, labels + 1)
    elif spec.label == "combo":
        names = [f"{S.COLOUR_NAMES[c]} {S.SHAPES[s]}" for c, s in zip(sc.colour, sc.shape)]
        assert names == [spec.classes[y] for y in labels]
    elif spec.label == "shape_pattern":
        names = [f"{S.PATTERNS[p]} {S.SHAPES[s]}" for p, s in zip(sc.pattern, sc.shape)]
        assert names == [spec.classes[y] for y in labels]
    else:
        np.testing.assert_array_equal(getattr(sc, spec.label), labels)
        vocab = {"shape": S.SHAPES, "colour": S.COLOUR_NAMES, "pattern": S.PATTERNS, "size": S.SIZES,
                 "position": S.POSITIONS, "background": S.BACKGROUNDS, "digit": [str(d) for d in range(10)]}
        for cls, word in zip(spec.classes, vocab[spec.label]):
            assert word in cls


def test_colour_task_pixels_have_the_labelled_colour():
    ds = get_dataset("synth-colour", split="test")
    sc = S.Scenes(**ds.info["attributes"])
    palette = np.array(list(S.COLOURS.values()))
    # solid large shapes cover the image center: its colour is the label's colour
    rows = np.nonzero((sc.pattern == S.PATTERNS.index("solid")) & (sc.size == S.SIZES.index("large")))[0]
    assert len(rows) >= 10
    for i in rows:
        x, y = ds.data[int(i)]
        pixel = x[:, 14:18, 14:18].mean((1, 2)).numpy()
        assert int(np.argmin(((palette - pixel) ** 2).sum(1))) == y


def test_background_task_corner_pixels():
    ds = get_dataset("synth-background", split="test", n=80)
    levels = {"black": 0.06, "gray": 0.5, "white": 0.94}
    for i in range(len(ds)):
        x, y = ds.data[i]
        name = S.BACKGROUNDS[y]
        corner = torch.cat([x[:, :2, :2].flatten(), x[:, -2:, -2:].flatten()])
        sc = S.Scenes(**ds.info["attributes"])
        if sc.size[i] == S.SIZES.index("large"):
            continue
        if name == "noisy":
            assert float(x[:, :4, :4].std()) > 0.05
        else:
            assert abs(float(corner.mean()) - levels[name]) < 0.12


def test_held_out_combinations_never_in_pretraining():
    rng = np.random.default_rng(123)
    pattern = re.compile("|".join(rf"\b{c} {s}" for c, s in S.HELDOUT_COMBOS))
    total_shapes = 0
    for _ in range(8):
        sc = S.sample_pretraining(rng, 512)
        shapes = sc.kind == S.KIND_SHAPES
        total_shapes += int(shapes.sum())
        assert not _held_out(sc.colour[shapes], sc.shape[shapes]).any()
        for text in S.captions(sc, rng):
            assert not pattern.search(text), text
    assert total_shapes > 2000
    for _, text in S.pretraining_batches(256, seed=0, steps=2):
        assert not any(pattern.search(t) for t in text)
    # ... nor in any other task's images or the fine-tuning set
    for name in [n for n in S.TASKS if n != "synth-heldout"]:
        for split in S.SPLITS:
            sc, _ = S.task_scenes(name, split, 300)
            shapes = sc.kind == S.KIND_SHAPES
            assert not _held_out(sc.colour[shapes], sc.shape[shapes]).any(), (name, split)
    sc, _ = S.task_scenes("synth-heldout", "test")
    assert _held_out(sc.colour, sc.shape).all()


def test_caption_matches_describe_the_images():
    rng = np.random.default_rng(7)
    sc = S.sample_pretraining(rng, 200)
    text, said = S.captions(sc, rng, return_mentions=True)
    match = S.caption_matches(sc, said)
    assert match.diagonal().all()
    assert match.sum() > 200  # short captions also fit other images
    for i, t in enumerate(text):
        if sc.kind[i] == S.KIND_SHAPES and said[i, S.CAPTION_ATTRIBUTES.index("colour")] >= 0:
            assert S.COLOUR_NAMES[sc.colour[i]] in t
        if sc.kind[i] != S.KIND_SHAPES:
            assert "digit" in t


def test_finetune_classes_are_not_an_evaluation_label_set():
    ft = get_dataset("synth-finetune", split="test", n=48)
    assert len(ft.classes) == 24
    for name in expand_names("mini"):
        classes = get_dataset(name, split="test", n=10).classes if name != S.REAL_DIGITS else \
            [f"digit {i}" for i in range(10)]
        assert sorted(classes) != sorted(ft.classes)
        assert not set(classes) & set(ft.classes), name
    train = get_dataset("synth-finetune", split="train", n=48)
    assert not torch.equal(train.data.images, ft.data.images)


def test_real_digits_are_scikit_learn_images():
    from sklearn.datasets import load_digits

    d = load_digits()
    ds = get_dataset(S.REAL_DIGITS, split="test")
    idx = ds.info["indices"]
    assert len(idx) == 500 and len(set(idx)) == 500
    train = get_dataset(S.REAL_DIGITS, split="train")
    assert not set(idx) & set(train.info["indices"]) and len(ds) + len(train) == len(d.target)
    np.testing.assert_array_equal(ds.data.labels.numpy(), d.target[idx])
    x, _ = ds.data[3]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey
    # downsampling the 32x32 image back to 8x8 gives the original scan (up to rounding)
    small = torch.nn.functional.avg_pool2d(x[:1].unsqueeze(0), 4)[0, 0].numpy()
    original = d.images[idx[3]] / 16
    assert np.corrcoef(small.ravel(), original.ravel())[0, 1] > 0.95


def _expected_accuracies():
    from pmg_core.models.checkpoints import read_metadata
    from pmg_core.core.env import checkpoint_dir

    path = checkpoint_dir() / "clip-tiny.safetensors"
    assert path.is_file(), "checkpoints/clip-tiny.safetensors is shipped with the repository"
    meta = read_metadata(path)
    return meta["metrics"]


def test_shipped_clip_tiny_reproduces_its_clean_accuracies():
    from pmg_core.models.clip import load_model
    from pmg_core.training.pretrain import CHECK_LIMIT, zero_shot_accuracies

    metrics = _expected_accuracies()
    expected = metrics["check_accuracy"]
    model = load_model("clip-tiny")
    got = zero_shot_accuracies(model, list(expected), limit=CHECK_LIMIT)
    for name, acc in expected.items():
        assert abs(got[name] - acc) <= 3.0, (name, got[name], acc)
    assert metrics["mini_average"] >= 70, json.dumps(metrics)
