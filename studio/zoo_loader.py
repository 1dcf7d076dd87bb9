"""Published models joining the running app: fetched, checked, converted and loaded in the background.

The app answers at once with what it has; this thread works through the zoo ids one at a time
(pmg_core.models.zoo.load_entry: download with progress, checks, conversion into the cache, loading onto
the base already loaded) and hands each model to the Studio, where it joins the model lists as a
Train checkpoint does. Each id has a status line for the About tab: waiting, its download
progress, ready, or the one sentence saying why it failed; a failure never stops the app or the
ids after it. One model at a time keeps the memory and the network use of a small Space steady.
"""
from __future__ import annotations

import html
import logging
import threading
from typing import Sequence

from pmg_core.models import zoo
from pmg_core.core.errors import UserError, first_line

log = logging.getLogger("pmg_studio")


class ZooLoader:
    def __init__(self, studio, ids: Sequence[str]):
        self.studio = studio
        self.ids = list(ids)
        self.status = {i: "waiting" for i in self.ids}
        self.failures: dict[str, str] = {}  # id -> the whole text of why it failed (the status may cut an inner error)
        self.thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> "ZooLoader":
        self.thread = threading.Thread(target=self._run, daemon=True, name="pmg-zoo-loader")
        self.thread.start()
        return self

    def _run(self) -> None:
        for entry_id in self.ids:
            try:
                self._load(zoo.get(entry_id))
            except UserError as e:
                self._failed(entry_id, f"not loaded: {e}", e)
            except Exception as e:  # noqa: BLE001 - the app keeps serving; the log has the details
                log.exception("loading the zoo model %s failed", entry_id)
                self._failed(entry_id, f"not loaded: an unexpected error ({first_line(e)}); see the server log.", e)

    def _failed(self, entry_id: str, status: str, error: BaseException) -> None:
        self.failures[entry_id] = whole_text(error)
        self.status[entry_id] = status
        self.studio.mode = zoo.mode_after_download(self.studio.mode, entry_id, failed=True)

    def _load(self, entry: zoo.Entry) -> None:
        if self.studio.model_with_spec(entry.base) is not None and not entry.converted:
            self.status[entry.id] = "ready (loaded at start)"
            return
        base = self.studio.model_with_spec(entry.base)
        if entry.converted and base is None:
            raise UserError(f"it needs its base {entry.base}, which is not loaded.")
        self.status[entry.id] = "loading" if zoo.is_cached(entry) else "downloading"
        device = base.device if base is not None else self.studio.device
        model = zoo.load_entry(entry.id, device=device, base=base, progress=self._progress(entry.id),
                               say=lambda line: log.info("%s", line))
        self.studio.add(model)
        self.status[entry.id] = "ready"
        self.studio.mode = zoo.mode_after_download(self.studio.mode, entry.id, failed=False)

    def _progress(self, entry_id: str):
        def report(done: int, total: int | None) -> None:
            of = f" of {total / 1e6:,.0f} MB ({100 * done / total:.0f}%)" if total else " MB"
            self.status[entry_id] = f"downloading: {done / 1e6:,.0f}{of}"
        return report

    def markdown(self) -> str:
        """The About tab's download table: each id, what it is, where it stands; then each failure in full."""
        rows = ["| zoo model | what | status |", "|---|---|---|"]
        for entry_id in self.ids:
            entry = zoo.get(entry_id)
            rows.append(f"| {entry_id} | {entry.title} | {html.escape(self.status[entry_id], quote=False).replace('|', '/')} |")
        whole = [f"<details><summary>Why {html.escape(i)} failed, in full</summary>\n\n<pre>{html.escape(text)}</pre>\n"
                 "</details>" for i, text in list(self.failures.items())]
        return "\n".join(rows) + ("\n\n" + "\n".join(whole) if whole else "")


def whole_text(error: BaseException) -> str:
    """An error's message and, below it, the whole message of the error it was raised from
    (pmg_core's sentences quote only the first line of the library error behind them, cut at a word)."""
    lines = [str(error) or type(error).__name__]
    inner = error.__cause__ or error.__context__
    while inner is not None and len(lines) < 4:
        lines.append(f"{type(inner).__name__}: {inner}")
        inner = inner.__cause__ or inner.__context__
    return "\n\n".join(lines)
