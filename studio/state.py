"""The app's state: the loaded models (the one global cache, shared by every session) and the jobs running.

Which models exist and how they load is pmg_core.models.zoo's; this holds them for the app, picks them by
the names people chose, adds fine-tunes that appear in the checkpoint folder (after a Train run,
or copied there), and describes them on the About tab. `public` (serving beyond this machine)
lowers the job limits and switches off reading folders from the server's disk.
"""
from __future__ import annotations

import html
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from gradio.utils import get_upload_folder

from pmg_core.leaderboard import board, findings
from pmg_core.data import inputs
from pmg_core.core import env
from pmg_core.data.datasets import list_datasets, list_groups
from pmg_core.core.errors import UserError, check
from pmg_core.evaluation.explore import StartingAttack, is_real_clip, label_presets, starting_attack
from pmg_core.models.clip import ClipModel, list_checkpoints
from pmg_core.models.zoo import finetunes_of, load_default_models, order_key, with_bases

from .assets import METHOD_IN_PLAIN_WORDS

from .disk import Quota, run_folder
from .jobs import Jobs
from .turns import Budget, Turns
from .visitors import Proxies, visitor_of

EMBEDDED_PMG_AFT = "pmg-aft-tiny"  # the shipped fine-tune the mini benchmark's findings are about
EMBEDDED_TGA_ZSR = "tga-zsr-tiny"

if TYPE_CHECKING:
    from .zoo_loader import ZooLoader


@dataclass
class Studio:
    """Loaded models by name (listed in order_key's order), the mode text, and each session's running jobs."""

    models: dict[str, ClipModel]
    mode: str
    checkpoint_dir: Path = field(default_factory=env.checkpoint_dir)
    public: bool = False  # serving beyond this machine: no server folders, shorter jobs
    out_dir: Path = field(default_factory=lambda: run_folder() / "outputs")  # removed when the server exits
    jobs: Jobs = field(default_factory=Jobs)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the model lists (rescan loads under it)
    version: int = 0  # grows whenever a model joins: sessions redraw their lists when it changed
    loader: "ZooLoader | None" = None  # published models joining in the background
    passed: dict = field(default_factory=dict)  # checkpoint files that gave no model: name -> (mtime, size)
    reserved: set = field(default_factory=set)  # checkpoint names of runs not yet saved (under `lock`)
    # Held by a Train run's thread until it has really stopped: the jobs lane frees only then.
    job_slot: threading.Lock = field(default_factory=threading.Lock)
    # On a public server: who a visitor is, their turns pass by pass and their work per minute (turns.py).
    proxies: Proxies = field(default_factory=Proxies)
    turns: Turns | None = None
    budget: Budget = field(default_factory=lambda: Budget(None))
    disk: Quota | None = None  # each visitor's files on disk (disk.py), on a public server

    def __post_init__(self) -> None:
        if self.public:
            self.jobs.cancel_wait = 0
            self.proxies = Proxies.from_env()
            on_cpu = not self.models or self.device.type == "cpu"
            # On a CPU one turn per torch thread, each on one; a GPU's kernels are parallel already. A
            # visitor behind everyone running takes the spare turn instead of waiting (turns.py).
            self.turns = Turns(torch.get_num_threads() if on_cpu else 1, threads=1 if on_cpu else None)
            self.budget = Budget(self.limits.work_per_minute)
            self.disk = Quota([self.out_dir.parent, get_upload_folder()])

    def visitor(self, request) -> str:
        return visitor_of(request, self.proxies)

    def gate(self, request):
        """What each model pass of `request`'s job waits for (AttackSettings.gate); None locally."""
        return self.turns.gate(self.visitor(request)) if self.turns is not None else None

    @classmethod
    def create(cls, models: Sequence[ClipModel] | None = None, checkpoint_dir: Path | None = None,
               extra_models: Sequence[str] = (), zoo_ids: Sequence[str] = (), **kw) -> "Studio":
        """`zoo_ids`: published models to fetch and add in the background (online only; offline nothing changes)."""
        directory = Path(checkpoint_dir or env.checkpoint_dir())
        zoo_ids = with_bases(zoo_ids) if zoo_ids and not env.is_offline() else []
        if models is None:
            # With zoo models to fetch, an uncached real CLIP downloads in the background too.
            models, mode = load_default_models(directory, extra_models, wait_for_download=not zoo_ids)
        else:
            mode = "**Custom models** given by the caller: " + ", ".join(m.name for m in models) + "."
        ordered = sorted(models, key=order_key)
        studio = cls({m.name: m for m in ordered}, mode, directory, **kw)
        if zoo_ids:
            from .zoo_loader import ZooLoader

            studio.mode += ("\n\nPublished robust models join as they are fetched and checked: "
                            + ", ".join(zoo_ids) + " (progress on the About tab).")
            studio.loader = ZooLoader(studio, zoo_ids).start()
        return studio

    @property
    def device(self):
        return next(iter(self.models.values())).device

    def model_with_spec(self, spec: str) -> ClipModel | None:
        """The loaded model that `spec` loads (a base the zoo's fine-tunes share), if any."""
        return next((m for m in list(self.models.values()) if m.spec == spec), None)

    def add(self, model: ClipModel) -> None:
        """A model joins the lists (from the zoo's background loader), in order_key's order."""
        with self.lock:
            self.models[model.name] = model
            self.models = {m.name: m for m in sorted(self.models.values(), key=order_key)}
            self.version += 1

    @property
    def names(self) -> list[str]:
        return list(self.models)

    @property
    def allow_folders(self) -> bool:
        """ImageFolder paths on the server's disk: only for the machine's owner, never in public."""
        return not self.public

    @property
    def limits(self) -> inputs.Limits:
        return inputs.PUBLIC if self.public else inputs.LOCAL

    def pick(self, names) -> list[ClipModel]:
        # A name ticked twice is one model, run once.
        names = [names] if isinstance(names, str) else list(names or [])
        check(all(isinstance(n, str) for n in names), "Give the models as a list of their names, e.g. [\"clip-tiny\"].")
        names = list(dict.fromkeys(names))
        if not names:
            raise UserError("Choose at least one model.")
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise UserError(f"The model '{unknown[0]}' is not loaded; press 'Refresh model lists'.")
        return [self.models[n] for n in names]

    def reserve_checkpoint(self, name) -> Path:
        """The file for a new checkpoint, taken atomically: no other run may take the name until `release`."""
        with self.lock:
            out = inputs.new_checkpoint_path(name, self.checkpoint_dir)
            check(out.stem not in self.reserved and out.stem not in self.models,
                  f"A checkpoint named '{out.stem}' is being trained or loaded already; choose another name.")
            self.reserved.add(out.stem)
        return out

    def release_checkpoint(self, out: Path) -> None:
        with self.lock:
            self.reserved.discard(out.stem)

    def forget(self, names: Sequence[str]) -> None:
        """Models whose files were deleted (expired visitor checkpoints) leave the lists."""
        with self.lock:
            gone = [n for n in names if self.models.pop(n, None) is not None]
            self.version += len(gone)

    def rescan(self) -> list[str]:
        """Load fine-tunes that appeared in the checkpoint folder since start; returns the new names."""
        added = []
        with self.lock:
            # A file that gave no model stays skipped until it changes: a broken 90 MB header is not
            # read again on every page load.
            unchanged = [p.stem for p in list_checkpoints(self.checkpoint_dir) if self.passed.get(p.stem) == _signature(p)]
            skip = [*self.names, *self.reserved, *unchanged]
            for base in [m for m in self.models.values() if m.spec == m.base]:
                for m in finetunes_of(base, self.checkpoint_dir, skip=skip):
                    self.models[m.name] = m
                    added.append(m.name)
            self.models = {m.name: m for m in sorted(self.models.values(), key=order_key)}
            self.version += len(added)
            self.passed = {p.stem: _signature(p) for p in list_checkpoints(self.checkpoint_dir)
                           if p.stem not in self.models and p.stem not in self.reserved}
        return added

    @property
    def real_clip(self) -> bool:
        """A real-size CLIP is loaded or on its way (published models are loading)."""
        return self.loader is not None or is_real_clip(list(self.models.values()))

    def presets(self) -> dict[str, list[str]]:
        """Label presets: the embedded world's tasks, plus CIFAR-10 and ImageNet with a real CLIP."""
        return label_presets(real_clip=self.real_clip)

    def starting_attack(self) -> StartingAttack:
        """The threat model every tab starts from (explore.starting_attack)."""
        return starting_attack(self.real_clip)

    def dataset_choices(self) -> list[str]:
        return list(list_groups()) + [d.name for d in list_datasets()]

    def about(self) -> str:
        """The About tab: the mode, the device, every loaded model with its metadata, the method in plain words."""
        rows = ["| model | kind | base | method | eps (/255) | steps | data | file |", "|---|---|---|---|---|---|---|---|"]
        for m in self.models.values():
            meta = m.metadata or {}
            kind = meta.get("kind", "base" if m.spec == m.base else "finetune")
            rows.append("| " + " | ".join(html.escape(str(v)) for v in (
                m.name, kind, m.base, meta.get("method", "-"), meta.get("eps_255", "-"), meta.get("steps", "-"),
                _short(meta.get("data", "-")), Path(m.spec).name if m.spec.endswith(".safetensors") else m.spec)) + " |")
        details = "\n".join(f"<details><summary>{html.escape(m.name)} metadata</summary>\n\n```json\n"
                            f"{json.dumps(m.metadata, indent=2, default=str)}\n```\n</details>"
                            for m in self.models.values() if m.metadata)
        downloads = f"### Published models\n{self.loader.markdown()}\n\n" if self.loader else ""
        notes = self.model_notes()
        found = f"\n\n### What the mini benchmark found\n\n{notes}" if notes else ""
        return (f"### Mode\n{self.mode}\n\nDevice: `{self.device}`.\n\n{downloads}"
                f"### Loaded models\n" + "\n".join(rows) + "\n\n" + _cards(self.models.values())
                + robustness_cards(self.models) + details
                + "\n\n### What this is\n\n" + METHOD_IN_PLAIN_WORDS + found)

    def model_notes(self) -> str:
        """What the committed mini benchmark says about the embedded fine-tunes, when they are loaded."""
        if EMBEDDED_PMG_AFT not in self.models:
            return ""
        found = [findings.pmg_aft_vs_tecoa(), findings.pmg_aft_vs_tecoa_cards(), findings.ttc_verdict(),
                 findings.clipure_verdict()]
        if EMBEDDED_TGA_ZSR in self.models:
            found.insert(1, findings.tga_zsr_vs_tecoa())
        return "\n\n".join(text for text in found if text)


def _signature(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime, st.st_size


def _cards(models) -> str:
    """Who made each published model, from which paper and source, under which licence (the zoo's card)."""
    lines = []
    for m in models:
        meta = m.metadata or {}
        if not meta.get("trainer"):
            continue
        paper = f"[{meta['paper']}]({meta['paper_url']})" if meta.get("paper_url") else meta.get("paper", "")
        lines.append(f"- **{html.escape(m.name)}**: {html.escape(meta.get('title', ''))}. Trained by "
                     f"{html.escape(meta['trainer'])}; paper: {paper}; source: {meta.get('source_page', '-')}; "
                     f"licence: {html.escape(meta.get('licence', '-'))}; judged with the `{meta.get('preset', 'paper')}` "
                     "preset.")
    return ("### Model cards\n" + "\n".join(lines) + "\n\n") if lines else ""


def robustness_cards(names) -> str:
    """The committed robustness cards of the loaded models (and of them behind a defense), for About."""
    found = [card for cards in board.committed().values() for card in cards
             if card["model"].split("+")[0] in names]
    if not found:
        return ""
    return ("### Robustness cards\nFrom the committed cards (the Leaderboard tab puts them side by side).\n\n"
            + "\n".join(f"<details><summary>{html.escape(card['model'])}: {card['protocol']['name']} "
                        f"v{card['protocol']['version']} card</summary>\n\n{board.card_html(card)}\n</details>"
                        for card in found) + "\n\n")


def _short(text, limit: int = 48) -> str:
    """A table cell that does not squeeze the others (the full text is in the metadata below)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def pick_default(choices: list[str], preferred: str) -> str | None:
    """A dropdown's first value: `preferred` when it is offered, else the first choice."""
    return preferred if preferred in choices else (choices[0] if choices else None)
