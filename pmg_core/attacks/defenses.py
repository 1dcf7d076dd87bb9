"""Test-time defenses: a classifier is defended at inference, with no training. Registered by name
(``none``, the default, ``ttc`` and ``clipure``), one contract:

    defense = get_defense("ttc")
    defended = defense.wrap(classifier, reference)   # an nn.Module: images in [0,1] -> logits
    defended.purify(x)                               # the images the classifier then sees
    defended.forward_draws(x, k)                     # [k, batch, classes]: k draws of its randomness at once

`classifier` is a ZeroShotClassifier; `reference` an optional second one whose encoder a defense may
consult (TTC measures tau with the original CLIP's encoder when it defends a fine-tune, as its code
does); `original_reference(model, classifier)` builds it from a loaded model.

Gradients through a defended classifier (what an adaptive attack follows) are taken as BPDA: the
forward pass is the defended one exactly, and the backward treats the defense's change of the image
as a constant (d purify(x) / dx = I). For TTC this is also the exact derivative almost everywhere:
its counterattack moves by sign steps, whose derivative is zero wherever it is defined, its tau gate
is a threshold, and the step weights depend only on the gate; what is left is the identity (and the
[0,1] clamp). Its random start is averaged over by the attack (EOT, attacks.EOTPGD).

TTC (Xing, Zhao, Sebe, CVPR 2025; public code Sxing2/CLIP-Test-time-Counterattacks,
code/test_time_counterattack.py), as its code does it:
- a random start delta_0 uniform in the eps-ball (eps 4/255), clipped to the image range;
- tau = ||phi(x + delta_0) - phi(x)|| / ||phi(x)|| on unnormalised embeddings: how far the random
  start moves the embedding. phi is the defended model's encoder, or the original CLIP's when the
  defended model is a fine-tune (its code keeps a copy of CLIP's encoder for that);
- `steps` sign-gradient steps of size step_size (2 of 1/255) *up* ||phi(x + delta) - phi(x)||^2,
  each projected to the eps-ball and the image range: the counterattack pushes the embedding away
  from where the given image puts it;
- if tau < threshold (0.2; the image barely moves, so it is taken for adversarial) the result is
  x + sum_k w_k delta_k over delta_0..delta_steps with w_k proportional to exp(beta * k), beta 2;
  otherwise it is x + delta_0, the random start itself (not the unchanged image).
Deviations: noise is drawn from this defense's own seeded generator (on the CPU, so a seed gives
the same images on every device) instead of the global RNG; the passes run in fp32 (its code runs
under fp16 autocast). Several draws of one image (an attack's EOT, a judge's fresh draws) run as
one stacked batch: the embeddings that do not depend on the draw (the counterattack's anchor, the
reference encoder's embedding of the given image) are computed once for all of them, and the
noise is drawn in the order separate draws would draw it, so the images are the same.

Latent-space defenses (``Defense.latent``) change the image *embedding*, not the image: the
defended classifier encodes the image, hands the embedding to ``purify_embedding`` and classifies
what comes back (``purify(x)`` then returns the images unchanged, as they are what the encoder
sees). Such a defense may need a text embedding as its target (``anchor``), which ``defend`` builds
from the model's own text encoder. Its purification is written in differentiable tensor operations,
so an attack through it follows the exact gradient of the whole pipeline (no BPDA is needed) and,
being deterministic, needs no EOT (one draw is the expectation).

CLIPure-Cos (Zhang, Bi, Chen, Guo, Cheng, ICLR 2025, "CLIPure: Purification in Latent Space via
CLIP for Adversarially Robust Zero-Shot Classification", arXiv 2502.18176; code
TMLResearchGroup-CAS/CLIPure, CLIP_eval/CLIPure_Cos.py): the likelihood of an image embedding z is
modelled by its cosine similarity to the embedding t of a blank prompt, and z is purified by
gradient ascent on that likelihood in polar coordinates, moving its direction and keeping its
length. The blank prompt's embedding t is, as the authors' code computes it, the mean of the
normalised text embeddings of the 80 ImageNet templates with an empty class name ("a bad photo of
a .", ...; `null_prompt` BLANK_TEMPLATES, the default); any other `null_prompt` is one prompt
(e.g. "a photo of a ."):

    r = ||z||,  u_0 = z / r
    g_k = grad_u cos(r u, t) at u_k = t_hat - (u_k . t_hat) u_k      (t_hat = t / ||t||: the part of t_hat
                                                                      orthogonal to u_k)
    u_{k+1} = (u_k + eta g_k / ||g_k||) / ||u_k + eta g_k / ||g_k|| ||      for k = 0 .. K-1
    z_purified = r u_K,  then logits = scale * cos(z_purified, class text embeddings)

(the authors' code gets the same direction from autograd: r times the gradient in z). Every step
rotates u towards t_hat by atan(eta) within the plane of u_0 and t_hat, so the purified embedding
is a blend of the given one and the blank prompt's. Deviations from the authors' code: the
gradient is normalised per sample (their code divides by the L2 norm of the whole batch's gradient
tensor, so a sample's step there depends on the batch size and on the other samples); the
defaults are not theirs (10 steps of 30, with that batch-wide norm at their batch size of 2): per
sample, a step of 30 rotates u by 88 degrees, past t_hat and back, so an even number of such steps
returns u_0 unchanged. Here ``latent_steps`` (10) steps of ``latent_step_size`` (0.02, about 1.1
degrees each) move u a bounded angle towards the blank prompt; both are settings. This step is this
project's variant, not the authors' CLIPure, and its rows say so (Defense.title). The authors also
run the image encoder in fp16, where the input gradient through their purification underflows
(docs/METHOD.md): here every pass is fp32.

`describe()` gives the settings a defense actually uses (a card records them per cell): TTC's
eps, steps, step size, tau threshold, beta and seed; CLIPure's steps, step size and blank prompt,
and no threshold, no gate and no randomness.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .pgd import ascend, random_start
from ..core.errors import check, check_number
from ..models.clip import ClipModel, ZeroShotClassifier
from ..data.paper_prompts import openai_imagenet_templates
from ..core.registry import Registry

# CLIPure's blank prompt as its authors compute it: the mean over the 80 ImageNet templates, class name empty.
BLANK_TEMPLATES = "imagenet-templates"


@dataclass
class DefenseSettings:
    eps: float = 4 / 255  # pixel units: the counterattack's budget
    steps: int = 2
    step_size: float = 1 / 255
    tau_threshold: float = 0.2
    beta: float = 2.0  # step weights exp(beta * k)
    seed: int = 0  # the random starts' generator
    latent_steps: int = 10  # CLIPure: gradient steps on the embedding's direction
    latent_step_size: float = 0.02  # CLIPure: eta, in units of the unit direction vector
    null_prompt: str = BLANK_TEMPLATES  # CLIPure: the blank prompt approached (BLANK_TEMPLATES, or one prompt)

    def validate(self) -> None:
        check_number("defense eps", self.eps, low=0, high=1)
        check_number("defense steps", self.steps, low=0, high=1000, integer=True)
        check_number("defense step size", self.step_size, low=0, high=1)
        check_number("tau threshold", self.tau_threshold, low=0)
        check_number("defense beta", self.beta, low=0, high=50)
        check_number("defense seed", self.seed, low=0, high=2**63 - 1, integer=True)
        check_number("latent steps", self.latent_steps, low=0, high=10_000, integer=True)
        check_number("latent step size", self.latent_step_size, low=0, high=1e6)
        check(isinstance(self.null_prompt, str) and bool(self.null_prompt.strip()),
              "The blank prompt of a latent defense must be a non-empty text.")


_DEFENSES = Registry("defense")
register_defense = _DEFENSES.register


def list_defenses() -> list[str]:
    return list(_DEFENSES)


def get_defense(name: str, settings: DefenseSettings | None = None, **kwargs) -> "Defense":
    found = _DEFENSES.find(name)
    settings = settings or DefenseSettings(**kwargs)
    settings.validate()
    return found(settings)


class Defense:
    name = "base"
    title = ""  # what runs, for people: whose method, and in which variant
    latent = False  # True: purify_embedding changes the image embedding, the images stay as they are
    gated = False  # True: an input-dependent gate decides whether it acts (TTC's tau), which an attack may aim at
    randomised = True  # False: equal inputs give equal outputs, so an attack through it needs one draw (EOT 1)
    uses: tuple[str, ...] = ()  # the DefenseSettings it reads (describe())

    def __init__(self, settings: DefenseSettings):
        self.settings = settings

    def describe(self) -> dict:
        """The settings this defense runs with, and only those (what a card records)."""
        return {"name": self.name, "title": self.title, "randomised": self.randomised, "gated": self.gated,
                **{k: getattr(self.settings, k) for k in self.uses}}

    def anchor(self, model: ClipModel) -> torch.Tensor | None:
        """The text embedding a latent defense purifies towards, from `model`'s text encoder (None: needs none)."""
        return None

    def purify_embedding(self, feats: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        """A latent defense's embedding for unnormalised image embeddings `feats` (differentiable)."""
        return feats

    def purify(self, classifier: ZeroShotClassifier, x: torch.Tensor, reference: ZeroShotClassifier | None,
               generator: torch.Generator) -> torch.Tensor:
        """The images `classifier` sees in place of x (detached; x in [0,1], NCHW)."""
        raise NotImplementedError

    def purify_draws(self, classifier: ZeroShotClassifier, x: torch.Tensor, reference: ZeroShotClassifier | None,
                     generator: torch.Generator, draws: int) -> torch.Tensor:
        """`draws` draws of purify(x), draw after draw along the batch ([draws * batch, ...]); a
        defense that can share work between draws overrides it."""
        return torch.cat([self.purify(classifier, x, reference, generator) for _ in range(draws)])

    def wrap(self, classifier: ZeroShotClassifier, reference: ZeroShotClassifier | None = None,
             anchor: torch.Tensor | None = None) -> "DefendedClassifier":
        return DefendedClassifier(classifier, self, reference, anchor)


@register_defense("none")
class NoDefense(Defense):
    """The classifier as it is."""

    title, randomised = "no defense", False

    def purify(self, classifier, x, reference, generator):
        return x.detach()


@register_defense("ttc")
class TestTimeCounterattack(Defense):
    """TTC: counterattack an image whose embedding barely moves under random noise (module docstring)."""

    title = "TTC, test-time counterattacks (Xing, Zhao, Sebe, CVPR 2025), as its code does it, in fp32"
    gated = True  # tau against its threshold
    uses = ("eps", "steps", "step_size", "tau_threshold", "beta", "seed")

    @staticmethod
    def tau_encoder(classifier: ZeroShotClassifier, reference: ZeroShotClassifier | None) -> ZeroShotClassifier:
        """The encoder tau is measured with: the original CLIP's when it defends a fine-tune, else its own."""
        return reference if reference is not None else classifier

    @staticmethod
    def relative_shift(encoder: ZeroShotClassifier, x: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        """tau with its gradient: how far the random start moves each image's embedding, relative to
        its length (what a gate-aware attack ascends)."""
        clean = encoder.encode(x, normalize=False).float()
        moved = encoder.encode(x_start, normalize=False).float()
        return (moved - clean).norm(dim=-1) / clean.norm(dim=-1)

    def tau(self, encoder: ZeroShotClassifier, x: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        """How far the random start moves each image's embedding, relative to its length."""
        with torch.no_grad():
            return self.relative_shift(encoder, x, x_start)

    def start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The random start: uniform in the eps-ball, clipped to the image range."""
        return (x + random_start(x, self.settings.eps, "Linf", generator)).clamp(0, 1)

    def purify(self, classifier, x, reference, generator):
        return self.purify_draws(classifier, x, reference, generator, 1)

    def purify_draws(self, classifier, x, reference, generator, draws):
        s = self.settings
        x = x.detach()
        given = x.repeat(draws, *([1] * (x.dim() - 1)))
        start = self.start(given, generator)
        if s.steps == 0 or s.eps == 0:
            return start
        with torch.no_grad():  # the given image's embeddings: one pass for every draw
            anchor = classifier.encode(x, normalize=False).float().repeat(draws, 1)
            tau = None
            if reference is not None:
                clean = reference.encode(x, normalize=False).float().repeat(draws, 1)
                tau = (reference.encode(start, normalize=False).float() - clean).norm(dim=-1) / clean.norm(dim=-1)
        # Only images under the threshold are counterattacked; the others get their random start, so
        # their counterattack is skipped once tau is known (before it, or after its first pass).
        rows = torch.arange(len(start)) if tau is None else (tau < s.tau_threshold).nonzero().squeeze(1).cpu()
        iterates, current = [start], start
        with torch.enable_grad():  # callers judge under no_grad; the counterattack needs its gradients
            for k in range(s.steps):
                if len(rows) == 0:
                    break
                moving = current[rows].detach().requires_grad_(True)
                feats = classifier.encode(moving, normalize=False).float()
                if tau is None:  # from the model's own first pass, at the random start
                    tau = (feats.detach() - anchor).norm(dim=-1) / anchor.norm(dim=-1)
                (grad,) = torch.autograd.grad((feats - anchor[rows]).pow(2).sum(), moving)
                current = current.clone()
                current[rows] = ascend(moving.detach(), given[rows], grad, s.step_size, s.eps, "Linf")
                iterates.append(current)
                rows = rows[(tau[rows] < s.tau_threshold).cpu()]
        counter = (tau < s.tau_threshold).view(-1, 1, 1, 1)
        if len(iterates) < s.steps + 1:  # nothing was counterattacked
            return start.detach()
        weights = torch.softmax(s.beta * torch.arange(s.steps + 1, dtype=torch.float32), 0).to(x)
        averaged = torch.einsum("k,kbchw->bchw", weights, torch.stack(iterates))
        return torch.where(counter, averaged, start).detach()


@register_defense("clipure")
class CLIPureCos(Defense):
    """CLIPure-Cos: the image embedding's direction climbs its cosine to a blank prompt's (module docstring)."""

    title = ("CLIPure-Cos, this project's variant (a per-sample step of latent_step_size, fp32), not the authors' "
             "settings")
    latent, randomised = True, False
    uses = ("latent_steps", "latent_step_size", "null_prompt")

    def blank_prompts(self) -> list[str]:
        """The prompts whose mean embedding is the blank prompt's (module docstring)."""
        if self.settings.null_prompt == BLANK_TEMPLATES:
            return [t.format("") for t in openai_imagenet_templates()]
        return [self.settings.null_prompt]

    def anchor(self, model: ClipModel) -> torch.Tensor:
        with torch.no_grad():
            tokens = model.tokenizer(self.blank_prompts()).to(model.device)
            return F.normalize(model.clip.encode_text(tokens).float(), dim=-1).mean(0)

    def purify_embedding(self, feats, anchor):
        check(anchor is not None, "CLIPure needs the blank prompt's text embedding; build it with "
                                  "defenses.defend(model, classifier, 'clipure').")
        s = self.settings
        feats = feats.float()
        target = F.normalize(anchor.float().to(feats.device), dim=-1)
        length = feats.norm(dim=-1, keepdim=True)
        u = feats / length
        for _ in range(s.latent_steps):
            toward = target - (u @ target).unsqueeze(-1) * u  # grad_u cos(r u, t) at a unit u
            step = toward / toward.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            u = u + s.latent_step_size * step
            u = u / u.norm(dim=-1, keepdim=True)
        return length * u


class DefendedClassifier(nn.Module):
    """A classifier behind a test-time defense: images in [0,1] -> logits, like ZeroShotClassifier.

    Each call draws the defense's random start anew from its generator (seeded by the settings);
    `reseed()` starts the stream over, so equal calls after equal reseeds give identical logits.
    """

    def __init__(self, classifier: ZeroShotClassifier, defense: Defense, reference: ZeroShotClassifier | None = None,
                 anchor: torch.Tensor | None = None):
        super().__init__()
        self.classifier, self.reference, self.defense = classifier, reference, defense
        self.anchor = anchor  # a latent defense's text target (Defense.anchor)
        self.generator = torch.Generator()
        self.reseed()

    def reseed(self, seed: int | None = None) -> None:
        self.generator.manual_seed(self.defense.settings.seed if seed is None else seed)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        if self.defense.latent:  # the images are not changed; their embeddings are (purified_features)
            return x.detach()
        return self.defense.purify(self.classifier, x, self.reference, self.generator)

    def purified_features(self, x: torch.Tensor) -> torch.Tensor:
        """The unnormalised image embeddings the classifier scores: a latent defense's purified ones."""
        feats = self.classifier.encode(self.purify(x) if not self.defense.latent else x, normalize=False)
        return self.defense.purify_embedding(feats, self.anchor) if self.defense.latent else feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.defense.latent:  # exact gradients through the purification (module docstring)
            return self.classifier.logits_from_features(self.purified_features(x))
        # BPDA (module docstring): the defended forward, the defense's change held constant backward.
        return self.classifier(x + (self.purify(x) - x).detach())

    def forward_draws(self, x: torch.Tensor, draws: int) -> torch.Tensor:
        """[draws, batch, classes]: the logits of `draws` fresh draws of the defense, in one stacked
        forward (a gradient through it is the mean of the draws' when the loss is their mean)."""
        if not self.defense.randomised:  # every draw is the same
            return self.forward(x).unsqueeze(0).expand(draws, -1, -1)
        given = x.repeat(draws, *([1] * (x.dim() - 1)))
        seen = self.defense.purify_draws(self.classifier, x, self.reference, self.generator, draws)
        return self.classifier(given + (seen - given).detach()).view(draws, x.shape[0], -1)


def original_reference(model: ClipModel, classifier: ZeroShotClassifier) -> ZeroShotClassifier | None:
    """The original CLIP's encoder, with the model's own input size and CLIP normalisation, for a
    fine-tune (whose open_clip model keeps the base encoder); None for a base model."""
    if model.visual is model.clip.visual:
        return None
    return ZeroShotClassifier(model.clip.visual, classifier.text_features, classifier.logit_scale, model.image_size,
                              model.mean, model.std)


def defend(model: ClipModel, classifier: ZeroShotClassifier, name: str = "none",
           settings: DefenseSettings | None = None) -> DefendedClassifier:
    """`classifier` of `model` behind the defense `name`, with the original CLIP as its reference (and,
    for a latent defense, its text target from `model`'s text encoder)."""
    defense = get_defense(name, settings)
    return defense.wrap(classifier, original_reference(model, classifier), defense.anchor(model))
