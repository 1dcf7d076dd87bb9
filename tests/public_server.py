"""A public server in a process of its own, and visitors from loopback addresses of their own: what the
hostile suite (test_hostile.py) and scripts/public_load.py drive. Light on purpose (no torch, no app
imports), so that a client process stands for a machine elsewhere and costs the server's machine little.
"""
import os
import socket
import time
from pathlib import Path

from studio.visitors import TRUSTED_PROXIES_ENV  # a module of the standard library's imports only

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "assets" / "examples" / "example.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, seconds: float = 120) -> bool:
    """Poll `predicate` until it holds or `seconds` pass; its last answer."""
    deadline = time.time() + seconds
    while time.time() < deadline and not predicate():
        time.sleep(0.1)
    return predicate()


# --- hostile files: images whose decode or conversion costs far more than their bytes ---------------------

def image_bombs(folder) -> dict[str, str]:
    """Small files that cost hundreds of MB if read carelessly (issue 29's probe): a 40 kB palette PNG of
    6324 px with transparency (RGBA conversion at full size: 160 MB a copy), a 4000 px RGBA PNG and a
    6000 px 16-bit PNG (wider than the app's 1,024 px: once refused with 'image has wrong mode').
    Made once per folder."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, make in (("palette", _palette_bomb), ("rgba", _rgba_bomb), ("16-bit", _deep_bomb)):
        path = folder / f"{name}-bomb.png"
        if not path.is_file():
            image = make(Image)
            image.save(path, format="PNG", optimize=False, compress_level=9)
            del image
        made[name] = str(path)
    return made


def _palette_bomb(Image):
    img = Image.new("P", (6324, 6324), 1)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
    img.paste(0, (0, 0, 6324, 700))  # a transparent stripe
    img.info["transparency"] = 0
    return img


def _rgba_bomb(Image):
    img = Image.new("RGBA", (4000, 4000), (20, 120, 200, 255))
    img.paste((200, 30, 30, 90), (0, 0, 4000, 1000))
    return img


def _deep_bomb(Image):
    img = Image.new("I;16", (6000, 6000), 30000)
    img.paste(60000, (0, 0, 6000, 800))
    return img


# --- a visitor of its own: the page's way into the queue, from a chosen loopback address ------------------

class QueueClient:
    """What a browser does, over plain HTTP: uploads, then joins the queue and reads the session's event
    stream. Its sockets leave from `address` (any of 127/8 on Linux), so each client is a visitor of its
    own to a server that trusts no proxy, as a machine elsewhere would be."""

    def __init__(self, url: str, address: str = "127.0.0.1", timeout: float = 180):
        import uuid

        import httpx

        self.url = url.rstrip("/") + "/"
        self.http = httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=timeout)
        config = self.http.get(self.url + "config").json()
        self.fn_index = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}
        self.session = uuid.uuid4().hex

    def new_session(self) -> None:
        import uuid

        self.session = uuid.uuid4().hex

    def upload(self, path) -> dict:
        """An uploaded file as an image field's value. While the visitor's uploads at once are taken (429),
        it tries again, as a client that sends several at once would."""
        name = Path(path).name
        for _ in range(100):
            with open(path, "rb") as f:
                answer = self.http.post(self.url + "gradio_api/upload", files=[("files", (name, f))])
            if answer.status_code != 429:
                break
            time.sleep(0.2)
        answer.raise_for_status()
        return {"path": answer.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def call(self, api_name: str, *data, event_data=None) -> tuple[bool, object]:
        """Run an event through the queue -> (True, its last outputs) or (False, the sentence it got)."""
        import json

        joined = self.http.post(self.url + "gradio_api/queue/join",
                                json={"data": list(data), "fn_index": self.fn_index[api_name], "event_data": event_data,
                                      "session_hash": self.session, "trigger_id": None})
        if joined.status_code != 200:
            return False, joined.json().get("detail")
        event_id = joined.json()["event_id"]
        with self.http.stream("GET", self.url + "gradio_api/queue/data", params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event_id or message.get("msg") != "process_completed":
                    continue
                output = message.get("output") or {}
                if message.get("success"):
                    return True, output.get("data")
                return False, output.get("error")
        return False, "the event stream ended without an answer"

    def close(self) -> None:
        self.http.close()


# --- the public server in a process of its own ----------------------------------------------------------

class PublicServer:
    """`python app.py --public` on 127.0.0.1 in a process of its own (its memory is its own, and it can be
    signalled): the embedded models (a copy of checkpoints/), offline, its temporary files under `folder`."""

    def __init__(self, folder, env: dict | None = None, timeout: float = 240):
        import shutil
        import subprocess
        import sys

        self.folder = Path(folder)
        self.tmp, checkpoints = self.folder / "tmp", self.folder / "checkpoints"
        self.tmp.mkdir(parents=True, exist_ok=True)
        checkpoints.mkdir(exist_ok=True)
        for f in (ROOT / "checkpoints").glob("*.safetensors"):
            shutil.copy(f, checkpoints)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        environ = {k: v for k, v in os.environ.items() if k not in (TRUSTED_PROXIES_ENV, "GRADIO_TEMP_DIR", "SPACE_ID")}
        environ.update(PMG_OFFLINE="1", TMPDIR=str(self.tmp), PMG_CHECKPOINT_DIR=str(checkpoints), **(env or {}))
        self.log = open(self.folder / "server.log", "w")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--public", "--port", str(self.port)],
                                        cwd=ROOT, env=environ, stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_for(self._answers, timeout):
            self.stop()
            raise RuntimeError("the public server did not start:\n" + self.log_tail())

    def _answers(self) -> bool:
        import httpx

        if self.process.poll() is not None:
            return True  # it ended: the caller sees why
        try:
            return httpx.get(self.url + "config", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, chars: int = 3000) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.folder / "server.log").read_text()[-chars:]

    def status(self, key: str) -> float:
        """A field of the server's /proc status in MB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(key)

    def reset_peak(self) -> float:
        """Start a new peak of resident memory (Linux: clear_refs 5); returns the memory now."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return self.status("VmRSS")

    def disk_bytes(self) -> int:
        """Bytes of every file under the server's temporary folder (its run folder, Gradio's uploads)."""
        return sum(f.stat().st_size for f in self.tmp.rglob("*") if f.is_file() and not f.is_symlink())

    def stop(self, sig=None) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(sig or signal.SIGTERM)
            try:
                self.process.wait(60)
            except Exception:  # noqa: BLE001 - it would not stop: end it
                self.process.kill()
                self.process.wait(30)
        self.log.close()
        return self.process.returncode
