"""Are these the bytes that were published? Checks that need no pinned hash, and lock files that pin them.

- ``check_torch_zip(path)``: torch.save writes a zip archive whose every member carries a CRC-32,
  but torch.load never checks them, so a flipped byte in tensor data loads as a silently wrong
  weight. Every member is read once, in bounded chunks (zipfile's own ``testzip``), before anything
  is unpickled; a damaged or cut archive is refused in one sentence. A legacy (pre-1.6, non-zip)
  torch file has no checksum to check and passes through.
- ``Lock``: a lock file in the spirit of pip's hash-checking mode. One line per zoo entry,
  ``ID --hash=sha256:HEX [--converted=sha256:HEX]``: the sha256 of the file its publisher serves
  (for a hub model, of its weights file) and, for a converted entry, of the checkpoint the zoo
  made from it. ``python -m pmg_core zoo pin`` writes it from the cache; ``zoo fetch
  --require-hashes`` and ``$PMG_ZOO_LOCK`` (the app) enforce it, all or nothing: under a lock, an
  entry without a line is refused, as pip refuses a requirement without a hash.
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError, check

ZIP_MAGIC = b"PK\x03\x04"
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    # Chunked: hashlib.file_digest needs Python 3.11 and the project supports 3.10.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC


def is_cut_zip(path: Path) -> bool:
    """A file that starts as a zip archive (torch.save's format) but lacks the record every zip ends with."""
    end_record, longest_comment = b"PK\x05\x06", 65_535 + 22
    with open(path, "rb") as f:
        if f.read(4) != ZIP_MAGIC:
            return False
        size = f.seek(0, 2)
        f.seek(max(0, size - longest_comment))
        return end_record not in f.read()


def check_torch_zip(path: Path, label: str | None = None) -> None:
    """Refuse a torch zip archive with a member whose bytes do not match its CRC-32 (module docstring).
    Files that are not zip archives are left to their reader."""
    path = Path(path)
    label = label or f"'{path.name}'"
    if not is_zip(path):
        return
    if is_cut_zip(path):
        raise UserError(f"{label} is incomplete: the file ends before the end of its zip archive (cut short while "
                        "downloading or copying?); fetch it again.")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member in chunks and compares its CRC-32
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise UserError(f"{label} is a damaged zip archive ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        "refused before reading any weights.") from None
    if bad is not None:
        raise UserError(f"{label} is damaged: its member '{bad}' does not match the CRC-32 the archive records for it "
                        "(bytes changed after it was saved); refused before reading any weights.")


# --- lock files -------------------------------------------------------------------------------------------

LOCK_ENV = "PMG_ZOO_LOCK"
_LINE = re.compile(r"^(?P<id>[A-Za-z0-9][\w.+-]*)\s+--hash=sha256:(?P<hash>[0-9a-fA-F]{64})"
                   r"(?:\s+--converted=sha256:(?P<converted>[0-9a-fA-F]{64}))?\s*$")


@dataclass(frozen=True)
class Pin:
    source: str  # sha256 of the publisher's file (a hub model's weights file)
    converted: str = ""  # sha256 of the checkpoint the zoo converted it into ('' for hub models)


@dataclass
class Lock:
    path: Path
    pins: dict[str, Pin] = field(default_factory=dict)

    def pin(self, entry_id: str) -> Pin:
        """The entry's pin; in hash-checking mode an entry without one is refused."""
        check(entry_id in self.pins, f"'{entry_id}' has no hash in the lock file {self.path} (hash-checking mode: every "
                                     "fetched entry needs one; `python -m pmg_core zoo pin` writes them from the cache).")
        return self.pins[entry_id]


def read_lock(path: str | Path) -> Lock:
    """A lock file (module docstring); a line it cannot read is refused in one sentence naming it."""
    path = Path(path)
    check(path.is_file(), f"The lock file {path} does not exist (`python -m pmg_core zoo pin --out {path}` writes one).")
    pins: dict[str, Pin] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        m = _LINE.match(text)
        check(m is not None, f"Line {number} of the lock file {path} is not 'ID --hash=sha256:HEX "
                             "[--converted=sha256:HEX]'.")
        check(m["id"] not in pins, f"The lock file {path} pins '{m['id']}' twice (line {number}).")
        pins[m["id"]] = Pin(m["hash"].lower(), (m["converted"] or "").lower())
    return Lock(path, pins)


def lock_in_force(path: str | Path | None = None) -> Lock | None:
    """The lock named by `path`, else by $PMG_ZOO_LOCK, else None (no hash-checking mode)."""
    chosen = path or os.environ.get(LOCK_ENV, "").strip()
    return read_lock(chosen) if chosen else None


def write_lock(path: str | Path, pins: dict[str, Pin], header: str) -> Path:
    """Write pins as a lock file, atomically (a reader never sees half of it)."""
    path = Path(path)
    lines = [f"# {header}"] + [f"{i} --hash=sha256:{p.source}" + (f" --converted=sha256:{p.converted}" if p.converted
                                                                   else "") for i, p in sorted(pins.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
