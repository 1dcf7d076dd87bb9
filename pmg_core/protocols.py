"""Evaluation protocols as data: a name and a version for everything a reported number depends on.

A `Protocol` holds the datasets, how many samples of each (drawn once by a fixed seed: the sample
manifest), the threat models (norm, eps list, attack and its step count), the robust rule, the
prompts, which numerics preset judges each model, and the settings of the attack on a model behind
a test-time defense (`defended`: EvalConfig fields by name, e.g. EOT over 20 draws). Changing any
of these makes a new version, never a silent edit: a card (pmg_core/cards.py) names its
protocol's name, version and manifest hashes, so two numbers are comparable exactly when those
agree.

A manifest is the sorted list of test indices a protocol evaluates on one dataset: the first
`samples` of a seeded permutation (every index when `samples` is None), the same images for every
model. Its sha256 covers the dataset's name and size, the indices, and the pixels (rounded to
8 bits) and labels of the chosen images, so a change in the data shows too. The embedded world is
generated deterministically, so `mini`'s hashes are pinned here and a run refuses data that no
longer matches them; the paper's sets live on people's disks, so their hashes are recorded in each
card instead.

Built in: `mini` (the embedded world; minutes on a CPU), `tecoa16-pgd` (the TeCoA / PMG-AFT / TTC
table), `zs16-aa` (AutoAttack at 1, 2 and 4/255) and `rvlm13-aa` (RobustVLM's recipe as the zoo
records it). `register_protocol` adds others (tests register tiny ones).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch

from .adaptive import ADAPTIVE
from .data import ZeroShotDataset, expand_names
from .defenses import get_defense
from .errors import UserError, check
from .registry import Registry
from .units import from_255
from .zoo import PAPER_16, ROBUSTVLM_ZERO_SHOT


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
    robust_rule: str = "ever"  # evaluate's rule for our PGD; other attacks are judged on the returned image
    prompts: str = "public-code"  # paper_prompts.py; the embedded world has one template per task
    preset: str | None = None  # None: each model is judged with the numerics it was fine-tuned with
    defended: dict = field(default_factory=lambda: dict(PAPER_DEFENDED))  # EvalConfig fields for a defended model
    convergence_samples: int | None = None  # the doubled-budget check runs on the first ones (None: all)
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
        return out


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
    """EvalConfig fields (by name) for one cell; `doubled`: twice the steps and EOT draws (the
    convergence check)."""
    factor = 2 if doubled else 1
    out = dict(eps=from_255(eps_255), attack=threat.attack, steps=threat.steps * factor, norm=threat.norm,
               step_size=from_255(threat.step_size_255) if threat.step_size_255 is not None else None,
               robust_rule=protocol.robust_rule, prompts=protocol.prompts, preset=protocol.preset,
               seed=protocol.seed, batch_size=protocol.batch_size, limit=None)
    if defense != "none":
        out.update(protocol.defended, defense=defense)
        if "adaptive" in out:  # an attack on a gate only where the defense has one (TTC, not CLIPure)
            out["adaptive"] = [a for a in out["adaptive"] if get_defense(defense).gated or not ADAPTIVE[a].needs_gate]
        out["eot"] = out.get("eot", 1) * factor
        if threshold is not None:
            out["defense_threshold"] = threshold
    return out


_PROTOCOLS = Registry("protocol")


def register_protocol(protocol: Protocol) -> Protocol:
    """Add a protocol; a name is registered once (a change is a new version under a new entry)."""
    check(protocol.name not in _PROTOCOLS or _PROTOCOLS[protocol.name] == protocol,
          f"A different protocol is already registered as '{protocol.name}'.")
    _PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> Protocol:
    return _PROTOCOLS.find(name)


def list_protocols() -> list[Protocol]:
    return list(_PROTOCOLS.values())


MINI_TASKS = ("synth-shape", "synth-colour", "synth-pattern", "synth-size", "synth-heldout")
MINI_MANIFESTS = {  # pinned: `python -m pmg_core cards manifests mini` prints them again
    "synth-shape": "1b254d4c06bad4bbf6451b75673a0828c7bc56ea294b9cf9a5e91e154879c08e",
    "synth-colour": "4ecdaf5295b1a824448d1d0ecf3760fc7aedae3c15131edfe7ccd1d6444a0f18",
    "synth-pattern": "7004e87419c93df438534c990b936ea9edb06ab14f9f0cfb39ab0827836120f6",
    "synth-size": "e44cb33725a79639468ad42c031729b13b30a20cd0afb793bc0f523e9b1348d5",
    "synth-heldout": "3dfddf317c4e09929c870157385917d8752bfceadb637f0d80ec434dedbc70ef",
}

# Behind a test-time defense (pmg_core/adaptive.py): every attack of the suite through it, best-of per
# sample with the unaware one, each image judged on fresh draws of the defense (right on all).
ADAPTIVE_SUITE = ("bpda-eot", "apgd-ce", "apgd-dlr", "gate")
PAPER_DEFENDED = {"eot": 20, "adaptive": list(ADAPTIVE_SUITE), "restarts": 2, "judge_draws": 10}
MINI_DEFENDED = {"eot": 5, "adaptive": list(ADAPTIVE_SUITE), "restarts": 1, "judge_draws": 5}

PAPER_16_SETS = ("tinyimagenet", *PAPER_16)  # the TeCoA / PMG-AFT table: TinyImageNet and 15 zero-shot sets

register_protocol(Protocol(
    "mini", 1, "five tasks of the embedded world, PGD-10 (step 2/255) at 8/255, 4 images each; behind a defense "
    "the adaptive suite with EOT-5 (minutes on a CPU)",
    MINI_TASKS, samples=4, threats=(ThreatModel("Linf", (8,), "pgd", 10, 2),),
    prompts="public-code", defended=dict(MINI_DEFENDED), convergence_samples=1, seed=0, batch_size=64,
    pinned=MINI_MANIFESTS,
    note="32 px synthetic tasks (pmg_core/synthetic.py) at the eps the tiny models were trained for: shape, colour, "
         "pattern and size, and the held-out colour-shape pairs; five of ten tasks, 4 images each and EOT-5, not 20, "
         "so that ten defended models fit half an hour on two shared CPU cores (the convergence check doubles it)"))
register_protocol(Protocol(
    "tecoa16-pgd", 1, "TeCoA / PMG-AFT / TTC table: 16 datasets, PGD-10 (step 1/255) at 1/255, every test image",
    PAPER_16_SETS, samples=None, threats=(ThreatModel("Linf", (1,), "pgd", 10, 1),), prompts="public-code",
    convergence_samples=500,
    note="the papers' PGD-10; robust = never fooled at any iterate (their code scores the last one)"))
register_protocol(Protocol(
    "zs16-aa", 1, "16 datasets, AutoAttack (APGD-CE + APGD-T, 100 iterations) at 1, 2 and 4/255, 1000 samples each",
    PAPER_16_SETS, samples=1000, threats=(ThreatModel("Linf", (1, 2, 4), "autoattack", 100),), prompts="clip",
    convergence_samples=200,
    note="CLIP's own class names and templates (CLIP_benchmark), so prompt engineering is the same for every model"))
register_protocol(Protocol(
    "rvlm13-aa", 1, "RobustVLM's zero-shot recipe as the zoo records it: AutoAttack at 1, 2 and 4/255, 1000 samples",
    ROBUSTVLM_ZERO_SHOT.datasets, samples=ROBUSTVLM_ZERO_SHOT.samples,
    threats=(ThreatModel("Linf", (1, 2, 4), ROBUSTVLM_ZERO_SHOT.attack, ROBUSTVLM_ZERO_SHOT.steps),),
    prompts=ROBUSTVLM_ZERO_SHOT.prompts, convergence_samples=200,
    note=f"{len(ROBUSTVLM_ZERO_SHOT.datasets)} of their 13 sets: {ROBUSTVLM_ZERO_SHOT.note}"))
