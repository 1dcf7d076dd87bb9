"""What the app keeps on disk for its visitors: one folder per run of the server, a quota per visitor,
nothing left behind when it stops.

- **One folder per run**, `<tmp>/pmg_studio_<pid>_<random>/` (`run_folder`): the app's output folders
  and, when `python app.py` starts it, Gradio's uploads and its cache of what handlers return
  (GRADIO_TEMP_DIR, unless the operator set it), so that files returned from the output folders are
  served where they are instead of copied. It goes when the process exits, by a normal exit or by
  SIGTERM, SIGINT or SIGHUP (`stop_on_signals`); a later start removes the folders of runs whose
  process is gone (a SIGKILL, a crash: `remove_leftovers`).
- **A quota per visitor.** `Quota.keep(visitor, *paths)` is the one call any code that writes a file
  for a visitor makes once it is written: Gradio's uploads (safety.BodyLimit), every file a handler
  returns (`watch_outputs`; a file in an output folder stands for its whole request folder, which
  also holds what was not returned), a file kept for a link. A visitor's files and folders are
  counted together, re-measured at each call (a folder grows, Gradio's hourly sweep deletes), and the
  oldest deleted until they fit PER_VISITOR_BYTES: what a visitor holds on disk is at most that plus
  one request's files. A file two visitors keep goes when neither keeps it. Only files under the
  quota's roots are ever counted or deleted.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

log = logging.getLogger("pmg_studio")
PREFIX = "pmg_studio_"
PER_VISITOR_BYTES = 200 * 2**20  # uploads and outputs of one visitor together
PER_VISITOR_FILES = 2000  # entries one visitor may keep (each costs the ledger a line and a stat per call)


def run_folder(root: str | Path | None = None) -> Path:
    """A fresh folder for this run of the server, named after this process, removed when it exits."""
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}_", dir=root))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def remove_leftovers(root: str | Path | None = None) -> list[Path]:
    """Remove the run folders under `root` (the system's temporary folder) whose process is gone."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = path.name[len(PREFIX):].split("_", 1)[0]
        if path.is_dir() and not path.is_symlink() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d folder(s) left by earlier runs", len(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stop_on_signals(signals: Iterable[int] = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)) -> None:
    """A signal that would end the process unseen runs the exit handlers first (the run folders go), then
    ends it with the shell's status for that signal (128 + its number). Not through the interpreter's
    own shutdown: a training run's torch threads would abort it there. Call from the main thread."""
    def stop(signum, frame):
        atexit._run_exitfuncs()
        os._exit(128 + signum)

    for number in signals:
        signal.signal(number, stop)


class Quota:
    """Each visitor's files on disk, oldest first, within `per_visitor` bytes (module docstring)."""

    def __init__(self, roots: Iterable[str | Path], per_visitor: int = PER_VISITOR_BYTES,
                 max_files: int = PER_VISITOR_FILES):
        self.roots = [os.path.realpath(r) for r in roots]
        self.per_visitor, self.max_files = per_visitor, max_files
        self._lock = threading.Lock()
        self._kept: dict[str, collections.OrderedDict[str, int]] = {}  # visitor -> path -> bytes, oldest first
        self._owners: dict[str, set[str]] = {}  # path -> the visitors keeping it

    def keep(self, visitor: str, *paths: str | Path) -> list[str]:
        """Count `paths` (files or folders just written for `visitor`) as theirs, newest; delete their
        oldest until they fit. Returns the paths deleted."""
        fresh = [p for p in (os.path.realpath(p) for p in paths) if self._inside(p)]
        deleted = []
        with self._lock:
            mine = self._kept.setdefault(visitor, collections.OrderedDict())
            for path in fresh:
                mine[path] = 0
                mine.move_to_end(path)
                self._owners.setdefault(path, set()).add(visitor)
            for path in list(mine):
                size = _size(path)
                if size is None:  # deleted meanwhile (Gradio's sweep, another visitor's quota)
                    self._let_go(visitor, mine, path)
                else:
                    mine[path] = size
            while mine and (sum(mine.values()) > self.per_visitor or len(mine) > self.max_files):
                oldest = next(iter(mine))
                if oldest in fresh:  # what this request wrote stays, whatever it costs
                    break
                if self._let_go(visitor, mine, oldest):
                    deleted.append(oldest)
            if not mine:
                del self._kept[visitor]
        if deleted:
            log.info("disk quota: %d file(s) of a visitor deleted, oldest first", len(deleted))
        return deleted

    def used(self, visitor: str) -> int:
        """Bytes `visitor` keeps, as measured at their last keep."""
        with self._lock:
            return sum(self._kept.get(visitor, {}).values())

    def _let_go(self, visitor: str, mine: dict, path: str) -> bool:
        """`visitor` no longer keeps `path`; deleted when nobody does. Returns whether it was deleted."""
        mine.pop(path, None)
        owners = self._owners.get(path, set())
        owners.discard(visitor)
        if owners:
            return False
        self._owners.pop(path, None)
        self._delete(path)
        return True

    def _delete(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            return
        with contextlib.suppress(OSError):
            os.unlink(path)
            folder = os.path.dirname(path)
            if folder not in self.roots:  # Gradio keeps each file in a folder of its own, named by its hash
                os.rmdir(folder)

    def _inside(self, path: str) -> bool:
        return any(path != root and path.startswith(root + os.sep) for root in self.roots)


def _size(path: str) -> int | None:
    """Bytes of a file, or of every file under a folder; None if it is gone."""
    try:
        if not os.path.isdir(path):
            return os.lstat(path).st_size
        return sum(os.lstat(os.path.join(top, f)).st_size for top, _, files in os.walk(path) for f in files)
    except OSError:
        return None


def returned_files(data) -> Iterator[str]:
    """The paths of the files in a handler's postprocessed outputs (Gradio's FileData, at any depth)."""
    if isinstance(data, dict):
        if isinstance(data.get("path"), str):
            yield data["path"]
        for value in data.values():
            if isinstance(value, (dict, list, tuple)):
                yield from returned_files(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from returned_files(value)


def watch_outputs(demo, quota: Quota, visitor_of: Callable, output_root: Path) -> bool:
    """Every file a handler returns counts against its visitor's quota: wraps Gradio's process_api, the
    call that turns a handler's outputs into files (a file under `output_root` stands for its request
    folder). Returns False (and the outputs go uncounted, bounded by Gradio's hourly sweep) on a Gradio
    without that call."""
    process = getattr(demo, "process_api", None)
    if not callable(process):
        log.warning("this Gradio has no process_api: returned files are not counted in the visitors' quota")
        return False
    root = os.path.realpath(output_root)

    def entry(path: str) -> str:
        path = os.path.realpath(path)
        if path.startswith(root + os.sep):
            return os.path.join(root, os.path.relpath(path, root).split(os.sep)[0])
        return path

    async def process_api(*args, **kwargs):
        result = await process(*args, **kwargs)
        request = kwargs.get("request", args[3] if len(args) > 3 else None)
        if isinstance(request, list):
            request = request[0] if request else None
        files = list(dict.fromkeys(entry(p) for p in returned_files((result or {}).get("data"))))
        if files:
            quota.keep(visitor_of(request), *files)
        return result

    demo.process_api = process_api
    return True
