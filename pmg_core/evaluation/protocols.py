"""Evaluation protocols as data: a name and a version for everything a reported number depends on.

A `Protocol` holds the datasets, how many samples of each (drawn once by a fixed seed: the sample
manifest), the threat models (norm, eps list, attack and its step count), the attack menu every
model faces (`menu`, pmg_core/attacks/adaptive.py: one menu for every row, defended or not, best-of per
image; behind a defense also the attack unaware of it and, where the defense has a gate, the gate
attack), the prompts, which numerics preset judges each model, and the draws a randomised defense
is attacked and judged with (`defended`: EOT and judge draws). Changing any of these makes a new
version, never a silent edit: `definition_sha256` hashes them, each registered version's hash is
pinned in DEFINITIONS beside it (a test fails when a definition changes under the same version),
and a card (pmg_core/leaderboard/cards.py) names its protocol's name, version, definition hash and manifest
hashes, so two numbers are comparable exactly when those agree.

A manifest is the sorted list of test indices a protocol evaluates on one dataset: the first
`samples` of a seeded permutation (every index when `samples` is None), the same images for every
model. Its sha256 covers the dataset's name and size, the indices, and the pixels (rounded to
8 bits) and labels of the chosen images, so a change in the data shows too. The embedded world is
generated deterministically, so `mini`'s hashes are pinned here and a run refuses data that no
longer matches them; the paper's sets live on people's disks, so their hashes are recorded in each
card instead.

Built in: `mini` (the embedded world's ten tasks, 16 images each; about an hour for twenty models on
two CPU cores), `tecoa16-pgd` (PGD-10 at 1/255 on 16 datasets, the evaluation setting of the PMG-AFT
and TTC code), `zs16-aa` (APGD-CE and APGD-T at 1, 2 and 4/255) and `rvlm13-aa` (RobustVLM's recipe
as the zoo records it). `register_protocol` adds others (tests register tiny ones).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch

from ..attacks.adaptive import MENU
from ..attacks.pgd import APGD_TARGETS
from ..data.datasets import ZeroShotDataset, expand_names
from ..attacks.defenses import get_defense
from ..core.errors import UserError, check
from ..core.registry import Registry
from ..core.units import from_255
from ..models.zoo import PAPER_16, ROBUSTVLM_ZERO_SHOT


@dataclass(frozen=True)
class ThreatModel:
    """One norm, the radii it is attacked at, and the attack (evaluate's attack names)."""

    norm: str  # Linf | L2
    eps_255: tuple[float, ...]
    attack: str  # pgd | cw | autoattack | ...
    steps: int
    step_size_255: float | None = None  # None: the attack's own (AutoAttack adapts it)


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    title: str
    datasets: tuple[str, ...]  # names or groups of the dataset registry
    samples: int | None  # per dataset, from a seeded permutation; None: every test image
    threats: tuple[ThreatModel, ...]
    menu: tuple[str, ...] = ("bpda-eot",)  # adaptive.py's attacks every model faces, best-of per image
    restarts: int = 1  # of every attack of the menu, each from its own seeded start
    robust_rule: str = "ever"  # a deterministic model's rule (adaptive.py); a randomised one's: right on all draws
    prompts: str = "public-code"  # paper_prompts.py; the embedded world has one template per task
    preset: str | None = None  # None: each model is judged with the numerics it was fine-tuned with
    defended: dict = field(default_factory=lambda: dict(PAPER_DEFENDED))  # a randomised defense's EOT and judge draws
    apgd_targets: int = APGD_TARGETS  # apgd-t's target classes (the likeliest wrong ones)
    convergence_samples: int | None = None  # the doubled-budget check: still-robust images, at most max(this, 20)
    seed: int = 0  # draws the manifests (and seeds the attacks' random starts)
    batch_size: int = 64  # defended rows depend on it (one random stream per batch), so it is pinned
    pinned: dict = field(default_factory=dict)  # dataset -> manifest sha256, where the data is generated here
    note: str = ""

    def dataset_names(self) -> list[str]:
        return expand_names(list(self.datasets))

    def describe(self) -> dict:
        """The protocol as plain data (what a card records)."""
        out = asdict(self)
        out["datasets"] = self.dataset_names()
        out["definition_sha256"] = self.definition_sha256()
        return out

    def definition_sha256(self) -> str:
        """The hash of everything a number depends on: every field but the name, version and words
        (title, note), datasets as their group expands today."""
        out = asdict(self)
        out["datasets"] = self.dataset_names()
        for words in ("name", "version", "title", "note"):
            out.pop(words)
        return hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    dataset: str
    size: int  # the dataset's test split
    indices: tuple[int, ...]
    sha256: str

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "size": self.size, "sha256": self.sha256, "indices": list(self.indices)}


def draw_indices(size: int, samples: int | None, seed: int, limit: int | None = None) -> list[int]:
    """The manifest's indices: the first `samples` (then `limit`) of a seeded permutation, sorted.
    A limit takes a prefix of the same permutation, so smaller runs are subsets of the full one."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    n = min(x for x in (size, samples, limit) if x is not None)
    return sorted(order[:n])


def manifest_for(data: ZeroShotDataset, protocol: Protocol, limit: int | None = None) -> Manifest:
    """The manifest of `data` under `protocol`, hashed over indices, pixels and labels."""
    indices = draw_indices(len(data), protocol.samples, protocol.seed, limit)
    h = hashlib.sha256(json.dumps({"dataset": data.name, "size": len(data), "indices": indices}).encode())
    for i in indices:
        x, y = data.data[i]
        h.update((x.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes())
        h.update(int(y).to_bytes(8, "little", signed=True))
    return Manifest(data.name, len(data), tuple(indices), h.hexdigest())


def check_manifest(manifest: Manifest, protocol: Protocol, limit: int | None) -> None:
    """Refuse data that differs from what a protocol pinned (a limited run draws a different manifest)."""
    pinned = protocol.pinned.get(manifest.dataset)
    if pinned and limit is None and manifest.sha256 != pinned:
        raise UserError(f"The images of {manifest.dataset} differ from those protocol {protocol.name} "
                        f"v{protocol.version} pinned (manifest sha256 {manifest.sha256[:12]}, pinned {pinned[:12]}): "
                        "the embedded world changed, so its numbers need a new protocol version.")


def eval_settings(protocol: Protocol, threat: ThreatModel, eps_255: float, defense: str = "none",
                  threshold: float | str | None = None, doubled: bool = False) -> dict:
    """EvalConfig fields (by name) for one cell: the protocol's menu for every model, the gate attack
    added behind a defense with a gate; `doubled`: twice the steps and EOT draws (the convergence
    check). A deterministic model's EOT and judge draws become 1 in EvalConfig.validate."""
    factor = 2 if doubled else 1
    gated = defense != "none" and get_defense(defense).gated
    out = dict(eps=from_255(eps_255), attack=threat.attack, steps=threat.steps * factor, norm=threat.norm,
               step_size=from_255(threat.step_size_255) if threat.step_size_255 is not None else None,
               robust_rule=protocol.robust_rule, prompts=protocol.prompts, preset=protocol.preset,
               seed=protocol.seed, batch_size=protocol.batch_size, limit=None, menu=True,
               adaptive=[*protocol.menu, *(["gate"] if gated else [])], restarts=protocol.restarts,
               apgd_targets=protocol.apgd_targets, defense=defense)
    out.update(protocol.defended)
    out["eot"] = out.get("eot", 1) * factor
    if threshold is not None:
        out["defense_threshold"] = threshold
    return out


_PROTOCOLS = Registry("protocol")


def register_protocol(protocol: Protocol) -> Protocol:
    """Add a protocol; a name is registered once (a change is a new version, pinned in DEFINITIONS)."""
    check(protocol.name not in _PROTOCOLS or _PROTOCOLS[protocol.name] == protocol,
          f"A different protocol is already registered as '{protocol.name}'.")
    _PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> Protocol:
    return _PROTOCOLS.find(name)


def list_protocols() -> list[Protocol]:
    return list(_PROTOCOLS.values())


# Every built-in protocol version and the sha256 of its definition (Protocol.definition_sha256). A
# line is never edited: a changed definition is a new version with a new line, which tests check.
DEFINITIONS = {
    ("mini", 2): "8ebd592aa3c0d9917c96672beba73627ccda6f0560d81930b3488948e951f2c2",
    ("tecoa16-pgd", 2): "21a2dd6f5ab96f437a3872fc7e8e165775a9f74946f717142f86e450bc2f7024",
    ("zs16-aa", 2): "fe541121fce66c8cb0b976d2ed87526f718420622f0e9aa586361e24d9ff5c08",
    ("rvlm13-aa", 2): "0d1be43cc5db82c05efbfdda9eaa2ddd85f8097bec200281d69deb5d4b2d9cdc",
}

MINI_MANIFESTS = {  # pinned: `python -m pmg_core cards manifests mini` prints them again
    "synth-shape": "085c488a575dd988615456939e86b8288fa9962d9e5c3dbfba1ac662dd3dd705",
    "synth-colour": "914ee3ad882c3b3a153851d01e3ab285340853c832fa05a58feb4ae46b587a7b",
    "synth-pattern": "4cb134d654536d6a0d83c93a42e8b617b1a709d6b1041f0a7fba4a1848e131d6",
    "synth-size": "bac1c3baed734a30799708d541fa71a787376a1870be40efa0150e7c899289ba",
    "synth-position": "7b0bf30ed1afdab09e7a36a945ca4bed8a91d93d41933170896f4de2d20a3160",
    "synth-count": "6fc466c3dfd1ec1e9b331047dd6aef814de2401de0ab3d3d494522f20fb853db",
    "synth-background": "a237186c24162f5c7c393a47128b20a1aaf457726f25ea560c0a6e2ce66f4a8f",
    "synth-digit": "8dddfc082bda60165791ed04d30126e458768499f9f6636904fcc2f1253d7132",
    "synth-heldout": "069ab3f3f55409eda551e3308458e99e440bb4a3bf3c766d0c0b0a2d5461904a",
    "real-digits": "5a71fb7c5afa330c8d38a3eed61e0d7560d4b8889eb9512c8f1ffa13d096d9e1",
}

# A randomised defense (TTC) is attacked with EOT draws per step and judged on fresh draws, right on all.
PAPER_DEFENDED = {"eot": 20, "judge_draws": 10}
MINI_DEFENDED = {"eot": 5, "judge_draws": 5}
MINI_SAMPLES = 16  # per task: 160 images per model, so an average's 95% interval is at most 8 points either side

PAPER_16_SETS = ("tinyimagenet", *PAPER_16)  # TinyImageNet and the 15 zero-shot sets of PMG-AFT and TTC

register_protocol(Protocol(
    "mini", 2, f"the embedded world's ten tasks, {MINI_SAMPLES} images each, at 8/255: PGD-10 (step 2/255), APGD-CE, "
    "APGD-DLR and APGD-T for every model, EOT-5 and 5 judge draws behind a randomised defense",
    ("mini",), samples=MINI_SAMPLES, threats=(ThreatModel("Linf", (8,), "pgd", 10, 2),), menu=MENU,
    prompts="public-code", defended=dict(MINI_DEFENDED), apgd_targets=2, convergence_samples=None, seed=0,
    batch_size=64, pinned=MINI_MANIFESTS,
    note="32 px synthetic tasks (pmg_core/synthetic.py) and real digits, the `mini` dataset group, at the eps the tiny "
         "models were trained for; every model faces the same menu (APGD-T toward the 2 likeliest wrong classes where "
         "a task has 4 classes or more), the convergence check doubles steps and EOT draws on every image still "
         "robust; 160 images per model, so five models and fifteen defended rows fit 90 minutes on two CPU cores"))
register_protocol(Protocol(
    "tecoa16-pgd", 2, "16 datasets, PGD-10 (step 1/255) at 1/255, every test image: the evaluation setting of the "
    "PMG-AFT and TTC code",
    PAPER_16_SETS, samples=None, threats=(ThreatModel("Linf", (1,), "pgd", 10, 1),), menu=("bpda-eot",),
    prompts="public-code", convergence_samples=500,
    note="the PGD-10 of the public PMG-AFT and TTC code (TeCoA's own code evaluates otherwise); robust = never "
         "fooled at any iterate (their code scores the last one); behind a defense PGD-10 goes through it with "
         "EOT-20 and is judged on 10 draws"))
register_protocol(Protocol(
    "zs16-aa", 2, "16 datasets, APGD-CE and APGD-T (100 iterations) at 1, 2 and 4/255, 1000 samples each",
    PAPER_16_SETS, samples=1000, threats=(ThreatModel("Linf", (1, 2, 4), "autoattack", 100),),
    menu=("apgd-ce", "apgd-t"), prompts="clip", convergence_samples=200,
    note="AutoAttack's two gradient attacks, this project's APGD (each hands the judge its strongest image); CLIP's "
         "own class names and templates (CLIP_benchmark), so prompt engineering is the same for every model"))
register_protocol(Protocol(
    "rvlm13-aa", 2, "RobustVLM's zero-shot recipe as the zoo records it: APGD-CE and APGD-T at 1, 2 and 4/255, "
    "1000 samples",
    ROBUSTVLM_ZERO_SHOT.datasets, samples=ROBUSTVLM_ZERO_SHOT.samples,
    threats=(ThreatModel("Linf", (1, 2, 4), ROBUSTVLM_ZERO_SHOT.attack, ROBUSTVLM_ZERO_SHOT.steps),),
    menu=("apgd-ce", "apgd-t"), prompts=ROBUSTVLM_ZERO_SHOT.prompts, convergence_samples=200,
    note=f"{len(ROBUSTVLM_ZERO_SHOT.datasets)} of their 13 sets: {ROBUSTVLM_ZERO_SHOT.note}"))
