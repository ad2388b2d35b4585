"""Fashion-MNIST: fetch the raw IDX files from a source, parse them strictly, split and subset.

Every parse error names the file and the problem, because a bad download or a truncated copy
must stop the pipeline before anything trains on it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from squeeze.errors import StageRefused

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# split -> (images file, labels file), the names upstream uses (each may also end in .gz)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one Fashion-MNIST uses
GZIP_LEVEL = 6  # of the snapshot in data/raw: zlib's default; 9 takes twice as long for 1% less
STATS_CHUNK = 4096  # images per step of DataSpec.measure's sums: bounds its memory
TRANSIENT_HTTP = {408, 425, 429}  # client-error statuses that mean "not now" rather than "no"


class DataError(StageRefused):
    """A raw data file is missing, corrupt, truncated or inconsistent."""


class FetchError(DataError):
    """The source could not be read (network, S3): worth retrying, unlike bad data."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know of its data (data/profile.json, written by ingest): the
    image size and channels of the (N, H, W, C) uint8 splits, the class names (label k is
    classes[k]) and the per-channel pixel mean and standard deviation of the training split on
    the 0..1 scale, which the model standardises its raw input with."""

    classes: tuple[str, ...]
    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "height": self.height, "width": self.width,
                "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DataSpec:
        return cls(tuple(data["classes"]), int(data["height"]), int(data["width"]),
                   int(data["channels"]), tuple(data["mean"]), tuple(data["std"]))  # fmt: skip

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def measure(cls, train: Split, classes: Sequence[str]) -> DataSpec:
        """The spec of (N, H, W, C) uint8 training images: their shape, and the mean and
        standard deviation of every channel over all pixels, on the 0..1 scale (float64 sums
        over chunks of images, rounded to 6 decimals so the profile's bytes are stable)."""
        n, height, width, channels = train.images.shape
        total = np.zeros(channels)
        squares = np.zeros(channels)
        for i in range(0, n, STATS_CHUNK):
            chunk = train.images[i : i + STATS_CHUNK].reshape(-1, channels).astype(np.float64)
            total += chunk.sum(0)
            squares += (chunk * chunk).sum(0)
        count = n * height * width
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
        return cls(tuple(classes), height, width, channels,
                   tuple(round(float(m) / 255, 6) for m in mean),
                   tuple(round(float(s) / 255, 6) for s in std))  # fmt: skip


def read_spec(path: Path) -> DataSpec:
    """The DataSpec ingest wrote to path (data/profile.json); DataError when there is none."""
    try:
        return DataSpec.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise DataError(f"{path} is missing: run the ingest stage first (dvc repro ingest)") from None


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
    raise DataError(f"{folder}: missing {name}.gz (or {name}), one of the four Fashion-MNIST files")


def read_split(folder: Path, split: str, shown: str | None = None) -> Split:
    """Read the images and labels of one split from a folder of IDX files.

    shown: how errors name the folder (the source the files were fetched from).
    """
    paths = [find_raw(folder, name) for name in IDX_FILES[split]]
    # strings, not Paths: a Path would collapse the // of s3:// and http:// sources
    images_path, labels_path = (f"{(shown or str(folder)).rstrip('/')}/{p.name}" for p in paths)
    images, labels = read_idx(paths[0], images_path), read_idx(paths[1], labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected (N, rows, cols) images, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected (N,) labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels: the files do not belong together"
        )
    return Split(images, labels.astype(np.int64))


def resolve_source(source: str, mirror: str) -> str:
    """The source that 'auto' stands for: SYSTEM_DIR when it holds the files, else the mirror."""
    if source != "auto":
        return source
    return str(SYSTEM_DIR) if SYSTEM_DIR.is_dir() else mirror


def is_remote(source: str) -> bool:
    return source.startswith(("http://", "https://", "s3://"))


def fetch_raw(source: str, endpoint_url: str | None, dest: Path) -> None:
    """Download the four raw files from a remote source (s3://bucket/prefix or an http(s)://
    base URL) into dest, emptied first.

    A read that may succeed later (network, throttling, 5xx) raises FetchError; a missing file
    or refused access raises at once, naming the file.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        old.unlink()
    if source.startswith("s3://"):
        fetch_s3(source, endpoint_url, dest)
    else:
        for name in raw_names():
            download(f"{source.rstrip('/')}/{name}.gz", dest / f"{name}.gz")


def fetch_s3(source: str, endpoint_url: str | None, dest: Path) -> None:
    """Download the four raw files under an s3:// prefix into dest.

    Throttling, 5xx and unreachable endpoints (storage.Unavailable, after botocore's own
    retries) become FetchError, which ingest retries; refused credentials and missing keys
    (StoreError, NotFound: their messages name bucket and key) fail at once.
    """
    from squeeze.storage import Unavailable, open_store  # boto3 is only needed for S3 sources

    store = open_store(source, endpoint_url)
    try:
        keys = set(store.list())
        for name in raw_names():
            key = next((k for k in (f"{name}.gz", name) if k in keys), None)
            if key is None:
                raise DataError(f"{source}: missing {name}.gz (or {name})")
            (dest / key).write_bytes(store.get(key))
    except Unavailable as err:
        raise FetchError(f"cannot fetch {source}: {err}") from err


def download(url: str, dest: Path, timeout_s: float = 60) -> None:
    """Download url to dest through a temporary file, so a broken transfer leaves nothing.

    A client error (404, 403, ...) is permanent and raises DataError; anything else that goes
    wrong on the way (no connection, timeout, 5xx, 408, 429) raises FetchError.
    """
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, tmp.open("wb") as out:
            shutil.copyfileobj(response, out)
    except urllib.error.HTTPError as err:
        tmp.unlink(missing_ok=True)
        if 400 <= err.code < 500 and err.code not in TRANSIENT_HTTP:
            raise DataError(f"cannot download {url}: {err}; check ingest.mirror") from err
        raise FetchError(f"cannot download {url}: {err}; check ingest.mirror") from err
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"cannot download {url}: {err}; check ingest.mirror") from err
    tmp.replace(dest)


def read_source(
    source: str, mirror: str, endpoint_url: str | None, scratch: Path
) -> tuple[str, dict[str, Split]]:
    """The resolved source and the train and test splits it holds now, decoded.

    source is 'auto' (see resolve_source), a local folder, s3://bucket/prefix or an http(s)://
    base URL. A folder is read in place; remote files pass through scratch, removed afterwards.
    ingest and the `source` stamp both read the source here, so they see the same data.
    """
    resolved = resolve_source(source, mirror)
    try:
        if is_remote(resolved):
            fetch_raw(resolved, endpoint_url, scratch)
            folder = scratch
        else:
            folder = Path(resolved)
            if not folder.is_dir():
                raise DataError(f"ingest.source: {resolved} is not a folder, s3:// prefix or URL")
        return resolved, {name: read_split(folder, name, resolved) for name in IDX_FILES}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fingerprint(splits: Mapping[str, Split]) -> dict[str, Any]:
    """sha256 of the decoded data: per array (dtype, shape, little-endian bytes) and one over
    all of them. Gzipped or raw, renamed or re-uploaded, the same images and labels give the
    same fingerprint; so DVC and the flow re-run nothing unless the data itself changed."""
    arrays = {}
    for name, split in sorted(splits.items()):
        for role, array in (("images", split.images), ("labels", split.labels)):
            data = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
            arrays[f"{name}/{role}"] = {
                "dtype": str(array.dtype),
                "shape": list(array.shape),
                "sha256": hashlib.sha256(data.data).hexdigest(),
            }
    overall = hashlib.sha256(json.dumps(arrays, sort_keys=True).encode()).hexdigest()
    return {"sha256": overall, "arrays": arrays}


def write_raw(splits: Mapping[str, Split], folder: Path) -> None:
    """Write the splits as the four upstream IDX gz files, encoded one fixed way (no timestamp,
    fixed level), so the snapshot's bytes depend on the data only, not on how it arrived."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        images_name, labels_name = IDX_FILES[name]
        for file, array in ((images_name, split.images), (labels_name, split.labels)):
            # IDX: two zero bytes, the type code, ndim, then each dim as big-endian uint32
            header = bytes([0, 0, IDX_UBYTE, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            # labels were decoded from uint8 (Split widens them to int64): the cast is exact
            blob = header + np.ascontiguousarray(array, np.uint8).tobytes()
            (folder / f"{file}.gz").write_bytes(gzip.compress(blob, GZIP_LEVEL, mtime=0))


def stratified_indices(
    labels: np.ndarray, per_class: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Indices of up to per_class random samples of every class (all when None), in order."""
    if per_class is None:
        return np.arange(len(labels))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def split_train_val(
    train: Split, val_fraction: float, rng: np.random.Generator
) -> tuple[Split, Split]:
    """Hold out val_fraction of every class for validation (stratified, deterministic)."""
    val_idx = []
    for c in np.unique(train.labels):
        members = rng.permutation(np.flatnonzero(train.labels == c))
        val_idx.append(members[: round(len(members) * val_fraction)])
    is_val = np.zeros(len(train), bool)
    is_val[np.concatenate(val_idx)] = True
    return subset(train, np.flatnonzero(~is_val)), subset(train, np.flatnonzero(is_val))


def subset(split: Split, idx: np.ndarray) -> Split:
    return Split(split.images[idx], split.labels[idx])


def save_split(split: Split, path: Path) -> None:
    """safetensors: deterministic bytes (unchanged data → unchanged DVC hash) and no pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": np.ascontiguousarray(split.images), "labels": split.labels}, path)


def load_split(path: Path) -> Split:
    tensors = load_file(path)
    return Split(tensors["images"], tensors["labels"])


def image_hashes(images: np.ndarray) -> list[str]:
    """One digest per image, to count exact duplicates."""
    return [hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest() for img in images]
