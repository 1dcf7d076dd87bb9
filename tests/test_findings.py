"""The app's sentence about PMG-AFT against TeCoA is read from benchmarks/, never typed in."""
import json
import shutil
from pathlib import Path

from pmg_core import findings

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


def _card(folder, name, clean, robust, unaware=None, threshold=None, converged=True, defense="ttc"):
    """A robustness card with only what the TTC sentence reads (pmg_core/cards.py writes whole ones)."""
    averages = {"clean_acc": clean, "robust_acc": {"Linf 8/255": robust}}
    if unaware is not None:
        averages["robust_acc_unaware"] = {"Linf 8/255": unaware}
    card = {"card_version": 1, "name": name, "model": name, "averages": averages,
            "defense": None if threshold is None else {"name": defense, "threshold": threshold},
            "protocol": {"name": "mini", "version": 1, "limit": None}, "convergence": {"converged": converged}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(card))


def test_ttc_sentence_compares_each_model_behind_the_defense_with_itself_undefended(tmp_path):
    mini = tmp_path / "cards" / "mini"
    _card(mini, "a", 0.8, 0.2)
    _card(mini, "b", 0.8, 0.4)
    _card(mini, "a+ttc", 0.8, 0.1, 0.2, "published")
    _card(mini, "b+ttc", 0.8, 0.35, 0.45, "published")
    _card(mini, "c", 0.8, 0.2)  # behind another defense only: not in TTC's sentence
    _card(mini, "c+clipure", 0.8, 0.9, 0.9, "published", defense="clipure")
    text = findings.ttc_verdict(tmp_path)
    assert "at its published threshold gives no model more robust accuracy" in text
    assert "(-10.0 to -5.0 points across 2 models; +0.0 to +5.0 under the attack unaware of it; clean accuracy +0.0 to +0.0)" in text
    assert "calibrated" not in text and "did not converge" not in text
    _card(mini, "a+ttc@calibrated", 0.7, 0.3, 0.3, "calibrated", converged=False)
    _card(mini, "b+ttc@calibrated", 0.6, 0.4, 0.5, "calibrated")
    text = findings.ttc_verdict(tmp_path)
    assert "calibrated on the clean images (their median tau) TTC gives at most +10.0 points of robust accuracy (a)" in text
    assert "clean accuracy -20.0 to -10.0" in text
    assert "1 of the 4 defended cards did not converge" in text
    (mini / "a.json").write_text("{not json")
    (mini / "b.json").unlink()
    assert findings.ttc_verdict(tmp_path) is None


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
    assert card["weights_sha256"] in text and "tecoa-tiny+ttc@calibrated" in text and "mini v1" in text
    assert "fare-tiny" not in text and robustness_cards({"a-model-without-cards": None}) == ""
