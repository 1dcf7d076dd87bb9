"""The app's sentence about PMG-AFT against TeCoA is read from benchmarks/, never typed in."""
import json
import shutil
from pathlib import Path

from pmg_core.leaderboard import card_stats, findings

ROOT = Path(__file__).resolve().parents[1]


def test_the_sentence_carries_the_committed_seed_study_numbers():
    text = findings.pmg_aft_vs_tecoa()
    runs = json.loads((ROOT / "benchmarks" / "seed_study" / "tecoa.json").read_text())["runs"]
    tecoa_robust = sum(r["robust"] for r in runs) / len(runs)
    assert "behind TeCoA" in text and f"{tecoa_robust:.1f}%" in text and "clean term hurts" in text


def test_other_numbers_in_the_files_change_the_sentence_and_no_files_give_none(tmp_path):
    shutil.copytree(ROOT / "benchmarks" / "seed_study", tmp_path / "seed_study")
    path = tmp_path / "seed_study" / "pmg-aft.json"
    doc = json.loads(path.read_text())
    for r in doc["runs"]:
        r["clean"], r["robust"] = 77.7, 66.6
    path.write_text(json.dumps(doc))
    text = findings.pmg_aft_vs_tecoa(tmp_path)
    assert "ahead of TeCoA: 77.7% clean and 66.6% robust" in text
    assert findings.pmg_aft_vs_tecoa(tmp_path / "nowhere") is None


def _study_with_tga_zsr(tmp_path, clean_shift, robust_shift):
    """The committed seed study plus a TGA-ZSR file: TeCoA's runs moved by the given points."""
    shutil.copytree(ROOT / "benchmarks" / "seed_study", tmp_path / "seed_study", dirs_exist_ok=True)
    doc = json.loads((tmp_path / "seed_study" / "tecoa.json").read_text())
    for r in doc["runs"]:
        r["method"], r["clean"], r["robust"] = "tga-zsr", r["clean"] + clean_shift, r["robust"] + robust_shift
    (tmp_path / "seed_study" / "tga-zsr.json").write_text(json.dumps(doc))
    return doc["runs"]


def test_tga_zsr_sentence_reads_its_seeds_and_says_when_a_gap_is_within_the_seeds_spread(tmp_path):
    runs = _study_with_tga_zsr(tmp_path, clean_shift=10, robust_shift=0.5)
    text = findings.tga_zsr_vs_tecoa(tmp_path)
    clean = sum(r["clean"] for r in runs) / len(runs)
    assert f"({len(runs)} seeds), reaches {clean:.1f}% clean" in text
    assert "robust gap to TeCoA (+0.5 points) is within the spread" in text
    assert "clean lead over TeCoA (+10.0 points) is beyond the spread" in text
    _study_with_tga_zsr(tmp_path, clean_shift=-10, robust_shift=8)
    text = findings.tga_zsr_vs_tecoa(tmp_path)
    assert "clean deficit to TeCoA (-10.0 points)" in text and "robust lead over TeCoA (+8.0" in text
    assert "within" not in text
    (tmp_path / "seed_study" / "eps4-tga-zsr.json").unlink(missing_ok=True)
    assert "At eps 4/255" not in findings.tga_zsr_vs_tecoa(tmp_path)  # no TGA-ZSR run at that radius
    eps4 = json.loads((tmp_path / "seed_study" / "eps4-tecoa.json").read_text())
    for r in eps4["runs"]:
        r["method"], r["clean"], r["robust"] = "tga-zsr", 71.1, 52.2
    (tmp_path / "seed_study" / "eps4-tga-zsr.json").write_text(json.dumps(eps4))
    assert "At eps 4/255 it reaches 71.1% clean and 52.2% robust (TeCoA" in findings.tga_zsr_vs_tecoa(tmp_path)
    (tmp_path / "seed_study" / "tga-zsr.json").unlink()
    assert findings.tga_zsr_vs_tecoa(tmp_path) is None


def _ones(n: int, right: int) -> list[int]:
    return [1] * right + [0] * (n - right)


def _flip(right: list[int], lose: int = 0, gain: int = 0) -> list[int]:
    """The same images with the first `lose` right ones wrong and the first `gain` wrong ones right."""
    out, lost, gained = list(right), 0, 0
    for i, r in enumerate(right):
        if r and lost < lose:
            out[i], lost = 0, lost + 1
        elif not r and gained < gain:
            out[i], gained = 1, gained + 1
    return out


def _cards(folder, per_image=True):
    """Two models, each undefended and behind TTC at its published threshold, on the same 100 images:
    TTC costs a 8 images (and gives none back); for b it swaps one right image for another."""
    from helpers import hand_card, write_cards

    clean = {"synth-shape": _ones(100, 80)}
    a, b = _ones(100, 60), _ones(100, 50)
    cards = [hand_card("a", clean, {"synth-shape": a}, per_image=per_image),
             hand_card("b", clean, {"synth-shape": b}, per_image=per_image),
             hand_card("a+ttc", clean, {"synth-shape": _flip(a, lose=8)}, defense="ttc", per_image=per_image),
             hand_card("b+ttc", {"synth-shape": _flip(clean["synth-shape"], lose=1, gain=1)},
                       {"synth-shape": _flip(b, lose=1, gain=1)}, defense="ttc", per_image=per_image),
             hand_card("c", clean, {"synth-shape": a}, per_image=per_image),  # behind another defense only
             hand_card("c+clipure", clean, {"synth-shape": a}, defense="clipure", per_image=per_image)]
    return write_cards(folder / "cards" / "mini", cards)


def test_ttc_sentence_is_a_paired_test_of_each_model_against_itself_on_the_same_images(tmp_path):
    _cards(tmp_path)
    text = findings.ttc_verdict(tmp_path)
    assert "paired on the same images: it adds robust accuracy detectably to 0 of 2 models, takes it detectably " \
           "from 1, and no difference is detectable for 1" in text
    # 8 images lost, none gained: a difference the two cards' own intervals (60.0 [50.2, 69.1] and
    # 52.0 [42.3, 61.5]) would not show, which the pairing does.
    assert "a: loses 8.0 points (-8.0 points [-13.5, -2.3], exact McNemar p = 0.008; of 100 images, 8 right only " \
           "undefended, 0 only behind it)" in text
    assert "b: no detectable difference at n = 100 (+0.0 points [-3.3, +3.3], exact McNemar p = 1.00" in text
    assert "Clean accuracy: no detectable difference for any of the 2 models; the largest, a: no detectable " \
           "difference at n = 100 (+0.0 points [" in text
    assert "clipure" not in text and "did not converge" not in text and "c " not in text
    assert findings.clipure_verdict(tmp_path).startswith("Behind CLIPure (this project's variant) (mini v2")


def test_ttc_sentence_without_per_image_results_says_no_paired_test_and_gives_each_interval(tmp_path):
    _cards(tmp_path, per_image=False)
    text = findings.ttc_verdict(tmp_path)
    assert "no paired test can be made, since the cards carry no per-image results" in text
    assert "(%, 95% interval, n = 100 images each) a 60.0 [50.2, 69.1] -> 52.0 [42.3, 61.5]" in text
    assert "detectabl" not in text
    (tmp_path / "cards" / "mini" / "a.json").write_text("{not json")
    (tmp_path / "cards" / "mini" / "b.json").unlink()
    assert findings.ttc_verdict(tmp_path) is None


def test_a_beats_b_is_a_paired_test_and_a_gap_of_a_few_images_is_no_finding(tmp_path):
    from helpers import hand_card

    clean = {"synth-shape": _ones(40, 30)}
    a = hand_card("a", clean, {"synth-shape": _ones(40, 20)})
    b = hand_card("b", clean, {"synth-shape": _flip(_ones(40, 20), gain=3)})
    text = findings.versus([a, b], "a", "b")
    assert text.startswith("b against a (mini v2, Linf 8/255), paired on the same images: robust accuracy no "
                           "detectable difference at n = 40 (+7.5 points [")
    assert "exact McNemar p = 0.25; of 40 images, 0 right only for a, 3 only for b" in text
    c = hand_card("c", clean, {"synth-shape": _flip(_ones(40, 20), gain=12)})
    assert "robust accuracy ahead by 30.0 points (" in findings.versus([a, c], "a", "c")
    found = findings.board_findings([a, c])
    assert found[0].startswith("c against a (mini v2, Linf 8/255), paired")
    # The textbook's pairs (tests/test_stats.py): Newcombe's interval just excludes 0, the exact test does not
    # reject; the sentence claims no difference and says why.
    first = [1] * 59 + [1] * 6 + [0] * 16 + [0] * 80
    second = [1] * 59 + [0] * 6 + [1] * 16 + [0] * 80
    d = hand_card("d", {"synth-shape": first}, {"synth-shape": first})
    e = hand_card("e", {"synth-shape": first}, {"synth-shape": second})
    assert ("robust accuracy borderline at n = 161: the interval excludes 0 but the exact test does not reject "
            "(+6.2 points [+0.5, +11.9], exact McNemar p = 0.052;") in findings.versus([d, e], "d", "e")


def test_the_app_notes_carry_every_committed_finding():
    """With the embedded fine-tunes loaded, the About and Attack tabs' notes hold each sentence the files give."""
    from studio.state import EMBEDDED_PMG_AFT, EMBEDDED_TGA_ZSR, Studio

    studio = Studio(models={EMBEDDED_PMG_AFT: None, EMBEDDED_TGA_ZSR: None}, mode="test")
    notes = studio.model_notes()
    for sentence in (findings.pmg_aft_vs_tecoa(), findings.tga_zsr_vs_tecoa(), findings.ttc_verdict()):
        assert sentence is None or sentence in notes
    assert findings.pmg_aft_vs_tecoa() in notes
    assert Studio(models={"clip": None}, mode="test").model_notes() == ""


def test_about_shows_the_committed_robustness_cards_of_a_loaded_model():
    from studio.state import robustness_cards

    text = robustness_cards({"tecoa-tiny": None})
    card = json.loads((findings.BENCHMARKS / "cards" / "mini" / "tecoa-tiny.json").read_text())
    assert card["weights_sha256"] in text and "tecoa-tiny+ttc@calibrated" in text and "mini v2" in text
    robust = card_stats.intervals(card)["Linf 8/255"]
    assert f"robust {robust.text()} at Linf 8/255" in text and "(n = 160)" in text  # every number with its interval and n
    assert "fare-tiny" not in text and robustness_cards({"a-model-without-cards": None}) == ""
