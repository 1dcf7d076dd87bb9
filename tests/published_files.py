"""Checkpoint files as their publishers' tools wrote them, for importer and zoo tests.

The test-time-counterattacks repo saved its .pth.tar files with torch 2.0 under numpy 1.26, so
the number in `best_acc1` is pickled through ``numpy.core.multiarray.scalar``; numpy 2 writes
``numpy._core`` instead. Rather than trust today's numpy, the scalar's pickle is written here
opcode by opcode (protocol 2, as torch.save uses) and put into a torch zip archive.
"""
import pickletools
import struct
import zipfile
from pathlib import Path

import torch

NUMPY1_SCALAR = "numpy.core.multiarray scalar"  # the GLOBAL a numpy 1.x pickle of a number names


def _unicode(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def numpy1_float64_ops(value: float) -> bytes:
    """The pickle opcodes numpy 1.x emits for numpy.float64(value) at protocol 2 (no memo)."""
    raw = struct.pack("<d", value).decode("latin1")  # protocol 2 carries bytes as _codecs.encode(str, 'latin1')
    return (b"c" + NUMPY1_SCALAR.replace(" ", "\n").encode() + b"\n"   # GLOBAL numpy.core.multiarray scalar
            + b"cnumpy\ndtype\n" + _unicode("f8") + b"\x89\x88\x87R"     # dtype('f8', False, True)
            + b"(K\x03" + _unicode("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # its state, BUILD
            + b"c_codecs\nencode\n" + _unicode(raw) + _unicode("latin1") + b"\x86R"  # the 8 raw bytes
            + b"\x86R")                                                  # scalar(dtype, bytes)


def save_numpy1_checkpoint(obj: dict, path: Path, number_key: str = "best_acc1", value: float = 31.2) -> Path:
    """torch.save(obj) with obj[number_key] = a numpy-1.x-pickled float64 `value`."""
    marker = "PMG-TEST-NUMPY1-SCALAR"
    torch.save({**obj, number_key: marker}, path)
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info, data in entries:
            if info.filename.endswith("/data.pkl"):
                assert data.count(_unicode(marker)) == 1
                data = data.replace(_unicode(marker), numpy1_float64_ops(value))
            z.writestr(info, data)
    return path


def pickle_globals(path: Path) -> set[str]:
    """The GLOBAL names a torch zip checkpoint's pickle refers to (read without unpickling)."""
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    return {str(arg) for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}


def public_code_checkpoint(weights: dict, prefix: str = "") -> dict:
    """The dict the public PMG-AFT / TeCoA / test-time-counterattacks training scripts save."""
    return {"epoch": 10, "state_dict": {}, "add_prompter": {},
            "vision_encoder_state_dict": {prefix + k: v for k, v in weights.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "momentum": 0.9, "params": [0, 1]}]}}


# --- a local server standing in for Google Drive, Nextcloud and mirrors ------------------------------

class Route:
    """How the server answers one path: `body` with byte ranges, or one of the ways hosts fail."""

    def __init__(self, body: bytes = b"", *, status: int = 200, content_type: str = "application/octet-stream",
                 ranges: bool = True, cut_at: int | None = None, stall_after: int | None = None,
                 redirect: str | None = None, gate=None):
        self.body, self.status, self.content_type, self.ranges = body, status, content_type, ranges
        self.cut_at, self.stall_after, self.redirect = cut_at, stall_after, redirect
        self.gate = gate  # a threading.Event: the answer waits until the test sets it


class FileServer:
    """An HTTP server on 127.0.0.1 (a port of its own) serving `routes`; records each request's Range."""

    def __init__(self):
        import http.server
        import threading

        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path with query, Range header)
        self.stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_GET(self):
                from urllib.parse import urlsplit

                server.requests.append((self.path, self.headers.get("Range")))
                route = server.routes.get(urlsplit(self.path).path) or server.routes.get(self.path)
                if route is not None and route.gate is not None:
                    route.gate.wait(60)
                if route is None or route.status >= 400:
                    self.send_error(404 if route is None else route.status)
                    return
                if route.redirect:
                    self.send_response(302)
                    self.send_header("Location", route.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, start = route.body, 0
                rng = self.headers.get("Range")
                if rng and route.ranges and rng.startswith("bytes="):
                    start = int(rng[len("bytes="):].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(route.status)
                if route.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                end = len(body) if route.cut_at is None else min(route.cut_at, len(body))
                if route.stall_after is not None:
                    self.wfile.write(body[start:start + route.stall_after])
                    self.wfile.flush()
                    server.stop.wait(30)  # says nothing until the test ends
                    return
                self.wfile.write(body[start:end])
                if route.cut_at is not None:  # a cut connection: fewer bytes than announced
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="test-file-server")
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def drive_confirm_page(action: str, file_id: str) -> str:
    """A Google Drive 'cannot scan this file for viruses' page, in the shape Drive sends it."""
    return ("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
            "<p>Google Drive can't scan this file for viruses.</p>"
            f"<form id=\"download-form\" action=\"{action}\" method=\"get\">"
            "<input type=\"submit\" value=\"Download anyway\"/>"
            f"<input type=\"hidden\" name=\"id\" value=\"{file_id}\">"
            "<input type=\"hidden\" name=\"export\" value=\"download\">"
            "<input type=\"hidden\" name=\"confirm\" value=\"t\">"
            "<input type=\"hidden\" name=\"uuid\" value=\"0b5e-test\"></form></body></html>")


DRIVE_QUOTA_PAGE = ("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
                    "<p>Too many users have viewed or downloaded this file recently. Please try accessing the file "
                    "again later.</p></body></html>")


# --- LEAF's files: a whole CLIP saved by transformers (CLIPModel.save_pretrained) ---------------------------

def transformers_clip_state(clip_state: dict) -> dict:
    """An open_clip CLIP's tensors under the names transformers' CLIPModel gives them, as its
    model.safetensors holds them (q/k/v split, projections as Linear weights, position_ids buffers)."""
    out = {}
    for tower, prefix, hf in (("visual", "visual.", "vision_model"), ("text", "", "text_model")):
        layers = sorted({int(k.split(".")[3 if tower == "visual" else 2]) for k in clip_state
                         if k.startswith(prefix + "transformer.resblocks.")})
        for i in layers:
            src, dst = f"{prefix}transformer.resblocks.{i}.", f"{hf}.encoder.layers.{i}."
            for kind in ("weight", "bias"):
                q, k, v = clip_state[f"{src}attn.in_proj_{kind}"].chunk(3)
                out[f"{dst}self_attn.q_proj.{kind}"], out[f"{dst}self_attn.k_proj.{kind}"] = q, k
                out[f"{dst}self_attn.v_proj.{kind}"] = v
                out[f"{dst}self_attn.out_proj.{kind}"] = clip_state[f"{src}attn.out_proj.{kind}"]
                out[f"{dst}layer_norm1.{kind}"] = clip_state[f"{src}ln_1.{kind}"]
                out[f"{dst}layer_norm2.{kind}"] = clip_state[f"{src}ln_2.{kind}"]
                out[f"{dst}mlp.fc1.{kind}"] = clip_state[f"{src}mlp.c_fc.{kind}"]
                out[f"{dst}mlp.fc2.{kind}"] = clip_state[f"{src}mlp.c_proj.{kind}"]
    out["vision_model.embeddings.class_embedding"] = clip_state["visual.class_embedding"]
    out["vision_model.embeddings.patch_embedding.weight"] = clip_state["visual.conv1.weight"]
    out["vision_model.embeddings.position_embedding.weight"] = clip_state["visual.positional_embedding"]
    out["vision_model.embeddings.position_ids"] = torch.arange(clip_state["visual.positional_embedding"].shape[0])[None]
    for kind in ("weight", "bias"):
        out[f"vision_model.pre_layrnorm.{kind}"] = clip_state[f"visual.ln_pre.{kind}"]
        out[f"vision_model.post_layernorm.{kind}"] = clip_state[f"visual.ln_post.{kind}"]
        out[f"text_model.final_layer_norm.{kind}"] = clip_state[f"ln_final.{kind}"]
    out["visual_projection.weight"] = clip_state["visual.proj"].t()
    out["text_model.embeddings.token_embedding.weight"] = clip_state["token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = clip_state["positional_embedding"]
    out["text_model.embeddings.position_ids"] = torch.arange(clip_state["positional_embedding"].shape[0])[None]
    out["text_projection.weight"] = clip_state["text_projection"].t()
    out["logit_scale"] = clip_state["logit_scale"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def drive_folder_listing(entries) -> str:
    """A Google Drive embeddedfolderview page listing `entries` ((id, name, is_folder), ...)."""
    blocks = "".join(
        f"<div class=\"flip-entry\" id=\"entry-{i}\" tabindex=\"0\" role=\"link\"><div class=\"flip-entry-info\">"
        f"<a href=\"https://drive.google.com/{'drive/folders/' + i if folder else 'file/d/' + i + '/view?usp=drive_web'}\""
        f" target=\"_blank\"><div class=\"flip-entry-list-icon\"></div><div class=\"flip-entry-title\">{name}</div>"
        "</a></div></div>" for i, name, folder in entries)
    return ("<!DOCTYPE html><html><head><title>shared folder</title></head><body>"
            f"<div class=\"flip-entries\">{blocks}</div></body></html>")


def flip_tensor_bytes(body: bytes, count: int = 16) -> bytes:
    """A torch zip archive with `count` bytes of its largest tensor's data inverted, its CRC-32 records
    untouched: what a bad disk, a bad copy or a tampering host leaves behind. torch.load reads it without
    complaint (it does not check the CRC)."""
    import io

    with zipfile.ZipFile(io.BytesIO(body)) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED and info.file_size >= 2 * count
    name_len, extra_len = struct.unpack("<HH", body[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    return body[:start] + bytes(b ^ 0xFF for b in body[start:start + count]) + body[start + count:]


# --- hub repos in the local Hugging Face cache (open_clip models: Delta-CLIP, RobustVLM's LAION models) ------------

def hub_repo(cache: Path, repo: str, files: dict[str, bytes], commit: str = "0" * 40) -> Path:
    """Lay `files` out as huggingface_hub's cache holds a downloaded repo (refs/main -> snapshots/<commit>/...)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def open_clip_config(model_cfg: dict, **text_extra) -> bytes:
    """An open_clip_config.json as open_clip's hub export writes it, with extra text_cfg keys."""
    import json

    cfg = json.loads(json.dumps(model_cfg))
    cfg["text_cfg"].update(text_extra)
    return json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}).encode()


def word_tokenizer_files(words) -> dict[str, bytes]:
    """A Hugging Face fast tokenizer (tokenizer.json + tokenizer_config.json) over `words`: a repo's own tokenizer."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
              "bos_token": "[BOS]", "eos_token": "[EOS]", "model_max_length": 512}
    return {"tokenizer.json": tok.to_str().encode(), "tokenizer_config.json": json.dumps(config).encode()}


def cached_files(cache: Path) -> list[str]:
    """Every file under `cache`, relative to it: what a refused fetch must not leave behind."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def one_sentence(err) -> str:
    """A refusal's text (pytest.raises' ExceptionInfo), checked to be one line with no traceback."""
    msg = str(err.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg
