"""The `source` stamp in two steps: the listing first (key, size, mtime or ETag), decoding only
when it changed. A run with nothing changed reads no image and writes the same data/source.json;
a re-encoded file is decoded and changes nothing; changed pixels change the stamp."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from examples.fmnist_imagefolder import write_imagefolder
from squeeze.config.files import load_params
from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json
from squeeze.data import imagefolder, sources
from stages import source as stage

PROJECT = Path(__file__).resolve().parents[2]
HOUR_NS = 3600 * 10**9


def stamp_params(source: Path | str, **changes: object) -> Params:
    """The project's params with ingest reading the ImageFolder at source (RGB 32x32)."""
    params = load_params(PROJECT)
    update = {"format": "imagefolder", "source": str(source), "classes": None, "channels": 3,
              "image_size": [32, 32], "expected_train": None, "expected_test": None}  # fmt: skip
    return params.model_copy(update={"ingest": params.ingest.model_copy(update=update | changes)})


def age(folder: Path) -> None:
    """Set every file's mtime an hour back: files written just now are not trusted by their
    listing (sources.RACY_NS), and the tests write theirs just before stamping."""
    past = time.time_ns() - HOUR_NS
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(past, past))


@pytest.fixture(scope="module")
def pngs(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/*.png and test/<class>/*.png: 4 + 2 RGB 32x32 PNGs per class."""
    return write_imagefolder(tmp_path_factory.mktemp("pngs"), 4, 2, rgb32=True)


@pytest.fixture
def folder(pngs: Path, tmp_path: Path) -> Path:
    """A writable copy of pngs, its files an hour old."""
    copy = Path(shutil.copytree(pngs, tmp_path / "folder"))
    age(copy)
    return copy


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every image decoded from now on (imagefolder.decode, spied)."""
    seen: list[Any] = []
    real: Callable[..., Any] = imagefolder.decode

    def spy(*args: Any) -> Any:
        seen.append(args[1:])
        return real(*args)

    monkeypatch.setattr("squeeze.data.imagefolder.decode", spy)
    return seen


def stamp(root: Path, params: Params) -> bytes:
    """Run the stage; data/source.json's bytes."""
    stage.run(root, params)
    return Workspace(root).source.read_bytes()


def test_a_second_stamp_of_an_unchanged_folder_reads_no_image(
    folder: Path, tmp_path: Path, decoded: list[Any]
) -> None:
    root, params = tmp_path / "ws", stamp_params(folder)
    first = stamp(root, params)
    assert len(decoded) == 60  # 10 classes x (4 + 2)
    decoded.clear()
    assert stamp(root, params) == first
    assert decoded == []
    kept = read_json(Workspace(root).state(stage.LISTING))
    assert kept["fingerprint"] == read_json(Workspace(root).source)


def test_a_re_encoded_png_is_decoded_and_leaves_the_stamp_byte_identical(
    folder: Path, tmp_path: Path, decoded: list[Any]
) -> None:
    root, params = tmp_path / "ws", stamp_params(folder)
    first = stamp(root, params)
    path = folder / "train" / "Bag" / sorted(os.listdir(folder / "train" / "Bag"))[0]
    before = path.read_bytes()
    with Image.open(io.BytesIO(before)) as image:
        image.save(path, compress_level=0)  # the same pixels, stored uncompressed
    assert path.read_bytes() != before
    age(folder)
    decoded.clear()
    assert stamp(root, params) == first
    assert len(decoded) == 60  # the listing changed: the whole source is read again
    decoded.clear()
    assert stamp(root, params) == first
    assert decoded == []


def test_changed_pixels_change_the_stamp(folder: Path, tmp_path: Path) -> None:
    root, params = tmp_path / "ws", stamp_params(folder)
    first = stamp(root, params)
    path = folder / "test" / "Sneaker" / sorted(os.listdir(folder / "test" / "Sneaker"))[0]
    pixels = np.asarray(Image.open(path)).copy()
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(path)
    age(folder)
    assert stamp(root, params) != first


def test_a_file_written_just_now_is_decoded_until_its_mtime_can_be_trusted(
    folder: Path, tmp_path: Path, decoded: list[Any]
) -> None:
    root, params = tmp_path / "ws", stamp_params(folder)
    first = stamp(root, params)
    bag = folder / "train" / "Bag"
    (bag / sorted(os.listdir(bag))[0]).touch()  # now: within the file system's mtime tick
    decoded.clear()
    assert stamp(root, params) == first
    assert stamp(root, params) == first
    assert len(decoded) == 2 * 60


def test_changed_ingest_params_decode_again(folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    rgb = stamp(root, stamp_params(folder))
    assert stamp(root, stamp_params(folder, channels=1)) != rgb


def test_a_second_stamp_of_idx_files_reads_none(
    fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = load_params(PROJECT)
    params = params.model_copy(
        update={"ingest": params.ingest.model_copy(update={"source": str(fmnist_dir)})}
    )
    first = stamp(tmp_path, params)

    def no_read(*args: Any) -> None:
        raise AssertionError(f"read_split{args}: the listing did not change")

    monkeypatch.setattr(sources, "read_split", no_read)
    assert stamp(tmp_path, params) == first
