"""MNIST-style IDX files: parse them strictly (every error names the file and the problem, because
a bad download or a truncated copy must stop the pipeline before anything trains on it) and
write them one fixed way.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from squeeze.data.spec import DataError, Split

# split -> (images file, labels file), the names upstream uses (each may also end in .gz)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one Fashion-MNIST uses


GZIP_LEVEL = 6  # of the snapshot in data/raw: zlib's default; 9 takes twice as long for 1% less


def raw_names() -> list[str]:
    return [name for pair in IDX_FILES.values() for name in pair]


def read_idx(path: Path, shown: str | None = None) -> np.ndarray:
    """Parse one IDX file (gzip or raw) into an ndarray, checking header and length.

    shown: how errors name the file (the source it was fetched from), default its path.
    """
    blob = path.read_bytes()
    where = shown or str(path)
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{where}: corrupt or truncated gzip stream ({err})") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0:
        raise DataError(f"{where}: not an IDX file (bad magic number {blob[:4].hex()})")
    if blob[2] != IDX_UBYTE:
        raise DataError(f"{where}: IDX type code {blob[2]:#04x}, expected unsigned bytes (0x08)")
    ndim = blob[3]
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{where}: truncated IDX header ({len(blob)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(blob, ">u4", ndim, offset=4))
    expected = int(np.prod(dims))
    if len(blob) - header != expected:
        raise DataError(
            f"{where}: header says shape {dims} = {expected} bytes of data, "
            f"file holds {len(blob) - header}; the file is truncated or padded, fetch it again"
        )
    return np.frombuffer(blob, np.uint8, offset=header).reshape(dims)


def find_raw(folder: Path, name: str) -> Path:
    """The file for an IDX name in folder, compressed or not."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.exists():
            return candidate
    raise DataError(f"{folder}: missing {name}.gz (or {name}), one of the four IDX files")


def read_split(folder: Path, split: str, shown: str | None = None) -> Split:
    """Read the images and labels of one split from a folder of IDX files.

    Images come as (N, rows, cols), given a channel axis here, or as (N, rows, cols, C) with C
    1 or 3. shown: how errors name the folder (the source the files were fetched from).
    """
    paths = [find_raw(folder, name) for name in IDX_FILES[split]]
    # strings, not Paths: a Path would collapse the // of s3:// and http:// sources
    images_path, labels_path = (f"{(shown or str(folder)).rstrip('/')}/{p.name}" for p in paths)
    images, labels = read_idx(paths[0], images_path), read_idx(paths[1], labels_path)
    if images.ndim == 3:
        images = images[..., np.newaxis]  # (N, H, W) -> (N, H, W, 1)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{images_path}: expected (N, rows, cols) or (N, rows, cols, 1|3) images, "
            f"got shape {images.shape}"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected (N,) labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels: the files do not belong together"
        )
    return Split(images, labels.astype(np.int64))


def write_raw(splits: Mapping[str, Split], folder: Path) -> None:
    """Write the splits as the four upstream IDX gz files, encoded one fixed way (no timestamp,
    fixed level). One-channel images are written as upstream's (N, rows, cols)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        images_name, labels_name = IDX_FILES[name]
        images = split.images[..., 0] if split.images.shape[-1] == 1 else split.images
        for file, array in ((images_name, images), (labels_name, split.labels)):
            # IDX: two zero bytes, the type code, ndim, then each dim as big-endian uint32
            header = bytes([0, 0, IDX_UBYTE, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            # labels were decoded from uint8 (Split widens them to int64): the cast is exact
            blob = header + np.ascontiguousarray(array, np.uint8).tobytes()
            (folder / f"{file}.gz").write_bytes(gzip.compress(blob, GZIP_LEVEL, mtime=0))
