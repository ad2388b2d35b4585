"""The shipped form of a model: its ONNX file, xz-compressed (`model.onnx.xz`).

A pruned or int4/int8 ONNX file stores its zeros and narrow weights densely; a general-purpose
compressor stores them cheaply, so the file the registry holds, and that evaluate counts as
`shipped_bytes`, shrinks with the sparsity. xz (LZMA2, preset 9e, the .xz container with a
CRC64 check) is used because its range coder packs those skewed bytes ~9% tighter than gzip -9
(measured on the default candidates: a 60%-sparse int4 model 26,677 B gzip, 24,208 B xz), and
anyone can open it with the standard `xz -d` / Python's lzma, no project code. Its output depends
on the input bytes only, so re-packing the same model gives the same checksum (promote relies on
that to spot a re-promotion).

Registry versions published before xz hold `model.onnx.gz` (gzip) or a bare `model.onnx`; they
still unpack (SHIPPED_FORMATS), so a rollback to one keeps working.
"""

from __future__ import annotations

import gzip
import lzma
import zlib
from collections.abc import Callable, Container
from pathlib import Path

SHIPPED = "model.onnx.xz"
MODEL = "model.onnx"
XZ_PRESET = 9 | lzma.PRESET_EXTREME
# shipped file name -> how to get the ONNX bytes back; first what squeeze ships now
SHIPPED_FORMATS: dict[str, Callable[[bytes], bytes]] = {
    SHIPPED: lzma.decompress,
    "model.onnx.gz": gzip.decompress,  # squeeze before xz
}
# what decompressing damaged bytes raises (the format's own integrity check failing)
DAMAGED = (lzma.LZMAError, OSError, EOFError, zlib.error)


def pack(onnx_bytes: bytes) -> bytes:
    """The shipped bytes of an ONNX model: the .xz container, LZMA2 preset 9e, CRC64 check."""
    return lzma.compress(onnx_bytes, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                         preset=XZ_PRESET)  # fmt: skip


def shipped_name(files: Container[str]) -> str | None:
    """Which SHIPPED_FORMATS file a registry version (or folder listing) holds; None: none."""
    return next((name for name in SHIPPED_FORMATS if name in files), None)


def unpacked(shipped: bytes, name: str = SHIPPED) -> bytes:
    """The ONNX bytes of a shipped file called `name` (a SHIPPED_FORMATS key).

    Raises one of DAMAGED when the bytes are not that format or fail its integrity check."""
    return SHIPPED_FORMATS[name](shipped)


def unpack(folder: Path) -> Path:
    """Write folder/model.onnx from the shipped file in folder (a registry version as
    downloaded) and return its path; a folder that already holds model.onnx is left as it is.

    Raises FileNotFoundError when the folder holds neither."""
    model = folder / MODEL
    if not model.exists():
        name = shipped_name({p.name for p in folder.iterdir()})
        if name is None:
            raise FileNotFoundError(
                f"{folder} holds no {MODEL} and no {' or '.join(SHIPPED_FORMATS)}"
            )
        tmp = model.with_suffix(".onnx.tmp")
        tmp.write_bytes(unpacked((folder / name).read_bytes(), name))
        tmp.replace(model)
    return model
