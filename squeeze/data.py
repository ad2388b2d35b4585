"""The data: read a source (IDX files, or an ImageFolder via squeeze.imagefolder), parse it
strictly, split and subset it, and describe it (DataSpec, data/profile.json).

Every parse error names the file and the problem, because a bad download or a truncated copy
must stop the pipeline before anything trains on it. Images are uint8 (N, H, W, C) everywhere
after reading: IDX images get a trailing channel axis, and when ingest.channels or
ingest.image_size differ from what the source holds, images are converted by the same Pillow
path as an ImageFolder's (squeeze.imagefolder.to_pixels).

The whole dataset is held in memory (see check_memory): ingest reads a dataset that fits in
half of this machine's memory, and refuses a larger one before decoding it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file, save, save_file

from squeeze.errors import StageRefused

if TYPE_CHECKING:
    from squeeze.params import IngestParams

# split -> (images file, labels file), the names upstream uses (each may also end in .gz)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one Fashion-MNIST uses
GZIP_LEVEL = 6  # of the snapshot in data/raw: zlib's default; 9 takes twice as long for 1% less
# of an ImageFolder's snapshot (decoded arrays): 29% of the size at level 1 and at level 6 alike
# (Fashion-MNIST as RGB 32x32), in a fifth of the time
ARRAY_GZIP_LEVEL = 1
STATS_CHUNK = 2**22  # pixel values per step of DataSpec.measure's float64 sums (32 MiB)
TRANSIENT_HTTP = {408, 425, 429}  # client-error statuses that mean "not now" rather than "no"
# Memory ingest needs per image, as a multiple of its H*W*C pixel bytes: the source's arrays, the
# stratified subsets, the train/val split and the copy safetensors makes while saving a split.
COPIES_IN_MEMORY = 4
PER_IMAGE_OVERHEAD = 1024  # bytes: its path, list entries and GX's row of statistics


class DataError(StageRefused):
    """A raw data file is missing, corrupt, truncated or inconsistent."""


class FetchError(DataError):
    """The source could not be read (network, S3): worth retrying, unlike bad data."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W, C) uint8, C = 1 or 3
    labels: np.ndarray  # (N,) int64, class k is DataSpec.classes[k]

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
        shape = {"height": self.height, "width": self.width, "channels": self.channels}
        return {"classes": list(self.classes), **shape, "mean": list(self.mean),
                "std": list(self.std)}  # fmt: skip

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
        over chunks of STATS_CHUNK pixel values; rounded to 6 decimals, so that the profile's
        bytes are stable)."""
        n, height, width, channels = train.images.shape
        total = np.zeros(channels)
        squares = np.zeros(channels)
        step = max(1, STATS_CHUNK // (height * width * channels))
        for i in range(0, n, step):
            chunk = train.images[i : i + step].reshape(-1, channels).astype(np.float64)
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
        raise DataError(
            f"{path} is missing: run the ingest stage first (dvc repro ingest)"
        ) from None


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


@dataclass(frozen=True)
class Source:
    """The data ingest.source holds now, decoded to ingest.channels and ingest.image_size: what
    ingest splits and snapshots, and what the `source` stamp fingerprints."""

    location: str  # the source read, 'auto' resolved
    format: str  # ingest.format: idx or imagefolder
    splits: dict[str, Split]  # "train" and "test"; or "all": one folder of class folders
    classes: tuple[str, ...] | None = None  # imagefolder: the class folders' names, sorted
    converted: int = 0  # images whose mode or size was changed to the configured ones
    skipped: tuple[str, ...] = field(default=())  # files left out (on_bad_image: skip): "path: why"
    ignored: tuple[str, ...] = field(default=())  # imagefolder: files outside the class folders


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


def read_source(cfg: IngestParams, scratch: Path) -> Source:
    """The data at cfg.source, decoded and converted to cfg.channels and cfg.image_size.

    idx: cfg.source is 'auto' (see resolve_source), a local folder, s3://bucket/prefix or an
    http(s):// base URL; a folder is read in place, remote files pass through scratch, removed
    afterwards. imagefolder: a local folder or s3:// prefix (squeeze.imagefolder). ingest and
    the `source` stamp both read the source here, so they see the same data.
    """
    from squeeze import imagefolder  # it imports this module

    if cfg.format == "imagefolder":
        return imagefolder.read_source(cfg)
    resolved = resolve_source(cfg.source, cfg.mirror)
    try:
        if is_remote(resolved):
            fetch_raw(resolved, cfg.endpoint_url, scratch)
            folder = scratch
        else:
            folder = Path(resolved)
            if not folder.is_dir():
                raise DataError(f"ingest.source: {resolved} is not a folder, s3:// prefix or URL")
        splits = {name: read_split(folder, name, resolved) for name in IDX_FILES}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    height, width = cfg.image_size
    check_memory(sum(map(len, splits.values())), height, width, cfg.channels, resolved)
    converted = 0
    for name, split in splits.items():
        splits[name], count = imagefolder.conform(split, cfg.channels, (height, width), cfg.resize)
        converted += count
    return Source(resolved, "idx", splits, converted=converted)


def memory_limit() -> int:
    """Bytes ingest may hold: half of this machine's physical memory, or half of its
    container's limit (cgroup v2 memory.max) when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        cap = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        cap = "max"
    if cap.isdigit():
        total = min(total, int(cap))
    return total // 2


def bytes_per_image(height: int, width: int, channels: int) -> int:
    """Rough memory ingest needs per image of the configured size."""
    return height * width * channels * COPIES_IN_MEMORY + PER_IMAGE_OVERHEAD


def check_memory(count: int, height: int, width: int, channels: int, where: str) -> None:
    """Refuse, before decoding, a dataset that would not fit in memory_limit(): squeeze holds
    the whole dataset in memory (a dataset larger than that is out of scope for now)."""
    per_image = bytes_per_image(height, width, channels)
    need, limit = count * per_image, memory_limit()
    if need > limit:
        raise DataError(
            f"{where}: {count} images of {height}x{width}x{channels} need about "
            f"{need / 2**30:.1f} GiB in memory (~{per_image} bytes per image), more than "
            f"ingest's limit of {limit / 2**30:.1f} GiB (half of this machine's memory): squeeze "
            "holds the whole dataset in memory; use a smaller ingest.image_size, a source with "
            "fewer images, or a machine with more memory"
        )


def fingerprint(
    splits: Mapping[str, Split], classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """sha256 of the decoded data: per array (dtype, shape, little-endian bytes) and one over
    all of them and the class names (an ImageFolder's folder names; None for IDX, whose names
    are params). Gzipped or raw, re-encoded, renamed or re-uploaded, the same images and labels
    give the same fingerprint; so DVC and the flow re-run nothing unless the data changed."""
    arrays = {}
    for name, split in sorted(splits.items()):
        for role, array in (("images", split.images), ("labels", split.labels)):
            data = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
            arrays[f"{name}/{role}"] = {
                "dtype": str(array.dtype),
                "shape": list(array.shape),
                "sha256": hashlib.sha256(data.data).hexdigest(),
            }
    named = {} if classes is None else {"classes": list(classes)}
    overall = hashlib.sha256(json.dumps(arrays | named, sort_keys=True).encode()).hexdigest()
    return {"sha256": overall, "arrays": arrays} | named


def write_snapshot(source: Source, folder: Path) -> None:
    """data/raw: the source's decoded data, encoded one fixed way, so the snapshot's bytes
    depend on the data only, not on how it arrived. IDX: the IDX gz files (write_raw);
    ImageFolder: <split>.safetensors.gz per split (train and test, or all; gzip without a
    timestamp around save_split's file) and classes.json, the class names of labels 0..K-1."""
    if source.format == "idx":
        write_raw(source.splits, folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in source.splits.items():
        blob = gzip.compress(save(tensors(split)), ARRAY_GZIP_LEVEL, mtime=0)
        (folder / f"{name}.safetensors.gz").write_bytes(blob)
    (folder / "classes.json").write_text(json.dumps(list(source.classes or ()), indent=2) + "\n")


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


def class_names(source: Source, configured: list[str] | None) -> tuple[str, ...]:
    """The names of labels 0..K-1: an ImageFolder's folder names; for IDX, ingest.classes, or
    "0".."K-1" when that is null, K being one more than the largest label the source holds."""
    if source.classes is not None:
        return source.classes
    k = 1 + max((int(s.labels.max()) for s in source.splits.values() if len(s)), default=-1)
    if configured is None:
        return tuple(str(label) for label in range(k))
    if len(configured) < k:
        raise DataError(
            f"ingest.classes names {len(configured)} classes but {source.location} holds labels "
            f"up to {k - 1}: name all {k} (label k is ingest.classes[k]), or set it to null"
        )
    twice = sorted({name for name in configured if configured.count(name) > 1})
    if twice:
        raise DataError(f"ingest.classes: {', '.join(twice)} named more than once")
    return tuple(configured)


def train_test(
    source: Source, test_fraction: float | None, rng: np.random.Generator
) -> dict[str, Split]:
    """The source's train and test splits: as it holds them, or, for one folder of class
    folders, with test_fraction of every class held out as test (stratified, seeded)."""
    if "all" in source.splits:
        if test_fraction is None:
            raise DataError(
                f"{source.location} holds class folders but no train/ and test/ folders: set "
                "ingest.test_fraction (e.g. 0.2) to hold out a test split, or sort the images "
                "into train/<class>/ and test/<class>/"
            )
        train, test = hold_out(source.splits["all"], test_fraction, rng)
        return {"train": train, "test": test}
    if test_fraction is not None:
        raise DataError(
            f"ingest.test_fraction is {test_fraction} but {source.location} holds its own test "
            "split (test/): set ingest.test_fraction to null"
        )
    return {"train": source.splits["train"], "test": source.splits["test"]}


def stratified_indices(
    labels: np.ndarray, per_class: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Indices of up to per_class random samples of every class (all when None), in order."""
    if per_class is None:
        return np.arange(len(labels))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def hold_out(split: Split, fraction: float, rng: np.random.Generator) -> tuple[Split, Split]:
    """(the rest, fraction of every class held out): stratified, deterministic. Used for the
    validation split, and for the test split of a source that holds none."""
    held = []
    for c in np.unique(split.labels):
        members = rng.permutation(np.flatnonzero(split.labels == c))
        held.append(members[: round(len(members) * fraction)])
    is_held = np.zeros(len(split), bool)
    is_held[np.concatenate(held)] = True
    return subset(split, np.flatnonzero(~is_held)), subset(split, np.flatnonzero(is_held))


def subset(split: Split, idx: np.ndarray) -> Split:
    return Split(split.images[idx], split.labels[idx])


def tensors(split: Split) -> dict[str, np.ndarray]:
    """The split as safetensors stores it."""
    return {"images": np.ascontiguousarray(split.images), "labels": split.labels}


def save_split(split: Split, path: Path) -> None:
    """safetensors: deterministic bytes (unchanged data → unchanged DVC hash) and no pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors(split), path)


def load_split(path: Path) -> Split:
    tensors = load_file(path)
    return Split(tensors["images"], tensors["labels"])


def image_hashes(images: np.ndarray) -> list[str]:
    """One digest per image, to count exact duplicates."""
    return [hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest() for img in images]
