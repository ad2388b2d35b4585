"""Read an ImageFolder dataset (the layout torchvision and most datasets use) into (N, H, W, C)
uint8 arrays, from a local folder or an s3:// prefix.

Layouts:
- `train/<class>/*` and `test/<class>/*`: the source's own test split; or
- `<class>/*` (one folder of class folders): ingest holds out the seeded, stratified
  ingest.test_fraction of every class as the test split.

Class names are the class folders' names, sorted (label k is the k-th); train/ and test/ must
hold the same class folders. Files may sit in subfolders of a class folder. Names starting with
"." (.DS_Store, ._x.png, .ipynb_checkpoints/) are not data and are passed over; so are files
beside the class folders (a README at the top, a file directly in train/), which are listed in
the ingest report as ignored.

Every other file is decoded with Pillow, whatever its extension says: a file that is not a
readable image (not an image, corrupt, truncated) stops ingest naming it, or with
ingest.on_bad_image: skip is left out and counted. Each image is converted to ingest.channels
(mode L or RGB, Pillow's conversions; an alpha channel is dropped, as torchvision's loader
does) and to ingest.image_size [H, W] by ingest.resize:
- exact: resized to H x W, the aspect ratio not kept;
- shorter_side_crop: scaled, keeping its aspect ratio, by the least factor that makes it cover
  H x W (for a square image size: its shorter side becomes the target side), then the centre
  H x W is cropped (Pillow's ImageOps.fit).
Both resample bilinearly (Pillow's, antialiased when shrinking). Images whose mode or size
changed are counted as converted. IDX images of another size or channel count go through the
same path (conform).

The files are read in sorted order of their paths, so the same files give byte-identical arrays
wherever they are stored. The dataset is held in memory: check_memory refuses, before any
decoding, one that would not fit (squeeze.data.memory.bytes_per_image: about 4 x H x W x C bytes
per image plus 1 KiB, against half of the machine's memory).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from squeeze.config.sections import IngestParams
from squeeze.data.memory import check_memory
from squeeze.data.spec import DataError, FetchError, Source, Split
from squeeze.registry.store import Stat, Store, StoreError, Unavailable, open_store

MODES = {1: "L", 3: "RGB"}  # ingest.channels -> the Pillow mode images are converted to
RESAMPLE = Image.Resampling.BILINEAR
SPLIT_FOLDERS = ("train", "test")
READERS = 8  # files fetched and decoded at once: S3 GETs wait on the network, decoding on zlib


class BadImage(Exception):
    """A file Pillow cannot decode; its message says why (no memory addresses: reports are
    compared byte for byte)."""


def to_pixels(
    image: Image.Image, channels: int, size: tuple[int, int], resize: str
) -> tuple[np.ndarray, bool]:
    """One image as (H, W, C) uint8 pixels of the configured channels and size [H, W], and
    whether its mode or size had to change (see the module docstring for the resize rules)."""
    height, width = size
    changed = image.mode != MODES[channels]
    if changed:
        image = image.convert(MODES[channels])
    if image.size != (width, height):  # Pillow sizes are (width, height)
        changed = True
        if resize == "exact":
            image = image.resize((width, height), RESAMPLE)
        else:
            image = ImageOps.fit(image, (width, height), RESAMPLE)
    return np.asarray(image, np.uint8).reshape(height, width, channels), changed


def decode(
    blob: bytes, channels: int, size: tuple[int, int], resize: str
) -> tuple[np.ndarray, bool]:
    """Decode one file's bytes with Pillow (the format from its content, never its name) into
    (H, W, C) pixels; BadImage when it is not a readable image."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()  # decode now: a truncated or corrupt file fails here, not later
            return to_pixels(image, channels, size, resize)
    except UnidentifiedImageError:
        raise BadImage("not an image file Pillow can read") from None
    except MemoryError:
        raise
    except Exception as err:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ...
        raise BadImage(f"corrupt image ({type(err).__name__}: {err})") from None


def conform(split: Split, channels: int, size: tuple[int, int], resize: str) -> tuple[Split, int]:
    """split with its images converted to channels and size [H, W] (as an ImageFolder's), and
    how many were converted: all of them, or none when they already have that shape."""
    n, height, width, have = split.images.shape
    if (height, width, have) == (*size, channels):
        return split, 0
    images = np.empty((n, *size, channels), np.uint8)
    mode = MODES[have]
    for i, pixels in enumerate(split.images):
        image = Image.fromarray(pixels[..., 0] if have == 1 else pixels, mode)
        images[i] = to_pixels(image, channels, size, resize)[0]
    return Split(images, split.labels), n


@dataclass(frozen=True)
class Listing:
    """The image files of an ImageFolder source, split by split, before any is read."""

    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]  # split ("train", "test" or "all") -> (key, label)
    ignored: tuple[str, ...]  # files outside the class folders


def list_entries(location: str, store: Store | None) -> tuple[list[str], set[str]]:
    """The source's file keys (sorted, '/'-separated, relative to it) and its folders (local
    folders, or S3's zero-byte "folder/" markers): an empty class folder has no file keys."""
    if store is not None:
        keys = store.list()
        folders = {k.rstrip("/") for k in keys if k.endswith("/")}
        return [k for k in keys if not k.endswith("/")], folders
    root = Path(location)
    if not root.is_dir():
        raise DataError(f"ingest.source: {location} is not a folder or s3:// prefix")
    files, folders = [], set()
    # a linked folder is followed (a class folder may be a link to where the images are) but
    # never twice down one path: a link back to a folder above it would otherwise never end
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        above = {os.path.realpath(p) for p in (dirpath, *Path(dirpath).parents)
                 if Path(p).is_relative_to(root)}  # fmt: skip
        looped = [d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) in above]
        if looped:
            raise DataError(
                f"ingest.source: {os.path.join(dirpath, looped[0])} links back to a folder above "
                "it (a symlink loop): remove the link, or point ingest.source below it"
            )
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        folders.update(f"{prefix}{d}" for d in dirnames)
        files.extend(f"{prefix}{f}" for f in filenames)
    return sorted(files), folders


def list_stats(cfg: IngestParams) -> list[Stat] | None:
    """Every file of the source with its size and tag, and every folder (size 0, no tag), read
    without opening a file: what the `source` stamp compares before it decodes anything.

    A local folder is walked as list_entries walks it (linked folders followed) and each file
    stat'ed through its links (tag: its mtime in ns); an s3:// prefix is listed with sizes and
    ETags (Store.list_stats, one request per 1000 keys). None for a source read_source refuses,
    so that the stamp reads it and reports why.
    """
    location = cfg.source.rstrip("/")
    if cfg.source == "auto" or location.startswith(("http://", "https://")):
        return None
    if location.startswith("s3://"):
        try:
            return open_store(location, cfg.endpoint_url).list_stats()
        except Unavailable as err:
            raise FetchError(f"cannot list {location}: {err}") from err
    keys, folders = list_entries(location, None)
    stats = [Stat(f"{folder}/", 0, "") for folder in sorted(folders)]
    for key in keys:
        try:
            found = os.stat(os.path.join(location, key))  # not Path: 3x faster on 70k files
        except OSError as err:
            raise DataError(f"cannot read {location}/{key}: {err}") from err
        stats.append(Stat(key, found.st_size, str(found.st_mtime_ns)))
    return stats


def find_layout(location: str, keys: list[str], folders: set[str]) -> Listing:
    """Which layout the source has, its classes and the files of every split, sorted.

    DataError names what is wrong: a split folder without the other, a folder beside train/
    and test/, a class folder missing from one split or holding no file, fewer than 2 classes.
    """
    hidden = {k for k in {*keys, *folders} if any(p.startswith(".") for p in k.split("/"))}
    keys = [k for k in keys if k not in hidden]
    folders = {f for f in folders if f not in hidden}
    for key in keys:  # every folder that holds a file, however deep, is a folder too
        parts = key.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    splits = split_folders(location, {f for f in folders if "/" not in f})
    classes = class_folders(location, folders, splits)
    files, ignored = assign_files(location, keys, classes, splits)
    return Listing(classes, files, ignored)


def split_folders(location: str, top: set[str]) -> list[str]:
    """["train", "test"] when the source's top folders are train/ and test/, ["all"] when
    they are class folders; DataError for one of train/ and test/ only, or a third folder."""
    has = [name for name in SPLIT_FOLDERS if name in top]
    if len(has) == 1:
        other = next(name for name in SPLIT_FOLDERS if name not in has)
        raise DataError(
            f"{location} has {has[0]}/ but no {other}/: the split layout needs train/<class>/ "
            "and test/<class>/ (or put the class folders at the top and set ingest.test_fraction)"
        )
    if has and top - set(SPLIT_FOLDERS):
        extra = sorted(top - set(SPLIT_FOLDERS))[0]
        raise DataError(
            f"{location}/{extra}/: a folder beside train/ and test/; the split layout is "
            "train/<class>/ and test/<class>/ (ingest holds the validation split out of train/, "
            "ingest.val_fraction): move it away or merge it into train/"
        )
    return list(SPLIT_FOLDERS) if has else ["all"]


def class_folders(location: str, folders: set[str], splits: list[str]) -> tuple[str, ...]:
    """The class names, sorted: the same class folders in train/ and test/, at least 2."""
    parts = [f.split("/") for f in folders]
    if splits == ["all"]:
        found = {"all": {p[0] for p in parts}}
    else:
        found = {split: {p[1] for p in parts if p[0] == split and len(p) > 1} for split in splits}
    if splits == list(SPLIT_FOLDERS):
        for split, other in (("train", "test"), ("test", "train")):
            if found[split] - found[other]:
                name = sorted(found[split] - found[other])[0]
                raise DataError(
                    f"{location}/{other}/{name}/ is missing but {split}/{name}/ exists: every "
                    "class needs a folder in both train/ and test/"
                )
    classes = tuple(sorted(found[splits[0]]))
    if len(classes) < 2:
        raise DataError(
            f"{location}: {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            "an ImageFolder dataset needs one folder per class, at least 2"
        )
    return classes


def assign_files(
    location: str, keys: list[str], classes: tuple[str, ...], splits: list[str]
) -> tuple[dict[str, list[tuple[str, int]]], tuple[str, ...]]:
    """(split -> [(key, label)] by class then path, the files outside any class folder);
    DataError for a class folder that holds no file."""
    label = {name: k for k, name in enumerate(classes)}
    files: dict[str, list[tuple[str, int]]] = {split: [] for split in splits}
    ignored = []
    for key in keys:
        parts = key.split("/")
        split, rest = ("all", parts) if splits == ["all"] else (parts[0], parts[1:])
        if split not in files or len(rest) < 2:
            ignored.append(key)  # at the top, or directly in train/ or test/
            continue
        files[split].append((key, label[rest[0]]))
    for split, members in files.items():
        counts = np.bincount(np.array([k for _, k in members], np.int64), minlength=len(classes))
        for name in (classes[k] for k in np.flatnonzero(counts == 0)):
            folder = name if split == "all" else f"{split}/{name}"
            raise DataError(f"{location}/{folder}/ holds no files: add its images or remove it")
        members.sort(key=lambda item: (item[1], item[0]))
    return files, tuple(ignored)


def read_source(cfg: IngestParams) -> Source:
    """The ImageFolder at cfg.source (a local folder or s3://bucket/prefix) as (N, H, W, C)
    uint8 splits of cfg.channels and cfg.image_size. See the module docstring."""
    location = cfg.source.rstrip("/")
    if cfg.source == "auto" or location.startswith(("http://", "https://")):
        raise DataError(
            f"ingest.source: {cfg.source} for format imagefolder; give a local folder or an "
            "s3://bucket/prefix (auto and http(s) URLs are for idx files)"
        )
    store = None
    if location.startswith("s3://"):
        store = open_store(location, cfg.endpoint_url)
    listing = find_layout(location, *_listed(location, store))
    height, width = cfg.image_size
    total = sum(len(members) for members in listing.files.values())
    check_memory(total, height, width, cfg.channels, location)
    splits, converted, skipped = {}, 0, []
    for split, members in listing.files.items():
        splits[split], n_converted, bad = read_images(location, store, members, cfg)
        converted += n_converted
        skipped += bad
    for split, data in splits.items():  # on_bad_image skip may have emptied a class
        counts = np.bincount(data.labels, minlength=len(listing.classes))
        for k in np.flatnonzero(counts == 0):
            folder = listing.classes[k] if split == "all" else f"{split}/{listing.classes[k]}"
            raise DataError(f"{location}/{folder}/ holds no readable image (all skipped)")
    return Source(
        location, "imagefolder", splits, listing.classes, converted, tuple(skipped), listing.ignored
    )


def _listed(location: str, store: Store | None) -> tuple[list[str], set[str]]:
    """list_entries, S3's transient failures as FetchError (ingest retries them)."""

    try:
        return list_entries(location, store)
    except Unavailable as err:
        raise FetchError(f"cannot list {location}: {err}") from err


def read_images(
    location: str, store: Store | None, members: list[tuple[str, int]], cfg: IngestParams
) -> tuple[Split, int, list[str]]:
    """Fetch and decode the files of one split in order: the split, how many images were
    converted, and the files skipped ("key: why", on_bad_image skip; fail raises DataError)."""

    size = (cfg.image_size[0], cfg.image_size[1])

    def load(key: str) -> tuple[np.ndarray, bool] | str:
        try:
            blob = store.get(key) if store else (Path(location) / key).read_bytes()
        except Unavailable as err:
            raise FetchError(f"cannot fetch {location}/{key}: {err}") from err
        except (StoreError, OSError) as err:
            raise DataError(f"cannot read {location}/{key}: {err}") from err
        try:
            return decode(blob, cfg.channels, size, cfg.resize)
        except BadImage as err:
            return str(err)

    images = np.empty((len(members), *size, cfg.channels), np.uint8)
    keep = np.ones(len(members), bool)
    converted, skipped = 0, []
    pool = ThreadPoolExecutor(READERS)
    try:
        results = pool.map(load, [key for key, _ in members])  # in order
        for i, ((key, _), result) in enumerate(zip(members, results, strict=True)):
            if isinstance(result, str):
                if cfg.on_bad_image == "fail":
                    raise DataError(
                        f"{location}/{key}: {result}; fix or remove the file, or set "
                        "ingest.on_bad_image: skip to leave unreadable files out"
                    )
                keep[i] = False
                skipped.append(f"{key}: {result}")
                continue
            images[i], changed = result
            converted += changed
    finally:
        pool.shutdown(cancel_futures=True)  # a failure stops the files not yet started
    labels = np.array([label for _, label in members], np.int64)
    return Split(images[keep], labels[keep]), converted, skipped
