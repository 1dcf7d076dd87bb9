"""The one place that knows which models exist: published robust checkpoints, and model discovery.

The registry (``ZOO``) is data, like open_clip's pretrained table: each ``Entry`` says what a
published checkpoint is (base ``ARCH:TAG``, where its file lives and in which format), who
trained it and how (paper, data, eps, method), which numerics judge it (``preset``), its licence,
the numbers its authors published and the recipe behind them (pmg_core.leaderboard.reported arranges them for
the Leaderboard), the optional packages it needs (``needs``), and a pinned sha256 where one is
known. None is pinned in the registry: nobody here could reach the sources, so ``fetch`` prints
each file's hash, and ``cached_pins`` (``zoo pin``) writes what a cache holds into a lock file.

Integrity with no hash pinned: every torch zip archive passes the CRC-32 check of all its members
before it is unpickled (pmg_core.models.integrity). With a lock file in force (``fetch(lock=...)``, or
``$PMG_ZOO_LOCK`` for the app and every command), hash-checking is all or nothing, as pip's: an
entry without a line is refused; a download, a hub weights file or a mirrored checkpoint whose
sha256 differs is refused; a cached checkpoint must record the pinned source sha256.

``fetch(id)`` turns an entry into something ``load_model`` reads:
- ``open_clip`` / ``hf-hub`` entries are open_clip models whose files huggingface_hub downloads
  into its cache (resume and progress are its own); fetching downloads and checks them
  (pmg_core.models.hub_models: CRC, a hub config normalised for the installed open_clip), loading builds;
- ``pth.tar`` / ``state-dict`` entries are downloaded (pmg_core.models.downloads: progress, resume,
  bounded waits, no HTML, atomic landing), unpickled safely and converted by pmg_core.models.importers
  (every key and shape must fit the base, every value finite) into a fine-tune checkpoint in the
  cache, ``<cache>/models/<id>.safetensors``, whose metadata keeps the trainer, source address,
  licence and sha256; the downloaded file is deleted once converted;
- ``drive-folder`` entries name a shared Google Drive *folder* (its ``embeddedfolderview`` listing)
  and the file in it (``filename``; empty: the folder's only checkpoint file, searched one level of
  sub-folders deep); the file is then fetched and converted as a ``pth.tar`` one;
- ``hf-transformers`` entries are a whole CLIP saved by transformers (``model.safetensors``, read
  as data), converted by pmg_core.models.transformers_layout; ``text_tower`` entries (LEAF) replace the
  base's text encoder too, so their converted file holds both towers;
- ``unpublished`` entries are cards only (the method has no public weights): fetching one says so.
The cache is ``$PMG_CACHE_DIR`` (default: ``pmg-aft-studio`` in the user's cache folder).
``$PMG_ZOO_MIRROR`` (a base URL) fetches converted checkpoints from a mirror instead,
``<mirror>/<id>.safetensors``: what ``fetch`` leaves in the cache, uploaded as is (safetensors
only, nothing to unpickle); a mirrored file must carry its entry's id and fit the base.

Discovery, for the app and the commands:
- ``load_default_models``: what the app serves when nobody names models (real CLIP and its
  fine-tunes online, the embedded tiny world offline, random weights as the last resort), plus
  the specs a person adds; one that fails is named in the mode text and skipped.
- ``finetunes_of``: the fine-tune checkpoints of one loaded base in a folder (the app's rescan).
- ``load_models`` / ``load_sharing_bases``: load specs so that fine-tunes share a base already
  loaded (one text tower and one text-feature cache per base).
- ``parse_model_specs`` and ``order_key``: how people write lists of models, and the order they see.
"""
from __future__ import annotations

import logging
import os
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..core import env
from . import hub_models
from ..core.env import cache_dir
from .checkpoints import read_metadata
from ..core.errors import UserError, check, first_line
from .integrity import Lock, Pin, check_torch_zip, lock_in_force, sha256_file
from .clip import OPENAI_VIT_B32, ClipModel, checkpoint_path, list_checkpoints, load_checkpoint_model, load_model

log = logging.getLogger(__name__)
KNOWN_ORDER = ("clip", "tecoa", "pmg-aft", "fare")  # how checkpoints are listed: original first


# --- the registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Protocol:
    """How a set of published numbers was made: what `zoo verify` replays."""

    name: str
    datasets: tuple[str, ...]  # this project's dataset names
    attack: str  # evaluate's attack names
    steps: int
    prompts: str  # "clip" (OpenAI's names and templates, as CLIP_benchmark) | "public-code"
    samples: int | None  # per dataset; None: every test image
    note: str  # what differs from theirs, in a sentence


@dataclass(frozen=True)
class Published:
    """Average zero-shot accuracy (%) its authors report: clean, and robust at each Linf eps (/255)."""

    clean: float
    robust: dict  # eps (/255) -> robust accuracy %
    protocol: Protocol
    where: str  # the table the numbers come from


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    base: str  # what load_model takes for its base: ARCH:TAG, or the hf-hub id of a whole model
    format: str  # open_clip | hf-hub | pth.tar | state-dict | drive-folder | hf-transformers | unpublished
    urls: tuple[str, ...] = ()  # where the file lives, tried in order (empty: open_clip/hf-hub know)
    filename: str = ""
    method: str = "base"  # clean CLIP is "base"
    trainer: str = ""
    paper: str = ""
    paper_url: str = ""
    source_page: str = ""
    data: str = ""
    eps_255: float | None = None
    preset: str = "paper"
    licence: str = ""
    published: Published | None = None
    sha256: str = ""  # pinned hash of the file at `urls`; empty: not pinned yet
    size: str = ""  # download size, where known
    gpu: bool = False  # too big to be pleasant on a CPU
    note: str = ""
    text_tower: bool = False  # hf-transformers: its text encoder is fine-tuned too and replaces the base's
    needs: tuple[str, ...] = ()  # optional packages (requirements-extra.txt) it cannot load without

    @property
    def converted(self) -> bool:
        """Downloaded and converted here (a fine-tune checkpoint), not loaded by open_clip itself."""
        return self.format in CONVERTED

    def card(self) -> dict:
        """Who made it and where it is from: kept in the converted checkpoint's metadata, shown on About."""
        return {k: v for k, v in {
            "zoo_id": self.id, "title": self.title, "trainer": self.trainer, "paper": self.paper,
            "paper_url": self.paper_url, "source_page": self.source_page, "source_url": (self.urls or ("",))[0],
            "licence": self.licence, "data": self.data, "eps_255": self.eps_255, "method": self.method,
            "preset": self.preset, "text_tower": self.text_tower or None}.items() if v not in ("", None)}


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def _tuebingen(share: str, name: str) -> str:
    return f"https://nc.mlcloud.uni-tuebingen.de/index.php/s/{share}/download/{name}"


PAPER_16 = ("cifar10", "cifar100", "stl10", "sun397", "food101", "oxford-pets", "flowers102", "dtd", "eurosat",
            "fgvc-aircraft", "imagenet", "caltech101", "caltech256", "stanford-cars", "pcam")
ROBUSTVLM_ZERO_SHOT = Protocol(
    "RobustVLM zero-shot (CLIP_benchmark)",
    ("cifar10", "stl10", "cifar100", "stanford-cars", "caltech101", "oxford-pets", "flowers102", "dtd", "eurosat",
     "fgvc-aircraft", "pcam"),
    "autoattack", 100, "clip", 1000,
    "their average also spans ImageNet-R and ImageNet-Sketch, which this project has no loader for; AutoAttack "
    "is APGD-CE then APGD-T in both, but here APGD-T needs 4 classes, there 3")
TTC_PROTOCOL = Protocol(
    "test-time counterattacks repo (PMG-AFT protocol)", PAPER_16, "pgd", 10, "public-code", None,
    "no numbers of these files are registered yet; verify prints ours only")

TTC = dict(trainer="Xing, Zhao, Sebe (test-time counterattacks repo: one protocol for all three)",
           paper="Xing et al., CLIP is Strong Enough to Fight Back (CVPR 2025)",
           paper_url="https://arxiv.org/abs/2503.03613",
           source_page="https://github.com/Sxing2/CLIP-Test-time-Counterattacks (download_weights.py)",
           data="TinyImageNet (train/val split: the repo's support/tinyimagenet_refined_labels.json)",
           licence="none stated by the repository", preset="paper", format="pth.tar",
           note="a .pth.tar dict whose vision_encoder_state_dict holds the fp32 image encoder (OpenAI key "
                "names); pickled under numpy 1.26; trained with CLIP's normalisation and x100 logits")
RVLM = dict(trainer="Schlarmann, Singh, Croce, Hein (RobustVLM)",
            paper="Schlarmann et al., Robust CLIP (ICML 2024)", paper_url="https://arxiv.org/abs/2402.12336",
            source_page="https://github.com/chs20/RobustVLM (README, Additional Models)",
            data="ImageNet", licence="MIT (RobustVLM repository)", preset="paper", format="state-dict",
            note="a plain state dict of the image encoder (OpenAI key names)")
RVLM_HUB = dict(RVLM, format="hf-hub", licence="see the model's hub card", note="an open_clip model on the hub "
                "(its own config and text encoder)")


def _published(clean, r1, r2, r4, where="RobustVLM README, Additional Models (ViT-B/32)"):
    return Published(clean, {1: r1, 2: r2, 4: r4}, ROBUSTVLM_ZERO_SHOT, where)


LAION_B16 = "ViT-B-16:laion2b_s34b_b88k"
LAION_CONVNEXT = "convnext_base_w:laion2b_s13b_b82k_augreg"
# (method, id tag, title, hub name after "chs20/<method>4-", RobustVLM README's clean / eps 1 / 2 / 4 averages)
LAION_B = (("TeCoA", "b16", "ViT-B/16", "ViT-B-16-laion2B-s34B-b88K", (51.5, 45.0, 38.4, 26.4)),
           ("FARE", "b16", "ViT-B/16", "ViT-B-16-laion2B-s34B-b88K", (56.6, 47.7, 39.2, 23.5)),
           ("TeCoA", "convnext", "ConvNeXt-B", "convnext_base_w-laion2B-s13B-b82K-augreg", (56.2, 50.4, 44.1, 31.8)),
           ("FARE", "convnext", "ConvNeXt-B", "convnext_base_w-laion2B-s13B-b82K-augreg", (60.2, 52.3, 44.1, 28.4)))
# perceptual-metrics README (962995f), List of pre-trained models: the Nextcloud shares of vit-b-16-tecoa, vit-b-16-fare,
# convnext_base_w-tecoa, convnext_base_w-fare; the file names are utils_perceptual_models.py's ckptpath.
RCLIP_SHARES = ("ZBkmbMrAwgfeeSa", "fg7JHQzASiNnxCg", "zHKCC9aS7rf4qCt", "GCPXBDEE5PoCngy")
RCLIP_FILES = ("vit-b-16-tecoa-eps4.pt", "vit-b-16-fare-eps4.pt", "convnext_base_w-tecoa-eps4.pt",
               "convnext_base_w-fare-eps4.pt")
def _laion_where(title: str) -> str:
    """Where the LAION models' numbers come from: the hub models and R-CLIP's files are one set of fine-tunes."""
    return (f"RobustVLM README, Additional Models ({title} LAION 2B; the README says these models come from the "
            "perceptual-metrics project)")


RCLIP = dict(trainer="Croce, Schlarmann, Singh, Hein (perceptual-metrics repository)",
             paper="Croce, Schlarmann, Singh, Hein, Adversarially Robust CLIP Models Can Induce Better (Robust) "
                   "Perceptual Metrics (SaTML 2025): R-CLIP_F (FARE) and R-CLIP_T (TeCoA)",
             paper_url="https://arxiv.org/abs/2502.11725",
             source_page="https://github.com/fra31/perceptual-metrics (README, List of pre-trained models; "
                         "utils_perceptual_models.py)",
             data="ImageNet (adversarial fine-tuning at Linf eps 4/255, RobustVLM's training code)",
             licence="none stated by the repository", preset="paper", eps_255=4,
             note="torch.save of the open_clip image encoder's state dict (their loader calls "
                  "model.visual.load_state_dict(ckpt, strict=True)) of a LAION-2B CLIP, whose text encoder is kept; "
                  "CLIP's normalisation; the ConvNeXt-B was pretrained at 256 px (their perceptual evaluation crops "
                  "224)")


def _drive_folder(folder_id: str) -> str:
    return f"https://drive.google.com/embeddedfolderview?id={folder_id}"


def _hub_file(repo: str, name: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/main/{name}"


OPENAI_VIT_L14 = "ViT-L-14-quickgelu:openai"
TGA_PROTOCOL = Protocol(
    "TGA-ZSR repo (PMG-AFT protocol, 16 datasets)", ("tinyimagenet", *PAPER_16), "pgd", 100, "public-code", None,
    "their README's table averages 16 datasets, TinyImageNet and the 15 zero-shot sets, at eps 1/255; its PGD has "
    "the code's default 100 steps of 1/255")
# TGA-ZSR.py / Comp-TGA.py call utils.save_checkpoint once per epoch without is_best, so checkpoint.pth.tar holds the
# last epoch, the model their validate() scores; an older run's model_best.pth.tar may sit beside it in the folder.
TGA_EVALUATED = "checkpoint.pth.tar"
TGA = dict(trainer="Yu, Zhang, Xu (TGA-ZSR repository)", source_page="https://github.com/zhyblue424/TGA-ZSR (README, "
           "Checkpoints)", data="TinyImageNet", licence="none stated by the repository", preset="paper",
           format="drive-folder", eps_255=1,
           note="a shared Drive folder holding the .pth.tar the TGA-ZSR code saves: a dict whose "
                "vision_encoder_state_dict holds the ViT-B/32 image encoder (OpenAI key names); trained with CLIP's "
                "normalisation and logit scale, prompts 'This is a photo of a {}'")
LEAF = dict(trainer="Abad Rocamora, Schlarmann, Singh, Wu, Hein, Cevher (LEAF-CLIP on the Hugging Face hub)",
            paper="Abad Rocamora et al., Robustness in Both Domains: CLIP Needs a Robust Text Encoder (NeurIPS 2025)",
            data="ImageNet (image encoder, FARE), DataComp small (text encoder, LEAF)", licence="MIT (hub card)",
            preset="paper", format="hf-transformers", filename="model.safetensors", method="fare", eps_255=2,
            gpu=True, size="about 1.7 GB", base=OPENAI_VIT_L14)
DELTA = dict(trainer="Wang et al. (zw123 on the Hugging Face hub, Delta-CLIP collection)",
             paper="Wang et al., Double Visual Defense: Adversarial Pre-training and Instruction Tuning for Improving "
                   "Vision-Language Model Robustness (2025)", paper_url="https://arxiv.org/abs/2501.09446",
             data="DataComp-1B / Recap-DataComp-1B (adversarial pre-training from scratch)",
             licence="CC BY 4.0 (hub card)", preset="paper", format="hf-hub", method="delta-clip", gpu=True,
             needs=("transformers",),
             note="an open_clip model on the hub (its own config, tokenizer and text encoder; the weights are a "
                  "pickled open_clip_pytorch_model.bin of plain tensors; its tokenizer files are a Hugging Face "
                  "tokenizer's, which open_clip loads through the transformers package, the optional extra in "
                  "requirements-extra.txt; a text_cfg key open_clip 3.3 rejects, vocab_path, is dropped on loading)")


ENTRIES = (
    Entry("clip-b32", "OpenAI CLIP ViT-B/32", OPENAI_VIT_B32, "open_clip", trainer="OpenAI",
          paper="Radford et al., Learning Transferable Visual Models From Natural Language Supervision (ICML 2021)",
          paper_url="https://arxiv.org/abs/2103.00020", source_page="https://github.com/openai/CLIP",
          data="OpenAI's 400M image-text pairs", licence="MIT (openai/CLIP)", size="605 MB (open_clip's hub copy)"),
    *(Entry(f"clip-{tag}-laion", f"LAION-2B CLIP {title} (OpenCLIP)", base, "open_clip", trainer="LAION (OpenCLIP)",
            paper="Cherti et al., Reproducible Scaling Laws for Contrastive Language-Image Learning (CVPR 2023)",
            paper_url="https://arxiv.org/abs/2212.07143", source_page="https://github.com/mlfoundations/open_clip",
            data="LAION-2B", licence="MIT (open_clip)", note="the base of the R-CLIP fine-tunes")
      for tag, title, base in (("b16", "ViT-B/16", LAION_B16), ("convnext", "ConvNeXt-B (256 px)", LAION_CONVNEXT))),
    Entry("pmg-aft-b32", "PMG-AFT ViT-B/32 (test-time counterattacks repo)", OPENAI_VIT_B32,
          urls=(_drive("1JMXdMheNaYWiwqcWI0tvRrp6MBweQagn"),), filename="PMG_AFT.pth.tar", method="pmg-aft", **TTC),
    Entry("tecoa-b32", "TeCoA ViT-B/32 (test-time counterattacks repo)", OPENAI_VIT_B32,
          urls=(_drive("1m4Iw9pCjtBHj7OVqHFlRu2OkO0rd7C7j"),), filename="TeCoA.pth.tar", method="tecoa", **TTC),
    Entry("fare-b32", "FARE ViT-B/32 (test-time counterattacks repo)", OPENAI_VIT_B32,
          urls=(_drive("1IMtb5SG1ajYphR8cK-3w3Nr7zvAHa8bi"),), filename="FARE.pth.tar", method="fare", **TTC),
    Entry("tecoa1-b32-rvlm", "TeCoA eps 1 ViT-B/32 (RobustVLM)", OPENAI_VIT_B32,
          urls=(_tuebingen("LHgi84RskrtYCiX", "vitb32_tecoa_eps_1.pt"),), filename="vitb32_tecoa_eps_1.pt",
          method="tecoa", eps_255=1, published=_published(53.1, 38.8, 26.6, 9.6), **RVLM),
    Entry("fare1-b32-rvlm", "FARE eps 1 ViT-B/32 (RobustVLM)", OPENAI_VIT_B32,
          urls=(_tuebingen("cCgQAS8QW9arj9d", "vitb32_fare_eps_1.pt"),), filename="vitb32_fare_eps_1.pt",
          method="fare", eps_255=1, published=_published(60.5, 38.0, 20.1, 2.9), **RVLM),
    Entry("tecoa4-b32-rvlm", "TeCoA eps 4 ViT-B/32 (RobustVLM)", OPENAI_VIT_B32,
          urls=(_tuebingen("RiWGQzBrqYNCaDk", "vitb32_tecoa_eps_4.pt"),), filename="vitb32_tecoa_eps_4.pt",
          method="tecoa", eps_255=4, published=_published(44.0, 38.2, 33.1, 23.6), **RVLM),
    Entry("fare4-b32-rvlm", "FARE eps 4 ViT-B/32 (RobustVLM)", OPENAI_VIT_B32,
          urls=(_tuebingen("3nMxBKEwbWnDymT", "vitb32_fare_eps_4.pt"),), filename="vitb32_fare_eps_4.pt",
          method="fare", eps_255=4, published=_published(48.6, 40.6, 33.7, 21.9), **RVLM),
    Entry("tecoa4-b32-laion", "TeCoA eps 4 ViT-B/32 LAION-2B (RobustVLM follow-up)",
          "hf-hub:chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K", method="tecoa", eps_255=4,
          published=_published(46.8, 40.6, 34.5, 23.3, "RobustVLM README, Additional Models (ViT-B/32 LAION 2B)"),
          **RVLM_HUB),
    Entry("fare4-b32-laion", "FARE eps 4 ViT-B/32 LAION-2B (RobustVLM follow-up)",
          "hf-hub:chs20/FARE4-ViT-B-32-laion2B-s34B-b79K", method="fare", eps_255=4,
          published=_published(53.8, 44.4, 35.5, 21.2, "RobustVLM README, Additional Models (ViT-B/32 LAION 2B)"),
          **RVLM_HUB),
    *(Entry(f"{m}{e}-l14", f"{'TeCoA' if m == 'tecoa' else 'FARE'} eps {e} ViT-L/14 (RobustVLM)",
            f"hf-hub:chs20/{m}{e}-clip", method=m, eps_255=e, gpu=True, size="about 1.1 GB (image encoder)",
            published=Published(clean, {2: r2, 4: r4}, ROBUSTVLM_ZERO_SHOT,
                                "RobustVLM README, Summary of results (ViT-L/14, CLIP-only avg. zero-shot)"),
            **{**RVLM_HUB, "data": "ImageNet, 2 epochs"})
      for m, e, clean, r2, r4 in (("tecoa", 2, 60.0, 43.6, 27.0), ("tecoa", 4, 54.2, 42.3, 31.9),
                                  ("fare", 2, 67.0, 43.1, 20.5), ("fare", 4, 61.1, 45.9, 32.4))),
    # LAION-2B ViT-B/16 and ConvNeXt-B (RobustVLM's README: these come from the perceptual-metrics project)
    *(Entry(f"{m.lower()}4-{tag}-laion", f"{m} eps 4 {title} LAION-2B (RobustVLM follow-up)",
            f"hf-hub:chs20/{m}4-{hub}", method=m.lower(), eps_255=4,
            published=_published(*numbers, _laion_where(title)), **RVLM_HUB)
      for m, tag, title, hub, numbers in LAION_B),
    *(Entry(f"rclip-{m.lower()}4-{tag}", f"R-CLIP ({m} eps 4) {title} LAION-2B (perceptual-metrics)",
            base, "state-dict", urls=(_tuebingen(share, name),), filename=name, method=m.lower(),
            published=_published(*numbers, _laion_where(title)), **RCLIP)
      for (m, tag, title, hub, numbers), base, share, name in zip(LAION_B, (LAION_B16, LAION_B16, LAION_CONVNEXT,
                                                                              LAION_CONVNEXT), RCLIP_SHARES,
                                                                    RCLIP_FILES)),
    # --- after PMG-AFT (2024-2026) ---
    *(Entry(f"advflyp{tag}-b32", f"AdvFLYP{title} ViT-B/32", OPENAI_VIT_B32, "pth.tar", urls=(_drive(fid),),
            filename=f"AdvFLYP_{name}_checkpoint.pth.tar", method="advflyp", eps_255=1,
            trainer="Xing, Wang, Zhao, Gu, Torr, Sebe (AdvFLYP repository)",
            paper="Xing et al., Finetune Like You Pretrain: Boosting Zero-shot Adversarial Robustness in "
                  "Vision-language Models (CVPR Findings 2026)", paper_url="https://arxiv.org/abs/2604.11576",
            source_page="https://github.com/Sxing2/AdvFLYP (README, Evaluation)",
            data="1M LAION-400M image-text pairs (contrastive adversarial fine-tuning)",
            licence="none stated by the repository", preset="paper",
            note="a .pth.tar dict whose partial_state_dict holds the trained parameters under whole-CLIP key names "
                 "(visual.*: the image encoder, the only module it tunes by default); trained with CLIP's "
                 "normalisation and logit scale, prompts 'This is a photo of a {}.'")
      for tag, title, name, fid in (("", " (with regularisation)", "full", "111dTcolTdPB93Gg8Fwj_MmNuC77zHQmm"),
                                    ("-noreg", " without regularisation", "NonReg",
                                     "1DQ509vJpwjwlxLKrGVgvwum8-vW1zy0K"))),
    Entry("tga-zsr-b32", "TGA-ZSR ViT-B/32 (its authors' weights)", OPENAI_VIT_B32,
          urls=(_drive_folder("1T7APhNq3tRW81vC1Lx8JSbHxWuP7euSx"),), filename=TGA_EVALUATED, method="tga-zsr",
          paper="Yu, Zhang, Xu, Text-Guided Attention is All You Need for Zero-Shot Robustness in Vision-Language "
                "Models (NeurIPS 2024)", paper_url="https://arxiv.org/abs/2410.21802",
          published=Published(56.44, {1: 42.09}, TGA_PROTOCOL, "TGA-ZSR README, benchmark table"), **TGA),
    Entry("comp-tga-b32", "Comp-TGA ViT-B/32 (its authors' weights)", OPENAI_VIT_B32,
          urls=(_drive_folder("1cvqDha1useGdCgTjGatZMuBj1W71nMyk"),), filename=TGA_EVALUATED, method="comp-tga",
          paper="Yu, Zhang, Xu, Complementary Text-Guided Attention for Zero-Shot Adversarial Robustness (TPAMI 2026)",
          published=Published(55.44, {1: 44.46}, TGA_PROTOCOL, "TGA-ZSR README, benchmark table"), **TGA),
    Entry("saft-b32", "SAFT-L ViT-B/32 (its authors' weights)", OPENAI_VIT_B32, "drive-folder",
          urls=(_drive_folder("14_CwrrAe1_otRRysMf8bmXruBl-6gxpD"),), filename="model_final_seed3.pth.tar",
          method="saft", eps_255=1, trainer="Zhang, Li, Huang, Erfani, Rubinstein, Liu (SAFT repository)",
          paper="Zhang et al., Semantic-aware Adversarial Fine-tuning for CLIP (2026)",
          paper_url="https://arxiv.org/abs/2602.12461",
          source_page="https://github.com/tmlr-group/SAFT (README, Evaluation: the SAFT-L checkpoint)",
          data="TinyImageNet, with LLM-written class descriptions", licence="MIT (SAFT repository)", preset="paper",
          note="a shared Drive folder (a checkpoint directory) holding model_final_seed3.pth.tar, a dict whose "
               "vision_encoder_state_dict holds the image encoder (OpenAI key names); CLIP's normalisation, prompts "
               "'This is a photo of a {}'"),
    *(Entry(f"simclip{e}-l14", f"Sim-CLIP eps {e} ViT-L/14", OPENAI_VIT_L14, "state-dict",
            urls=(_hub_file("hossainzarif19/SimCLIP", f"simclip{e}.pt"),), filename=f"simclip{e}.pt", method="simclip",
            eps_255=e, trainer="Hossain, Imteaj (Sim-CLIP repository)",
            paper="Hossain, Imteaj, Sim-CLIP: Unsupervised Siamese Adversarial Fine-Tuning for Robust and "
                  "Semantically-Rich Vision-Language Models (2024)", paper_url="https://arxiv.org/abs/2407.14971",
            source_page="https://github.com/speedlab-git/SimCLIP (README, Models)", data="ImageNet",
            licence="MIT (SimCLIP repository)", preset="paper", gpu=True, size="about 1.2 GB",
            note="torch.save of the open_clip image encoder's state dict (RobustVLM's training code); CLIP's "
                 "normalisation")
      for e in (2, 4)),
    Entry("leaf-fare2-l14", "FARE eps 2 ViT-L/14 (LEAF-CLIP, image tower only)", OPENAI_VIT_L14,
          urls=(_hub_file("LEAF-CLIP/CLIP-ViT-L-FARE2", "model.safetensors"),),
          source_page="https://huggingface.co/LEAF-CLIP/CLIP-ViT-L-FARE2",
          note="a transformers CLIPModel (safetensors) whose image encoder is FARE-trained at eps 2/255; its text "
               "encoder is OpenAI's, so only the image tower is taken",
          **{k: v for k, v in LEAF.items() if k != "base"}),
    Entry("leaf-rho50-fare2-l14", "LEAF rho 50 text + FARE eps 2 image, ViT-L/14 (LEAF-CLIP)", OPENAI_VIT_L14,
          urls=(_hub_file("LEAF-CLIP/CLIP-ViT-L-rho50-k1-constrained-FARE2", "model.safetensors"),), text_tower=True,
          source_page="https://huggingface.co/LEAF-CLIP/CLIP-ViT-L-rho50-k1-constrained-FARE2",
          note="a transformers CLIPModel (safetensors): image encoder FARE at eps 2/255, text encoder LEAF-trained "
               "(k 1, rho 50, semantic constraints); both towers replace OpenAI's",
          **{k: v for k, v in LEAF.items() if k != "base"}),
    *(Entry(f"delta-clip-{tag}", f"Delta-CLIP {title}", f"hf-hub:zw123/delta_clip_{tag.replace('-', '_')}",
            source_page=f"https://huggingface.co/zw123/delta_clip_{tag.replace('-', '_')}", size=size, **DELTA)
      for tag, title, size in (("l14-224", "ViT-L/14 224 px", "1.66 GB"), ("l14-336", "ViT-L/14 336 px", ""),
                               ("h14-336", "ViT-H/14 336 px", "3.88 GB"))),
    Entry("agft-b32", "AGFT ViT-B/32 (no published weights)", OPENAI_VIT_B32, "unpublished", method="agft",
          trainer="Cui, Guan, Xiong, Zhang (AGFT repository)",
          paper="Cui et al., AGFT: Alignment-Guided Fine-Tuning for Zero-Shot Adversarial Robustness of "
                "Vision-Language Models (CVPR 2026)", paper_url="https://arxiv.org/abs/2603.29410",
          source_page="https://github.com/YuboCui/AGFT (README)", data="ImageNet",
          licence="none stated by the repository",
          note="the repository publishes training and evaluation code only: its README's commands name a local "
               "weight file and link none"),
)
ZOO: dict[str, Entry] = {e.id: e for e in ENTRIES}
REAL_CLIP = "clip-b32"  # the base the app serves online
DEFAULT_ZOO = (REAL_CLIP, "pmg-aft-b32", "tecoa-b32", "fare-b32")  # one base, one protocol, three methods


def register(entry: Entry) -> Entry:
    """Add an entry (tests register ones whose base is a tiny model); an id is registered once."""
    check(entry.id not in ZOO or ZOO[entry.id] == entry, f"The zoo already has an entry '{entry.id}'.")
    check(entry.format in FORMATS, f"Unknown zoo format '{entry.format}': use one of {', '.join(FORMATS)}.")
    ZOO[entry.id] = entry
    return entry


CONVERTED = ("pth.tar", "state-dict", "drive-folder", "hf-transformers")
FORMATS = ("open_clip", "hf-hub", *CONVERTED, "unpublished")


def get(entry_id: str) -> Entry:
    check(entry_id in ZOO, f"The zoo has no model '{entry_id}'; `python -m pmg_core zoo list` shows them.")
    return ZOO[entry_id]


def with_bases(ids: Sequence[str]) -> list[str]:
    """`ids` with, before each converted entry, the registry entry of its base (fetched first, then shared)."""
    out: list[str] = []
    for entry_id in ids:
        entry = get(entry_id)
        base = next((e.id for e in ZOO.values() if e.format == "open_clip" and e.base == entry.base), None)
        for i in ([base] if entry.converted and base else []) + [entry_id]:
            if i not in out:
                out.append(i)
    return out


def parse_zoo_ids(text: str | None) -> list[str]:
    """'a,b' -> ['a', 'b'] (--zoo / PMG_ZOO); empty -> the default set; 'none' -> CLIP alone (no published
    fine-tunes). Unknown ids are refused."""
    text = (text or "").strip()
    if not text:
        return list(DEFAULT_ZOO)
    if text.lower() == "none":
        return [DEFAULT_ZOO[0]]
    ids = [s.strip() for s in text.split(",") if s.strip()]
    for i in ids:
        get(i)
    return ids


# --- the cache and fetching -----------------------------------------------------------------------

def converted_path(entry: Entry) -> Path:
    return cache_dir() / "models" / f"{entry.id}.safetensors"


def mirror() -> str:
    """$PMG_ZOO_MIRROR: a base URL holding converted checkpoints as <id>.safetensors ('' for none)."""
    return os.environ.get("PMG_ZOO_MIRROR", "").strip().rstrip("/")


def mirror_url(entry: Entry) -> str | None:
    return f"{mirror()}/{entry.id}.safetensors" if mirror() else None


def is_cached(entry: Entry) -> bool:
    """Usable without network: converted in the cache, or (open_clip / hub models) in the hub cache."""
    if entry.format == "unpublished":
        return False
    if entry.converted:
        return converted_path(entry).is_file()
    from .clip import _cached_hub_file, _open_clip

    if entry.format == "hf-hub":
        return _cached_hub_file(entry.base[len("hf-hub:"):] + "/open_clip_config.json") is not None
    arch, tag = entry.base.split(":", 1)
    cfg = _open_clip().get_pretrained_cfg(arch, tag) or {}
    return _cached_hub_file(cfg.get("hf_hub", "")) is not None


def spec(entry: Entry) -> str:
    """What load_model takes once the entry is fetched."""
    return str(converted_path(entry)) if entry.converted else entry.base


Report = Callable[[str], None]


def fetch(entry_id: str, progress=None, base_model: ClipModel | None = None, say: Report = log.info,
          lock: Lock | None = None) -> str:
    """Make `entry_id` loadable here (download, check, convert); returns its spec for load_model.

    `progress(done_bytes, total_bytes_or_None)` sees the download; `say` gets one line per stage
    (the file's sha256 among them); `base_model`: the loaded base, shared by the conversion; `lock`:
    hash-checking mode (default: the lock file $PMG_ZOO_LOCK names, if any; pmg_core.models.integrity).
    """
    entry = get(entry_id)
    check(entry.format != "unpublished", f"Nothing to fetch: the zoo's card '{entry.id}' stands for a method without "
                                         f"published weights ({entry.note or 'see its card'}).")
    missing = hub_models.missing_packages(entry.needs)
    if missing:
        raise UserError(hub_models.extra_refusal(f"'{entry.id}'", missing))
    lock = lock if lock is not None else lock_in_force()
    pin = lock.pin(entry.id) if lock is not None else None
    source_hash = _source_hash(entry, pin)
    if not entry.converted:
        weights = publisher_weights(entry)  # downloaded into the hub cache; a torch zip's CRC checked
        if source_hash:
            _check_hash(entry, weights, source_hash, "its weights file")
        return entry.base
    out = converted_path(entry)
    if out.is_file():
        if pin is not None:
            _check_cached(entry, out, pin)
        return str(out)
    from .downloads import download

    folder = cache_dir() / "downloads" / entry.id
    mirrored_at = mirror_url(entry)
    try:
        if mirrored_at:
            got = download(mirrored_at, folder / out.name, sha256=pin.converted if pin else "", progress=progress,
                           label=f"{entry.id} (mirror)")
            say(f"{entry.id}: sha256 {got.sha256} ({got.size:,} bytes, from the mirror)")
            _check_mirrored(entry, got.path, base_model, source_hash)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got.path, out)
            return str(out)
        errors = []
        for url in entry.urls:
            try:
                name = entry.filename
                if entry.format == "drive-folder":
                    url, name = _drive_folder_file(entry, url)
                got = download(url, folder / name, sha256=source_hash, progress=progress, label=entry.id)
                break
            except UserError as e:
                errors.append(e)
        else:
            raise errors[-1] if errors else UserError(f"The zoo entry '{entry.id}' names no file to download.")
        say(f"{entry.id}: sha256 {got.sha256} ({got.size:,} bytes){'' if source_hash else ' - not pinned yet'}")
        _convert(entry, got.path, got.sha256, url, base_model)
        return str(out)
    finally:
        _tidy(folder)


def _source_hash(entry: Entry, pin: Pin | None) -> str:
    """The sha256 the publisher's file must have: the lock's, the registry's, or '' (none pinned)."""
    if pin is not None and entry.sha256:
        check(pin.source == entry.sha256.lower(), f"{entry.id}: the lock file and the registry pin different sha256 "
                                                  "for its file; refused.")
    return pin.source if pin is not None else entry.sha256.lower()


def cached_pins(ids: Sequence[str] = ()) -> dict[str, Pin]:
    """The lock lines of what is in the cache (`zoo pin`): `ids`, each of which must be cached, or every
    cached entry. A converted entry pins the source sha256 its checkpoint records and the checkpoint's
    own sha256; an open_clip / hub entry pins its weights file in the hub cache."""
    entries = [get(i) for i in ids] if ids else [e for e in ZOO.values() if e.format != "unpublished"]
    pins: dict[str, Pin] = {}
    for e in entries:
        check(e.format != "unpublished", f"'{e.id}' stands for a method without published weights: nothing to pin.")
        if e.converted:
            path = converted_path(e)
            if path.is_file():
                source = read_metadata(path).get("source_sha256", "")
                check(bool(source), f"The cached checkpoint of '{e.id}' records no source sha256; fetch it again.")
                pins[e.id] = Pin(source, sha256_file(path))
        else:
            weights = publisher_weights(e, local_only=True)
            if weights is not None:
                pins[e.id] = Pin(sha256_file(weights))
        check(e.id in pins or not ids, f"'{e.id}' is not in the cache, so there is nothing to pin; "
                                       f"`python -m pmg_core zoo fetch {e.id}` first.")
    return pins


def _check_hash(entry: Entry, path: Path, expected: str, what: str) -> None:
    digest = sha256_file(path)
    check(digest == expected, f"{entry.id}: {what} ({path.name}) does not match its pinned sha256 (got "
                              f"{digest[:12]}..., expected {expected[:12]}...); refused.")


def _check_cached(entry: Entry, path: Path, pin: Pin) -> None:
    """A converted file in the cache was converted here from the pinned source (its recorded source sha256;
    read from the header, so loading stays cheap). Converted files from elsewhere come through the
    mirror, whose download is checked against the lock's --converted hash."""
    recorded = read_metadata(path).get("source_sha256", "")
    check(recorded == pin.source, f"{entry.id}: the cached checkpoint was converted from a file whose sha256 "
                                  f"({recorded[:12] or 'none recorded'}...) is not the lock file's "
                                  f"({pin.source[:12]}...); refused (delete it to fetch the pinned file).")


def publisher_weights(entry: Entry, local_only: bool = False) -> Path | None:
    """The weights file of an open_clip / hub entry in the hub cache (downloaded first unless `local_only`, or
    offline); a torch zip's CRC-32 checked. None when `local_only` and not cached."""
    if entry.format == "hf-hub":
        if local_only:
            return hub_models.weights_file(hub_models.repo_of(entry.base), local_only=True)
        return hub_models.fetch(entry.base).weights  # config normalised, weights checked
    from .clip import _open_clip

    arch, tag = entry.base.split(":", 1)
    repo = ((_open_clip().get_pretrained_cfg(arch, tag) or {}).get("hf_hub") or "").strip("/")
    check(bool(repo), f"{entry.id}: open_clip names no hub repo for {entry.base}.")
    weights = hub_models.weights_file(repo, local_only=local_only)
    check(weights is not None or local_only, f"{entry.id}: the weights of {entry.base} are not in the local cache and "
                                             "this machine is offline; connect once to download them.")
    if weights is not None and not local_only:
        check_torch_zip(weights, f"The weights of {entry.base} ({weights.name})")
    return weights


def _convert(entry: Entry, raw: Path, digest: str, url: str, base_model: ClipModel | None) -> None:
    from .importers import import_checkpoint, import_transformers_clip

    meta = {**entry.card(), "source_url": url, "source_sha256": digest, "zoo_format": entry.format}
    try:
        if entry.format == "hf-transformers":
            import_transformers_clip(raw, converted_path(entry), entry.base, text_tower=entry.text_tower,
                                     method=entry.method, preset=entry.preset, extra_metadata=meta,
                                     base_model=base_model)
        else:
            import_checkpoint(str(raw), converted_path(entry), base=entry.base, method=entry.method,
                              preset=entry.preset, extra_metadata=meta, base_model=base_model)
    except UserError as e:
        raise UserError(f"{entry.id}: {str(e).removeprefix(entry.id + ': ')}") from None


CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".bin", ".safetensors")
MAX_FOLDERS = 8  # sub-folders a folder search reads, at most (each one more listing page)


def _drive_folder_file(entry: Entry, listing_url: str) -> tuple[str, str]:
    """(download address, file name) of the entry's file in its shared Drive folder (module docstring)."""
    from .downloads import read_page, drive_folder_entries

    def listing(url: str):
        return drive_folder_entries(read_page(url, label=f"the Google Drive folder of {entry.id}"))

    def sub_listing(folder_id: str) -> str:
        parts = urllib.parse.urlsplit(listing_url)
        query = urllib.parse.urlencode({**dict(urllib.parse.parse_qsl(parts.query)), "id": folder_id})
        return urllib.parse.urlunsplit(parts._replace(query=query))

    items = listing(listing_url)
    folders = [i for i in items if i.folder][:MAX_FOLDERS]
    files = [i for i in items if not i.folder] + [f for d in folders for f in listing(sub_listing(d.id)) if not f.folder]
    if entry.filename:
        found = [f for f in files if f.name == entry.filename]
    else:
        found = [f for f in files if f.name.lower().endswith(CHECKPOINT_SUFFIXES)]
    seen = ", ".join(f.name for f in files[:8]) or "nothing"
    check(len(found) > 0, f"{entry.id}: the Google Drive folder lists no "
                          f"{repr(entry.filename) if entry.filename else 'checkpoint file'} (it lists: {seen}).")
    check(len(found) == 1, f"{entry.id}: the Google Drive folder lists several checkpoint files ({seen}); "
                           "the registry entry must name one.")
    parts = urllib.parse.urlsplit(listing_url)
    return f"{parts.scheme}://{parts.netloc}/uc?export=download&id={found[0].id}", found[0].name


def _check_mirrored(entry: Entry, path: Path, base_model: ClipModel | None, source_hash: str) -> None:
    """A mirrored file is a converted checkpoint of this very entry that fits its base (read as data)."""
    try:
        meta = read_metadata(path)
        check(meta.get("zoo_id") == entry.id and meta.get("base") == entry.base,
              f"the mirror's {path.name} is not a converted '{entry.id}' (fine-tune of {entry.base})")
        check(not source_hash or meta.get("source_sha256") == source_hash,
              f"the mirror's {path.name} was converted from a file that does not match the pinned sha256")
        model = load_checkpoint_model(path, base=base_model if base_model is not None and base_model.spec == entry.base
                                      else None)
        bad = next((k for k, v in model.visual.state_dict().items()
                    if v.is_floating_point() and not torch.isfinite(v).all()), None)
        check(bad is None, f"the mirror's {path.name} has NaN or infinite values in '{bad}'")
    except UserError as e:
        path.unlink(missing_ok=True)
        raise UserError(f"{entry.id}: {str(e).rstrip('.')}; refused.") from None


def _tidy(folder: Path) -> None:
    """Drop what a fetch left in its download folder except a partial file the server can resume."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if not p.name.endswith(".part"):
            p.unlink(missing_ok=True) if p.is_file() else shutil.rmtree(p, ignore_errors=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def load_entry(entry_id: str, device="cpu", base: ClipModel | None = None, progress=None,
               say: Report = log.info) -> ClipModel:
    """Fetch (if needed) and load a zoo model, sharing `base` when it is its base; its card joins its metadata.

    open_clip / hf-hub entries are loaded once, by open_clip (huggingface_hub downloads them); a
    hub model is named by its zoo id, the OpenAI base by its spec as everywhere else."""
    entry = get(entry_id)
    shared = base if base is not None and base.spec == entry.base else None
    if entry.converted or entry.format == "unpublished":  # fetch says why an unpublished one cannot load
        return load_model(fetch(entry_id, progress, shared, say), device=device, base=shared)
    if entry.needs or lock_in_force() is not None:  # the extras it needs, and its weights' pinned hash, checked first
        fetch(entry_id, progress, shared, say)
    if shared is not None:
        return shared
    model = load_model(entry.base, device=device)
    if entry.format == "hf-hub":
        model.name = entry.id
    model.metadata = {**(model.metadata or {}), **entry.card()}
    return model


def order_key(model: ClipModel) -> tuple:
    """Bases first, then the original CLIP, TeCoA, PMG-AFT, FARE, then the rest by name."""
    name = model.name.lower()
    rank = next((i for i, k in enumerate(KNOWN_ORDER) if name.startswith(k)), len(KNOWN_ORDER))
    return (model.spec != model.base, rank, name)


def load_sharing_bases(spec: str, device, loaded: Sequence[ClipModel]) -> ClipModel:
    """Load `spec`; a fine-tune whose base model is among `loaded` shares it instead of loading it again."""
    bases = {m.spec: m for m in loaded if m.spec == m.base}
    path = checkpoint_path(spec)
    base = bases.get(read_metadata(path).get("base")) if path is not None else None
    return load_model(spec, device=device, base=base)


def load_models(specs: Sequence[str], device) -> list[ClipModel]:
    """Load models, letting fine-tunes of an already loaded base share its text side."""
    out: list[ClipModel] = []
    for spec in specs:
        out.append(load_sharing_bases(spec, device, out))
    return out


def finetunes_of(base: ClipModel, directory: Path, skip: Sequence[str] = (), device=None) -> list[ClipModel]:
    """Every fine-tune checkpoint in `directory` whose base is `base` (unreadable files are skipped and logged)."""
    out = []
    for path in list_checkpoints(directory):
        if path.stem in skip:
            continue
        try:
            meta = read_metadata(path)
            if meta["kind"] == "finetune" and meta.get("base") in (base.spec, base.name):
                out.append(load_checkpoint_model(path, device=device or base.device, base=base))
        except Exception as e:  # noqa: BLE001 - one bad file in the folder must not stop the app
            log.warning("skipping checkpoint %s: %s", path.name, first_line(e))
    return out


def _default_models(directory: Path, wait_for_download: bool = True) -> tuple[list[ClipModel], str]:
    """Real CLIP and its robust fine-tunes online; the embedded tiny world offline; random weights as last resort.
    Online, without `wait_for_download`, a real CLIP not yet in the cache is left to a background
    fetch and the embedded world serves meanwhile."""
    device = env.default_device()
    online = not env.is_offline()
    if online and not wait_for_download and not is_cached(ZOO[REAL_CLIP]):
        models, mode = _embedded_models(directory, device, REAL_CLIP_PENDING[1])
        return models, REAL_CLIP_PENDING[0] + mode
    if online:
        try:
            base = load_entry(REAL_CLIP, device=device)  # its card joins its metadata; a lock in force is checked
            return [base] + finetunes_of(base, directory), (
                "**Real CLIP**: OpenAI CLIP ViT-B/32 and the robust checkpoints for it found in checkpoints/.")
        except Exception as e:  # noqa: BLE001 - downloads fail in many ways; the embedded default always works
            log.warning("Real CLIP could not be loaded (%s); serving the embedded default instead.", first_line(e))
    return _embedded_models(directory, device)


# The mode text while real CLIP downloads in the background, and once that download failed or ended:
# (the sentence before the embedded world's, why the embedded world serves).
REAL_CLIP_PENDING = ("**Real CLIP is downloading** in the background (progress on the About tab). ",
                     "until real CLIP joins")
REAL_CLIP_FAILED = ("**Real CLIP could not be downloaded** (why: Published models, on the About tab). ",
                    "real CLIP's download failed")
REAL_CLIP_JOINED = ("**Real CLIP has joined**: OpenAI CLIP ViT-B/32 finished downloading in the background. ",
                    "served beside it")


def mode_after_download(mode: str, entry_id: str, failed: bool) -> str:
    """The mode text once `entry_id` finished its background download: real CLIP is no longer 'downloading'."""
    if entry_id != REAL_CLIP:
        return mode
    for pending, now in zip(REAL_CLIP_PENDING, REAL_CLIP_FAILED if failed else REAL_CLIP_JOINED):
        mode = mode.replace(pending, now)
    return mode


def _embedded_models(directory: Path, device, why: str = "offline") -> tuple[list[ClipModel], str]:
    if (directory / "clip-tiny.safetensors").is_file():
        base = load_model(str(directory / "clip-tiny.safetensors"), device=device)
        base.name = "clip-tiny"
        return [base] + finetunes_of(base, directory, skip=("clip-tiny",)), (
            f"**Embedded tiny world** ({why}): a tiny CLIP pretrained by this project on procedurally drawn "
            "32x32 scenes, with its fine-tunes from checkpoints/. Labels outside that world mean little to it.")
    torch.manual_seed(0)
    base = load_model("pmg-tiny", device=device)
    base.name = "pmg-tiny (random weights)"
    return [base] + finetunes_of(base, directory), (
        "**Fallback: random weights.** Neither real CLIP nor the embedded checkpoint clip-tiny was found, so "
        "this is an untrained pmg-tiny model: predictions are meaningless, but every tab works.")


def load_default_models(directory: Path | None = None, extra: Sequence[str] = (),
                        wait_for_download: bool = True) -> tuple[list[ClipModel], str]:
    """The default models plus `extra` specs (checkpoint files, hub ids...); a spec that fails is logged and skipped.
    `wait_for_download` False: an uncached real CLIP is not downloaded here (see _default_models)."""
    models, mode = _default_models(Path(directory or env.checkpoint_dir()), wait_for_download)
    for spec in extra:
        try:
            model = load_sharing_bases(spec, models[0].device, models)
        except Exception as e:  # noqa: BLE001 - the app serves without it and says why
            log.warning("Skipping the model '%s': %s", spec, first_line(e))
            mode += f"\n\nNot loaded: `{spec}` ({first_line(e)})."
            continue
        if model.name not in {m.name for m in models}:
            models.append(model)
    return models, mode


def parse_model_specs(text: str | None) -> list[str]:
    """'a.safetensors, hf-hub:org/repo' -> ['a.safetensors', 'hf-hub:org/repo'] (--models / PMG_MODELS)."""
    return [s.strip() for s in (text or "").split(",") if s.strip()]
