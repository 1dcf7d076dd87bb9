"""The attacks floor: what an adversary does to a model, and the defenses that act at test time.

Holds the PGD family, APGD, the feature attack and the AutoAttack adapter with their shared steps
(`pgd`), test-time defenses (`defenses`: TTC, CLIPure) and the adaptive suite that attacks a model
through them (`adaptive`), and text-guided attention maps (`text_attention`, read by TGA-ZSR and the
app's maps). Imports core/, data/ and models/.

`from pmg_core.attacks.pgd import PGD` and every other name of `pgd` work as they did when this floor
was one module.
"""
from ..core.layout import lend

__getattr__, __dir__ = lend(__name__, "pgd")
