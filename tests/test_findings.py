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
