"""The shipped form of a model: its ONNX file, gzip-compressed.

A pruned or int8 ONNX file stores its zeros and narrow weights densely; gzip stores them
cheaply, so the file the registry holds, and that evaluate counts as `gzip_bytes`, shrinks with
the sparsity. `mtime=0` makes the bytes depend on the model only, so re-packing the same model
gives the same checksum (promote relies on that to spot a re-promotion).
"""

from __future__ import annotations

import gzip
from pathlib import Path

SHIPPED = "model.onnx.gz"
MODEL = "model.onnx"


def pack(onnx_bytes: bytes) -> bytes:
    """The shipped bytes of an ONNX model."""
    return gzip.compress(onnx_bytes, 9, mtime=0)


def unpacked(shipped: bytes) -> bytes:
    """The ONNX bytes of a shipped model; gzip's CRC check fails on damaged bytes."""
    return gzip.decompress(shipped)


def unpack(folder: Path) -> Path:
    """Write folder/model.onnx from the shipped folder/model.onnx.gz (a registry version as
    downloaded) and return its path; a folder that already holds model.onnx is left as it is."""
    model = folder / MODEL
    if not model.exists():
        tmp = model.with_suffix(".onnx.tmp")
        tmp.write_bytes(unpacked((folder / SHIPPED).read_bytes()))
        tmp.replace(model)
    return model
