"""Downloading one file over HTTP(S) into a cache: progress, resume, bounded waits, atomic landing.

Contract of ``download(url, dest)``:
- the bytes go to ``dest.part`` and become ``dest`` (``os.replace``) only when complete and checked,
  so a reader of the cache never sees half a file;
- a broken transfer keeps ``dest.part`` only where the server accepts byte ranges, and the next
  call asks for the rest (``Range``); a server that answers the whole file again starts over;
- every network wait is bounded by ``timeout`` (connecting, and each read: a stalled server fails);
- checks before landing: the length the server announced, not a web page (Google Drive answers
  quota and virus-scan warnings with HTML and 200), and the pinned sha256 when one is given;
- every failure is one ``DownloadError`` sentence that names the file and what to do.

Google Drive: a large file's ``uc?export=download`` link answers with a confirmation page (a
form whose hidden inputs, or a link carrying ``confirm=``, lead to the file); ``drive_next_url``
reads that page and the download follows it, keeping Drive's cookies.

Google Drive folders: a folder's ``embeddedfolderview?id=FOLDER`` page lists its entries (one
``flip-entry`` block each: the entry's id, a link to the file or sub-folder, its title);
``read_page`` fetches such a page (bounded in time and size, never written to the cache) and
``drive_folder_entries`` reads the list, so a zoo entry can name a file inside a shared folder
and have it downloaded as any other Drive file.

Why not gdown (already a dependency, for torchvision's datasets): it applies its Drive handling
only to drive.google.com addresses, so that handling cannot be exercised against a local test
server or a mirror; its failures arrive as multi-line advice rather than one sentence; and the
same code must also serve the Tübingen Nextcloud links and mirrors, where plain HTTP with ranges
is all that is needed. The standard library's urllib does all of it without another dependency.
"""
from __future__ import annotations

import hashlib
import html
import http.client
import http.cookiejar
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import UserError, first_line

CHUNK = 1 << 20
TIMEOUT_S = 30.0  # connect, and each read: a server that sends nothing for this long has failed
MAX_PAGE_BYTES = 1 << 20  # a confirmation page is small; more HTML than this is not one
MAX_CONFIRM_HOPS = 3
USER_AGENT = "pmg-aft-studio (python urllib)"
Progress = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


class DownloadError(UserError):
    """A download that did not produce a usable file (one sentence, as every UserError).
    `resumable`: its partial file was kept for the next attempt to continue."""

    def __init__(self, message: str, resumable: bool = False):
        super().__init__(message)
        self.resumable = resumable


@dataclass
class Downloaded:
    path: Path
    sha256: str
    size: int


def sha256_of(path: Path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h


def looks_like_html(head: bytes) -> bool:
    """True for the start of a web page (what Drive or a login wall sends instead of a file)."""
    text = head[:512].lstrip().lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<meta", b"<script", b"<form"))


def drive_next_url(page: str, page_url: str) -> str | None:
    """The address a Google Drive confirmation page leads to (its download form or confirm link), or None."""
    form = re.search(r"<form[^>]*id=\"download-form\"[^>]*>(.*?)</form>", page, re.S | re.I) or \
        re.search(r"<form[^>]*action=\"[^\"]*download[^\"]*\"[^>]*>(.*?)</form>", page, re.S | re.I)
    if form:
        action = re.search(r"action=\"([^\"]+)\"", form.group(0), re.I)
        fields = re.findall(r"<input[^>]*type=\"hidden\"[^>]*>", form.group(1), re.I)
        params = []
        for tag in fields:
            name, value = re.search(r"name=\"([^\"]*)\"", tag), re.search(r"value=\"([^\"]*)\"", tag)
            if name:
                params.append((html.unescape(name.group(1)), html.unescape(value.group(1) if value else "")))
        if action:
            target = urllib.parse.urljoin(page_url, html.unescape(action.group(1)))
            return target + ("&" if "?" in target else "?") + urllib.parse.urlencode(params) if params else target
    link = re.search(r"href=\"([^\"]*confirm=[^\"]*)\"", page, re.I)
    if link:
        return urllib.parse.urljoin(page_url, html.unescape(link.group(1)))
    escaped = re.search(r"\"downloadUrl\":\"([^\"]+)\"", page)
    if escaped:
        return escaped.group(1).encode().decode("unicode_escape")
    return None


@dataclass(frozen=True)
class DriveItem:
    """One entry of a Google Drive folder listing."""

    id: str
    name: str
    folder: bool


def drive_folder_entries(page: str) -> list[DriveItem]:
    """The files and sub-folders an ``embeddedfolderview`` page lists, in its order."""
    items = []
    for block in re.split(r"(?=<div[^>]*class=\"flip-entry\")", page)[1:]:
        ident = re.search(r"id=\"entry-([\w-]+)\"", block)
        title = re.search(r"class=\"flip-entry-title\"[^>]*>(.*?)</div>", block, re.S)
        link = re.search(r"<a[^>]*href=\"([^\"]*)\"", block)
        if ident and title:
            items.append(DriveItem(ident.group(1), html.unescape(title.group(1)).strip(),
                                   bool(link and "/folders/" in link.group(1))))
    return items


def read_page(url: str, *, timeout: float | None = None, label: str = "the listing") -> str:
    """A small web page as text (a folder listing): bounded waits, at most MAX_PAGE_BYTES, one
    DownloadError sentence for any failure; nothing is written to disk."""
    timeout = TIMEOUT_S if timeout is None else timeout
    try:
        with _open(_opener(), url, 0, timeout) as resp:
            body = resp.read(MAX_PAGE_BYTES + 1)
    except urllib.error.HTTPError as e:
        what = "not found" if e.code == 404 else ("refused" if e.code in (401, 403) else "a server error")
        raise DownloadError(f"Reading {label} failed: {_host(url)} answered HTTP {e.code} ({what}).") from None
    except (TimeoutError, socket.timeout):
        raise DownloadError(f"Reading {label} failed: {_host(url)} sent nothing for {timeout:g} s; "
                            "run the command again to retry.") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise DownloadError(f"Reading {label} failed: {_host(url)} did not answer within {timeout:g} s.") from None
        raise DownloadError(f"Reading {label} failed: could not reach {_host(url)} ({first_line(reason)}).") from None
    if len(body) > MAX_PAGE_BYTES:
        raise DownloadError(f"Reading {label} failed: {_host(url)} sent more than {MAX_PAGE_BYTES:,} bytes, "
                            "which is not a folder listing.")
    return body.decode("utf-8", "replace")


def page_problem(page: str) -> str:
    """What a web page sent instead of the file says, as a clause."""
    low = page.lower()
    if "quota" in low or "too many users" in low:
        return "Google Drive's download quota for this file is used up for now (try again in a day, or use a mirror)"
    if "accounts.google.com" in low or "sign in" in low or "access denied" in low or "need access" in low:
        return "the file is not public (the server asks to sign in)"
    return "the server sent a web page instead of the file"


def _opener():
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _open(opener, url: str, start: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total(resp, start: int) -> int | None:
    """The file's full size from Content-Range (a resumed answer) or Content-Length."""
    crange = resp.headers.get("Content-Range", "")
    m = re.match(r"bytes (\d+)-(\d+)/(\d+)", crange)
    if m:
        return int(m.group(3))
    length = resp.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def download(url: str, dest: str | Path, *, sha256: str = "", timeout: float | None = None,
             progress: Progress | None = None, label: str | None = None) -> Downloaded:
    """Fetch `url` to `dest` (see the module docstring); returns the landed file, its sha256 and size.
    `timeout`: seconds any one wait may take (default TIMEOUT_S)."""
    dest = Path(dest)
    timeout = TIMEOUT_S if timeout is None else timeout
    label = label or dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    opener = _opener()
    resumable = False
    try:
        for _ in range(MAX_CONFIRM_HOPS + 1):
            start = part.stat().st_size if part.is_file() else 0
            resp = _open(opener, url, start, timeout)
            with resp:
                if start and resp.status != 206:  # the server ignored the range: start over
                    start = 0
                resumable = resp.headers.get("Accept-Ranges", "").lower() == "bytes" or resp.status == 206
                total = _total(resp, start)
                head = resp.read(min(CHUNK, MAX_PAGE_BYTES))
                kind = resp.headers.get("Content-Type", "").lower()
                if start == 0 and (looks_like_html(head) or kind.startswith("text/html")):
                    page = (head + resp.read(MAX_PAGE_BYTES - len(head))).decode("utf-8", "replace")
                    nxt = drive_next_url(page, resp.geturl())
                    if nxt is None or nxt == url:
                        raise DownloadError(f"Downloading {label} failed: {page_problem(page)} ({_host(url)}).")
                    url = nxt
                    continue
                with open(part, "ab" if start else "wb") as out:
                    out.write(head)
                    done = start + len(head)
                    if progress:
                        progress(done, total)
                    while block := resp.read(CHUNK):
                        out.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
            break
        else:
            raise DownloadError(f"Downloading {label} failed: {_host(url)} kept answering with confirmation pages.")
        if total is not None and done != total:
            raise DownloadError(f"Downloading {label} stopped at {done:,} of {total:,} bytes (the connection was cut); "
                                "run the command again to " + ("resume." if resumable else "retry."), resumable)
        digest = sha256_of(part).hexdigest()
        if sha256 and digest != sha256.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(f"{label} does not match its pinned sha256 (got {digest[:12]}..., expected "
                                f"{sha256[:12]}...); refused and deleted.")
        os.replace(part, dest)
        return Downloaded(dest, digest, dest.stat().st_size)
    except DownloadError as e:
        _drop_part(part, keep=e.resumable)
        raise
    except urllib.error.HTTPError as e:
        _drop_part(part, keep=False)
        what = "not found" if e.code == 404 else ("refused" if e.code in (401, 403) else "a server error")
        raise DownloadError(f"Downloading {label} failed: {_host(url)} answered HTTP {e.code} ({what}).") from None
    except http.client.HTTPException as e:  # a cut connection the HTTP layer noticed
        _drop_part(part, keep=resumable)
        raise DownloadError(f"Downloading {label} failed: the connection to {_host(url)} broke ({first_line(e)}); "
                            "run the command again to " + ("resume." if resumable else "retry."), resumable) from None
    except (TimeoutError, socket.timeout):
        _drop_part(part, keep=resumable)
        raise DownloadError(f"Downloading {label} failed: {_host(url)} sent nothing for {timeout:g} s; "
                            "run the command again to " + ("resume." if resumable else "retry.")) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        _drop_part(part, keep=resumable)
        reason = getattr(e, "reason", None) or e
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise DownloadError(f"Downloading {label} failed: {_host(url)} did not answer within {timeout:g} s.") from None
        raise DownloadError(f"Downloading {label} failed: could not reach {_host(url)} ({first_line(reason)}).") from None


def _drop_part(part: Path, keep: bool) -> None:
    """A partial file stays only when the server can continue it; otherwise nothing is left behind."""
    if not keep:
        part.unlink(missing_ok=True)


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url
