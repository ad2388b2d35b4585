"""Reading an ImageFolder: real Fashion-MNIST images written as PNG files
(examples/fmnist_imagefolder.py), both layouts, conversion of modes and sizes, and bad data: a
corrupt PNG, a non-image file, a class folder missing from test, an empty class folder, a
dataset too large for memory."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from examples.fmnist_imagefolder import folder_names, to_png_image, write_imagefolder
from squeeze.config.files import load_params
from squeeze.config.sections import IngestParams
from squeeze.data import memory
from squeeze.data.idx import read_split
from squeeze.data.imagefolder import to_pixels
from squeeze.data.sources import fingerprint, read_source
from squeeze.data.spec import DataError, Source
from squeeze.data.splits import train_test

PROJECT = Path(__file__).resolve().parents[2]
TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 10


def params(source: Path | str, **changes: object) -> IngestParams:
    """The project's ingest params reading an ImageFolder (RGB 32x32 unless changed)."""
    update = {"format": "imagefolder", "source": str(source), "classes": None, "channels": 3,
              "image_size": [32, 32], "expected_train": None, "expected_test": None}  # fmt: skip
    return load_params(PROJECT).ingest.model_copy(update=update | changes)


def read(source: Path | str, **changes: object) -> Source:
    return read_source(params(source, **changes), Path("/nonexistent/scratch"))


@pytest.fixture(scope="module")
def rgb32(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/*.png and test/<class>/*.png: 20 + 10 RGB 32x32 PNGs per class."""
    return write_imagefolder(
        tmp_path_factory.mktemp("rgb32"), TRAIN_PER_CLASS, TEST_PER_CLASS, rgb32=True
    )


@pytest.fixture(scope="module")
def gray28(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same layout with the original grayscale 28x28 images."""
    return write_imagefolder(tmp_path_factory.mktemp("gray28"), TRAIN_PER_CLASS, TEST_PER_CLASS)


@pytest.fixture
def folder(rgb32: Path, tmp_path: Path) -> Path:
    """A writable copy of rgb32."""
    return Path(shutil.copytree(rgb32, tmp_path / "folder"))


def first_png(folder: Path, split: str = "train", name: str = "Bag") -> Path:
    return sorted((folder / split / name).iterdir())[0]


def test_the_split_layout_reads_real_pngs(rgb32: Path, fmnist_dir: Path) -> None:
    source = read(rgb32)
    assert source.classes == tuple(sorted(folder_names())) and source.format == "imagefolder"
    assert set(source.splits) == {"train", "test"} and source.converted == 0
    train = source.splits["train"]
    assert train.images.shape == (200, 32, 32, 3) and train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == [TRAIN_PER_CLASS] * 10
    # in order: class by class (sorted names), file by file; each the PNG's own pixels
    bag = source.classes.index("Bag")
    assert (train.labels == np.repeat(np.arange(10), TRAIN_PER_CLASS)).all()
    path = first_png(rgb32)
    idx = read_split(fmnist_dir, "train")
    expected = np.asarray(to_png_image(idx.images[int(path.stem)], rgb32=True))
    np.testing.assert_array_equal(train.images[bag * TRAIN_PER_CLASS], expected)


def test_grayscale_pngs_read_back_as_the_idx_pixels(gray28: Path, fmnist_dir: Path) -> None:
    source = read(gray28, channels=1, image_size=[28, 28])
    assert source.converted == 0
    test = source.splits["test"]
    assert test.images.shape == (100, 28, 28, 1)
    files = sorted((gray28 / "test" / "Trouser").iterdir())
    k = source.classes.index("Trouser")
    idx = read_split(fmnist_dir, "test")
    np.testing.assert_array_equal(
        test.images[test.labels == k], idx.images[[int(f.stem) for f in files]]
    )
    assert (idx.labels[[int(f.stem) for f in files]] == folder_names().index("Trouser")).all()


def test_every_image_of_another_mode_or_size_is_converted(rgb32: Path) -> None:
    source = read(rgb32, channels=1, image_size=[28, 28])
    assert source.splits["train"].images.shape == (200, 28, 28, 1)
    assert source.converted == 300


def test_mixed_modes_and_sizes_are_converted_and_counted(folder: Path) -> None:
    """Among RGB 32x32 PNGs: a grey one, an RGBA 40x30 one, a palette one, and a JPEG named
    .png (its content decides, not its name; RGB 32x32, so not converted)."""
    bag = folder / "train" / "Bag"
    grey = Image.open(first_png(folder)).convert("L")
    grey.save(bag / "grey.png")
    Image.open(first_png(folder)).convert("RGBA").resize((40, 30)).save(bag / "rgba.png")
    Image.open(first_png(folder)).convert("P").save(bag / "palette.png")
    Image.open(first_png(folder)).save(bag / "photo.png", format="JPEG")
    source = read(folder)
    assert source.converted == 3
    train = source.splits["train"]
    assert len(train) == 204 and train.images.shape[1:] == (32, 32, 3)
    # the grey one became RGB with three equal channels
    pixels = to_pixels(grey, 3, (32, 32), "shorter_side_crop")[0]
    assert (pixels[..., 0] == pixels[..., 1]).all()
    assert any((image == pixels).all() for image in train.images)


def test_a_corrupt_png_stops_ingest_naming_it_or_is_skipped_and_counted(folder: Path) -> None:
    path = first_png(folder, "test", "Coat")
    path.write_bytes(path.read_bytes()[:60])  # truncated inside the image data
    with pytest.raises(DataError, match=f"{folder}/test/Coat/{path.name}: corrupt image") as err:
        read(folder)
    assert "ingest.on_bad_image: skip" in str(err.value)
    source = read(folder, on_bad_image="skip")
    ((skipped),) = source.skipped
    assert skipped.startswith(f"test/Coat/{path.name}: corrupt image")
    assert f"{folder}/{skipped};" in str(err.value)  # the same reason
    assert len(source.splits["test"]) == 99 and len(source.splits["train"]) == 200


def test_a_non_image_file_stops_ingest_naming_it_or_is_skipped(folder: Path) -> None:
    (folder / "train" / "Dress" / "notes.txt").write_text("not a picture")
    (folder / "train" / "Dress" / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n but no more")
    # files are read in sorted order: fake.png is named first
    with pytest.raises(DataError, match=f"{folder}/train/Dress/fake.png: not an image file"):
        read(folder)
    (folder / "train" / "Dress" / "fake.png").unlink()
    with pytest.raises(
        DataError, match=f"{folder}/train/Dress/notes.txt: not an image file Pillow can read"
    ):
        read(folder)
    source = read(folder, on_bad_image="skip")
    assert source.skipped == ("train/Dress/notes.txt: not an image file Pillow can read",)
    assert len(source.splits["train"]) == 200


def test_a_class_folder_missing_from_test_is_named(folder: Path) -> None:
    shutil.rmtree(folder / "test" / "Sandal")
    with pytest.raises(DataError, match=f"{folder}/test/Sandal/ is missing but train/Sandal/"):
        read(folder)


def test_an_empty_class_folder_is_named(folder: Path) -> None:
    (folder / "train" / "Umbrella").mkdir()
    (folder / "test" / "Umbrella").mkdir()
    with pytest.raises(DataError, match=f"{folder}/train/Umbrella/ holds no files"):
        read(folder)


def test_a_class_whose_every_file_is_skipped_is_named(folder: Path) -> None:
    for path in (folder / "test" / "Shirt").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"{folder}/test/Shirt/ holds no readable image"):
        read(folder, on_bad_image="skip")


def test_a_layout_that_is_neither_is_refused(folder: Path) -> None:
    (folder / "val" / "Bag").mkdir(parents=True)
    shutil.copy(first_png(folder), folder / "val" / "Bag" / "x.png")
    with pytest.raises(DataError, match=f"{folder}/val/: a folder beside train/ and test/"):
        read(folder)
    shutil.rmtree(folder / "val")
    shutil.rmtree(folder / "test")
    with pytest.raises(DataError, match="has train/ but no test/"):
        read(folder)


def test_a_linked_class_folder_is_read_and_a_symlink_loop_is_refused(
    folder: Path, tmp_path: Path
) -> None:
    before = read(folder).splits["train"]
    bag = folder / "train" / "Bag"
    bag.rename(tmp_path / "bag-elsewhere")
    bag.symlink_to(tmp_path / "bag-elsewhere", target_is_directory=True)
    np.testing.assert_array_equal(read(folder).splits["train"].images, before.images)
    (folder / "train" / "Coat" / "again").symlink_to(folder / "train", target_is_directory=True)
    with pytest.raises(DataError, match=r"train/Coat/again links back to a folder above it"):
        # before: os.walk(followlinks=True) went round the loop until the OS refused (ELOOP),
        # listing the same files under ~40 paths; two loops make that walk exponential
        read(folder)


def test_one_class_is_not_a_dataset(folder: Path) -> None:
    only = folder / "only"
    shutil.copytree(folder / "train" / "Bag", only / "Bag")
    with pytest.raises(DataError, match=r"1 class folder\(s\) \(Bag\)"):
        read(only)


def test_hidden_files_are_passed_over_and_stray_files_ignored(folder: Path) -> None:
    (folder / "README.md").write_text("Fashion-MNIST as PNG")
    (folder / "train" / "labels.csv").write_text("file,label")
    (folder / "train" / "Bag" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "test" / ".ipynb_checkpoints").mkdir()
    source = read(folder)
    assert source.ignored == ("README.md", "train/labels.csv")
    assert source.skipped == () and source.classes == tuple(sorted(folder_names()))


def test_one_folder_of_class_folders_is_split_by_test_fraction(
    fmnist_dir: Path, tmp_path: Path
) -> None:
    flat = write_imagefolder(tmp_path / "flat", 12, 8, flat=True)
    source = read(flat, channels=1, image_size=[28, 28])
    assert set(source.splits) == {"all"} and len(source.splits["all"]) == 200
    split = train_test(source, 0.25, np.random.default_rng(0))
    assert np.bincount(split["test"].labels).tolist() == [5] * 10
    assert len(split["train"]) == 150


def test_the_same_files_give_the_same_bytes_however_stored(folder: Path, tmp_path: Path) -> None:
    """Re-encoded (another PNG compression level), written in another order: the same arrays
    and fingerprint; one pixel changed: another fingerprint."""
    first = read(folder)
    copy = tmp_path / "copy"
    for path in sorted(folder.rglob("*.png"), reverse=True):
        target = copy / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).save(target, compress_level=9)
    path = first_png(folder, "test", "Bag")
    assert (copy / path.relative_to(folder)).read_bytes() != path.read_bytes()
    again = read(copy)
    for split in ("train", "test"):
        assert first.splits[split].images.tobytes() == again.splits[split].images.tobytes()
    assert fingerprint(first.splits, first.classes) == fingerprint(again.splits, again.classes)
    path = first_png(copy, "test", "Coat")
    pixels = np.asarray(Image.open(path)).copy()
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(path)
    changed = read(copy)
    assert fingerprint(changed.splits, changed.classes) != fingerprint(first.splits, first.classes)


def test_renamed_class_folders_change_the_fingerprint(folder: Path) -> None:
    before = read(folder)
    for split in ("train", "test"):
        (folder / split / "Bag").rename(folder / split / "Bags")
    after = read(folder)
    assert after.splits["train"].images.tobytes() == before.splits["train"].images.tobytes()
    assert fingerprint(after.splits, after.classes) != fingerprint(before.splits, before.classes)


def test_a_dataset_too_large_for_memory_fails_before_decoding(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "memory_limit", lambda: 10**6)
    decoded = []
    monkeypatch.setattr("squeeze.data.imagefolder.decode", lambda *a: decoded.append(a))
    per_image = memory.bytes_per_image(64, 64, 3)
    with pytest.raises(
        DataError, match=rf"300 images of 64x64x3 .* \(~{per_image} bytes per image\)"
    ):
        read(folder, image_size=[64, 64])
    assert decoded == []


def striped(width: int, height: int) -> Image.Image:
    """An RGB image in three equal stripes along its longer side: red, green, blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    long, axis = (width, 1) if width >= height else (height, 0)
    for k in range(3):
        part = [slice(None), slice(None)]
        part[axis] = slice(k * long // 3, (k + 1) * long // 3)
        pixels[tuple(part) + (k,)] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("size", [(60, 20), (20, 60)], ids=["landscape", "portrait"])
def test_shorter_side_crop_keeps_the_centre_and_exact_stretches(size: tuple[int, int]) -> None:
    cropped, changed = to_pixels(striped(*size), 3, (10, 10), "shorter_side_crop")
    assert changed and cropped.shape == (10, 10, 3)
    # the centre third (green) fills the 10x10 crop, apart from the blurred edges
    assert (cropped[:, 2:8] if size[0] > size[1] else cropped[2:8])[..., 1].min() > 200
    stretched, _ = to_pixels(striped(*size), 3, (10, 10), "exact")
    # all three stripes survive a stretch: the colour of each end
    ends = (
        (stretched[5, 0], stretched[5, -1])
        if size[0] > size[1]
        else (stretched[0, 5], stretched[-1, 5])
    )
    assert ends[0].argmax() == 0 and ends[1].argmax() == 2


def test_a_non_square_size_is_height_by_width() -> None:
    pixels, changed = to_pixels(striped(30, 30).convert("L"), 1, (12, 20), "shorter_side_crop")
    assert pixels.shape == (12, 20, 1) and changed
    same, unchanged = to_pixels(Image.open(io.BytesIO(png_bytes(20, 12))), 1, (12, 20), "exact")
    assert same.shape == (12, 20, 1) and not unchanged


def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 7).save(out, format="PNG")
    return out.getvalue()
