"""Where each model looks and how much it takes: maps and robustness radii, in the library, the CLI and the app."""
import json
import math
import subprocess
import sys
import zipfile

import pytest

from pmg_core.core.env import checkpoint_dir
from pmg_core.core.errors import UserError
from pmg_core.evaluation.explore import AttackSettings, label_presets, robustness_radius
from pmg_core.data.images import load_image
from pmg_core.models.clip import load_model
from studio import assets, one_image
from studio.state import Studio
from helpers import EACH, EXAMPLE, LABELS, ROOT, tiny_models

pytestmark = pytest.mark.skipif(not (checkpoint_dir() / "fare-tiny.safetensors").is_file(),
                                reason="the embedded checkpoints are not built")


@pytest.fixture(scope="module")
def embedded():
    return [load_model("clip-tiny"), load_model("fare-tiny")]


def _radius(r) -> float:
    return math.inf if r.radius_255 is None else r.radius_255


def test_the_original_clip_gives_way_sooner_than_a_robust_fine_tune_on_the_embedded_examples(embedded):
    presets, compared = label_presets(real_clip=False), 0
    for file, task, true in assets.EXAMPLES:
        image = load_image(str(assets.EXAMPLES_DIR / file))
        clip, fare = (robustness_radius(m, image, presets[task], true, AttackSettings(steps=10)) for m in embedded)
        assert (clip.steps, clip.tolerance_255, clip.high_255) == (10, 1.0, 16.0)
        if clip.radius_255 == 0 or fare.radius_255 == 0 or clip.radius_255 is None:
            continue  # wrong on the clean image, or never fooled: nothing to compare
        assert _radius(clip) < _radius(fare), file
        compared += 1
    assert compared >= 2


def test_the_cli_writes_the_same_numbers_as_the_app_s_details_and_zip(embedded, tmp_path):
    studio = Studio.create(embedded, tmp_path / "ckpt")
    result = {}
    for _ in one_image.attack_stream(studio, EXAMPLE, LABELS, "circle", "Linf", 4, 10, 0, "cross-entropy", "", EACH,
                                     studio.names, False, False, result=result):  # every step, as the CLI
        pass
    *_, (grid, chart, zipped, details, _) = one_image.extras(studio, result, True, True)
    assert grid.count("<img ") == 2 * 6 and chart is not None  # 3 maps x clean and adversarial, per model
    cli = subprocess.run([sys.executable, "-m", "pmg_core", "attack", EXAMPLE, "--models", "clip-tiny,fare-tiny",
                          "--labels", LABELS, "--true", "circle", "--eps", "4", "--steps", "10", "--radius",
                          "--maps", str(tmp_path / "maps"), "--json", str(tmp_path / "cli.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    written = json.loads((tmp_path / "cli.json").read_text())
    assert written["radius"] == details["radius"] and [r["model"] for r in details["radius"]] == studio.names
    assert [v["adversarial"] for v in written["verdicts"]] == [v["adversarial"] for v in details["verdicts"]]
    assert len(list((tmp_path / "maps").glob("*.png"))) == 2 * 6
    with zipfile.ZipFile(zipped) as z:
        names = set(z.namelist())
        assert json.loads(z.read("details.json")) == details
    assert {"clean.png", "radius.png", "adversarial-clip-tiny.png", "adversarial-fare-tiny.png"} <= names
    assert sum(n.startswith("maps/") for n in names) == 2 * 6


def test_a_public_server_counts_the_radius_before_any_work(tmp_path):
    studio = Studio.create(tiny_models(), tmp_path, public=True)
    result = {}
    one_image.attack(studio, EXAMPLE, LABELS, "circle", "Linf", 4, 40, 0, "cross-entropy", "", EACH, studio.names,
                     stop_early=True, result=result)
    with pytest.raises(UserError, match="radius and maps request asks for 3 model"):
        list(one_image.extras(studio, result, True, True))
    assert list(one_image.extras(studio, result, True, False))  # the maps alone fit
