"""Where the data comes from: a local folder, s3://bucket/prefix or an http(s):// base URL of IDX
files, or an ImageFolder (squeeze.data.imagefolder); its fingerprint (the `source` stamp) and the
snapshot ingest keeps of it in data/raw.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from safetensors.numpy import save

from squeeze.config.sections import IngestParams
from squeeze.data import imagefolder
from squeeze.data.idx import IDX_FILES, raw_names, read_split, write_raw
from squeeze.data.memory import check_memory
from squeeze.data.spec import DataError, FetchError, Source, Split
from squeeze.data.splits import tensors
from squeeze.registry.store import Stat, Unavailable, open_store

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist


# of an ImageFolder's snapshot (decoded arrays): 29% of the size at level 1 and at level 6 alike
# (Fashion-MNIST as RGB 32x32), in a fifth of the time
ARRAY_GZIP_LEVEL = 1


TRANSIENT_HTTP = {408, 425, 429}  # client-error statuses that mean "not now" rather than "no"

# a local file written this recently may be rewritten within the same mtime tick (a second or two
# on some file systems) at the same size: its listing is not trusted yet (git's "racily clean")
RACY_NS = 2 * 10**9
HEAD_TIMEOUT_S = 10


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


def listing_digest(cfg: IngestParams) -> str | None:
    """sha256 of what the source holds, listed without reading an image, and of the settings
    that decode it (the ingest params, Pillow's version): while it stays the same, so does the
    source's fingerprint. The listing is every file's key, size and tag (list_stats).

    None when the source gives no listing to trust, and the `source` stamp then decodes: an
    http(s) mirror that answers HEAD with neither ETag nor Last-Modified (or not at all), a
    local file changed in the last RACY_NS, a source read_source refuses (it says why).
    """
    stats = imagefolder.list_stats(cfg) if cfg.format == "imagefolder" else idx_stats(cfg)
    if stats is None:
        return None
    if not is_remote(resolve_source(cfg.source, cfg.mirror)):
        recent = time.time_ns() - RACY_NS
        if any(stat.tag and int(stat.tag) > recent for stat in stats):
            return None
    blob = {"ingest": cfg.model_dump(mode="json"), "pillow": PIL.__version__,
            "files": [list(stat) for stat in stats]}  # fmt: skip
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def idx_stats(cfg: IngestParams) -> list[Stat] | None:
    """The four IDX files' sizes and tags (the stamp's listing): a local folder's by stat
    (mtime in ns), an s3:// prefix's by listing it (ETags), a mirror's by HEAD requests."""
    resolved = resolve_source(cfg.source, cfg.mirror)
    if resolved.startswith(("http://", "https://")):
        return head_stats(resolved.rstrip("/"))
    if resolved.startswith("s3://"):
        try:
            return open_store(resolved, cfg.endpoint_url).list_stats()
        except Unavailable as err:
            raise FetchError(f"cannot list {resolved}: {err}") from err
    stats = []
    for name in raw_names():
        for key in (f"{name}.gz", name):
            path = Path(resolved) / key
            if path.is_file():
                found = path.stat()
                stats.append(Stat(key, found.st_size, str(found.st_mtime_ns)))
    return stats


def head_stats(base: str) -> list[Stat] | None:
    """The mirror's four files by HEAD requests (ETag, else Last-Modified; Content-Length); None
    when one gives neither or cannot be asked: the files are then downloaded, which says why."""
    stats = []
    for name in raw_names():
        url = f"{base}/{name}.gz"
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=HEAD_TIMEOUT_S) as response:
                headers = response.headers
        except OSError:  # HTTPError and URLError too
            return None
        tag = headers.get("ETag") or headers.get("Last-Modified")
        if not tag:
            return None
        stats.append(Stat(name, int(headers.get("Content-Length") or -1), tag))
    return stats


def read_source(cfg: IngestParams, scratch: Path) -> Source:
    """The data at cfg.source, decoded and converted to cfg.channels and cfg.image_size.

    idx: cfg.source is 'auto' (see resolve_source), a local folder, s3://bucket/prefix or an
    http(s):// base URL; a folder is read in place, remote files pass through scratch, removed
    afterwards. imagefolder: a local folder or s3:// prefix (squeeze.data.imagefolder). ingest and
    the `source` stamp both read the source here, so they see the same data.
    """
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
