"""Checkpoints are data: hostile pickles never run, broken or mismatched files get one clear sentence."""
import ast
import json
import pickletools
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pmg_core.models.checkpoints import (META_KEY, read_metadata, save_base, save_finetune,
                                  save_training_state)
from pmg_core.core.errors import UserError
from pmg_core.models.clip import load_checkpoint_model, load_model
from pmg_core.training.loop import TrainConfig, Trainer, state_path

ROOT = Path(__file__).resolve().parent.parent


class _WritesFile:
    """Unpickling this runs code: it writes `marker` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _evil_file(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}, "payload": _WritesFile(marker)}, path)
    return path


def _one_sentence(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_the_payload_is_live(tmp_path):
    """Control: the hostile file really tells an unpickler to run code, so the refusals below mean
    something. Read without unpickling: its pickle calls builtins.exec on the marker-writing code,
    and that call, made here directly, writes the marker."""
    marker = tmp_path / "control"
    evil = _evil_file(tmp_path / "evil.pt", marker)
    with zipfile.ZipFile(evil) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pkl)]
    calls_exec = any(name == "GLOBAL" and arg in ("builtins exec", "__builtin__ exec") for name, arg in ops)
    assert calls_exec and ("REDUCE", None) in ops and any(str(marker) in str(arg) for _, arg in ops)
    fn, args = _WritesFile(marker).__reduce__()
    fn(*args)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".safetensors"])
def test_pickle_checkpoint_is_refused_through_load_model(tmp_path, suffix):
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / f"evil{suffix}", marker)
    with pytest.raises(UserError) as e:
        load_model(str(evil))
    _one_sentence(e)
    assert not marker.exists()


def test_pickle_checkpoint_is_refused_by_every_reader(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "evil.safetensors", marker)
    for reader in (read_metadata, load_checkpoint_model):
        with pytest.raises(UserError) as e:
            reader(evil)
        _one_sentence(e)
    assert not marker.exists()


def _train_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model="pmg-test", method="clean", dataset="toy-colours", max_steps=2, batch_size=32, lr=0.01,
                warmup=1, out=str(out), resume=True)
    return TrainConfig(**{**base, **kw})


def test_pickle_resume_state_is_refused(tmp_path, model):
    """A real checkpoint whose .state file was swapped for a pickle: resume refuses it, nothing runs."""
    marker = tmp_path / "pwned"
    out = save_finetune(tmp_path / "run.safetensors", model, {"method": "clean"})
    _evil_file(state_path(out), marker)
    with pytest.raises(UserError) as e:
        list(Trainer(_train_cfg(out), model=model).run())
    _one_sentence(e)
    assert not marker.exists()


def test_pickle_checkpoint_is_refused_on_resume(tmp_path, model):
    marker = tmp_path / "pwned"
    out = _evil_file(tmp_path / "run.safetensors", marker)
    with pytest.raises(UserError) as e:
        list(Trainer(_train_cfg(out), model=model).run())
    _one_sentence(e)
    assert not marker.exists()


@pytest.fixture
def good_checkpoint(tmp_path, model) -> Path:
    return save_finetune(tmp_path / "good.safetensors", model, {"method": "tecoa"})


def _corruptions(data: bytes) -> dict[str, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    header = data[8 : 8 + n]
    return {
        "truncated in the tensors": data[: len(data) // 2],
        "truncated in the header": data[: 8 + n // 2],
        "only the length field": data[:8],
        "empty": b"",
        "header length beyond the file": struct.pack("<Q", 1 << 60) + data[8:],
        "header not JSON": data[:8] + b"\xff" * n + data[8 + n :],
        "header JSON of the wrong shape": _with_header(b'["a", "b"]', data[8 + n :]),
        "tensor offsets out of range": _with_header(header.replace(b'"data_offsets":[0,', b'"data_offsets":[99999999,', 1),
                                                    data[8 + n :]),
        "random bytes": bytes(range(256)) * 64,
    }


def _with_header(header: bytes, body: bytes) -> bytes:
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + body


def test_truncated_or_corrupt_safetensors_are_refused(tmp_path, good_checkpoint):
    cases = _corruptions(good_checkpoint.read_bytes())
    for what, blob in cases.items():
        bad = tmp_path / f"bad-{len(blob)}.safetensors"
        bad.write_bytes(blob)
        for reader in (load_model, load_checkpoint_model):
            with pytest.raises(UserError) as e:
                reader(str(bad))
            msg = _one_sentence(e)
            assert bad.name in msg, (what, msg)
    assert len(cases) == 9


def _with_metadata(tmp_path: Path, name: str, tensors: dict, meta) -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=None if meta is None else {META_KEY: meta if isinstance(meta, str) else json.dumps(meta)})
    return path


def _visual(model) -> dict:
    return {f"visual.{k}": v.contiguous() for k, v in model.visual.state_dict().items()}


@pytest.mark.parametrize("meta,words", [
    (None, "no pmg_core metadata"),
    ("{not json", "corrupt metadata"),
    ('["kind", "finetune"]', "valid kind"),
    ({"kind": "surprise"}, "valid kind"),
    ({"kind": "finetune"}, "does not name its base"),
    ({"kind": "finetune", "base": "no-such-model"}, "Unknown model"),
    ({"kind": "finetune", "base": "../../../etc/passwd.safetensors"}, "does not exist"),
    ({"kind": "base", "arch": "no-such-arch"}, "architecture"),
    ({"kind": "base"}, "architecture"),
])
def test_wrong_or_missing_metadata_is_refused(tmp_path, model, meta, words):
    path = _with_metadata(tmp_path, "meta", _visual(model), meta)
    with pytest.raises(UserError) as e:
        load_model(str(path))
    assert words in _one_sentence(e)


def test_finetune_of_another_architecture_is_refused(tmp_path):
    tiny = load_model("pmg-tiny")
    path = _with_metadata(tmp_path, "other", _visual(tiny), {"kind": "finetune", "base": "pmg-test"})
    with pytest.raises(UserError) as e:
        load_model(str(path))
    assert "does not fit the image encoder of pmg-test" in _one_sentence(e)


def test_base_checkpoint_of_another_architecture_is_refused(tmp_path, model):
    path = save_base(tmp_path / "liar.safetensors", model, {"arch": "pmg-tiny"})  # pmg-test weights, claims pmg-tiny
    with pytest.raises(UserError) as e:
        load_model(str(path))
    assert "does not fit architecture 'pmg-tiny'" in _one_sentence(e)


def test_resume_from_another_base_is_refused(tmp_path, model):
    out = _with_metadata(tmp_path, "run", _visual(model), {"kind": "finetune", "base": "pmg-tiny"})
    with pytest.raises(UserError) as e:
        list(Trainer(_train_cfg(out), model=model).run())
    assert "resume with the same base model" in _one_sentence(e)


@pytest.mark.parametrize("state", ["no metadata", "metadata not JSON", "no optimizer fields", "a checkpoint"])
def test_broken_resume_state_is_refused(tmp_path, model, state):
    out = save_finetune(tmp_path / "run.safetensors", model, {"method": "clean"})
    rng = {"rng.torch": torch.get_rng_state()}
    if state == "no metadata":
        save_file(rng, str(state_path(out)))
    elif state == "metadata not JSON":
        save_file(rng, str(state_path(out)), metadata={META_KEY: "{oops"})
    elif state == "no optimizer fields":
        save_file(rng, str(state_path(out)), metadata={META_KEY: json.dumps({"step": 1})})
    else:
        state_path(out).write_bytes(out.read_bytes())
    with pytest.raises(UserError) as e:
        list(Trainer(_train_cfg(out), model=model).run())
    assert "state" in _one_sentence(e)


def test_state_for_another_optimizer_is_refused(tmp_path, model):
    out = save_finetune(tmp_path / "run.safetensors", model, {"method": "clean"})
    other = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1, momentum=0.9)
    save_training_state(state_path(out), other, None, 1)
    with pytest.raises(UserError) as e:
        list(Trainer(_train_cfg(out), model=model).run())
    assert "does not fit this run's optimizer" in _one_sentence(e)


# --- no unpickling anywhere in the project -----------------------------------------------------

def _project_sources() -> list[Path]:
    files = [*(ROOT / "pmg_core").rglob("*.py"), *(ROOT / "studio").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]
    return [p for p in files + [ROOT / "app.py"] if p.is_file()]


def unsafe_loads(source: str) -> list[int]:
    """Line numbers of torch.load calls without weights_only=True, and of any pickle load."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name == "torch.load" or name.endswith(".torch.load"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                bad.append(node.lineno)
        elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
            bad.append(node.lineno)
    return bad


def test_the_scanner_catches_unsafe_loads():
    assert unsafe_loads("import torch\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
                        "torch.load(p, weights_only=True)\nimport pickle\npickle.loads(b)\n") == [2, 3, 6]


def test_no_unsafe_torch_load_in_the_project():
    sources = _project_sources()
    assert any(p.name == "checkpoints.py" for p in sources)
    found = {str(p.relative_to(ROOT)): lines for p in sources if (lines := unsafe_loads(p.read_text()))}
    assert not found, f"torch.load without weights_only=True (or pickle) at {found}"
