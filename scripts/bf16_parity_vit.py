"""Attack strength of bf16-made against fp32-made attacks on random-weight ViT-B/32, with the app's
example images (scikit-learn's two photos and the four drawn examples) and their label sets.

Random weights know no classes, so each model's own clean prediction is its true label; robust =
the fp32 verdict on the 8-bit adversarial image still gives it (the app's one-image path,
explore.compare, PGD-10). Two models from seed 0: CLIP's trained logit scale (100) and the init
scale (1/0.07), as `bench --parts app` uses. Writes every verdict and a summary as JSON:

    PMG_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/bf16_parity_vit.py benchmarks/bf16-parity/vitb32-random-examples.json
"""
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pmg_core.evaluation.explore import AttackSettings, compare, label_presets, prepare_image  # noqa: E402
from pmg_core.data.images import load_image  # noqa: E402
from pmg_core.models.clip import load_model  # noqa: E402
from studio.assets import EXAMPLES, EXAMPLES_DIR, PHOTOS, photo_paths  # noqa: E402

EPS_255 = (1, 4)


def example_images() -> list[tuple[str, list[str]]]:
    presets, photos = label_presets(False), photo_paths()
    return ([(photos[f], list(labels)) for f, labels, _ in PHOTOS if f in photos]
            + [(str(EXAMPLES_DIR / f), presets[task]) for f, task, _ in EXAMPLES])


def random_models() -> list:
    models = []
    for scale in (100.0, 1 / 0.07):
        torch.manual_seed(0)
        m = load_model("ViT-B-32-quickgelu")
        with torch.no_grad():
            m.clip.logit_scale.fill_(math.log(scale))
        m.name = f"seed0-scale{scale:.0f}"
        models.append(m)
    return models


def main(out: str) -> None:
    models, rows = random_models(), []
    for eps in EPS_255:
        for path, labels in example_images():
            image = load_image(path)
            for m in models:
                with torch.no_grad():
                    true = labels[int(m.classifier(labels).eval()(prepare_image(image, 224)[None]).argmax())]
                for precision in ("fp32", "bf16"):
                    t0 = time.perf_counter()
                    settings = AttackSettings(eps=eps / 255, steps=10, precision=precision)
                    v = compare([m], image, labels, true, settings).verdicts[0]
                    rows.append({"eps_255": eps, "image": Path(path).name, "model": m.name, "precision": precision,
                                 "robust": bool(v.adversarial.correct), "true_prob": v.adversarial.true_prob,
                                 "seconds": round(time.perf_counter() - t0, 2)})
                    print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for eps in EPS_255:
        for precision in ("fp32", "bf16"):
            sel = [r for r in rows if r["eps_255"] == eps and r["precision"] == precision]
            summary[f"eps{eps}-{precision}"] = {
                "n": len(sel), "robust": sum(r["robust"] for r in sel),
                "robust_acc": round(100 * sum(r["robust"] for r in sel) / len(sel), 2),
                "mean_true_prob": round(sum(r["true_prob"] for r in sel) / len(sel), 4)}
    print(json.dumps(summary, indent=1))
    Path(out).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
