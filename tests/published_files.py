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
