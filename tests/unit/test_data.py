"""IDX parsing, source fetching, splitting and the memory limit, on the real Fashion-MNIST files
and broken copies of them."""

from __future__ import annotations

import gzip
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from squeeze.config.files import load_params
from squeeze.config.sections import IngestParams
from squeeze.data import memory, sources
from squeeze.data.idx import IDX_FILES, read_idx, read_split, write_raw
from squeeze.data.imagefolder import conform, to_pixels
from squeeze.data.sources import fingerprint
from squeeze.data.spec import DataError, FetchError, Source, Split
from squeeze.data.splits import class_names, hold_out, stratified_indices, subset, train_test

PROJECT = Path(__file__).resolve().parents[2]

TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


def idx_params(source: str | Path, **changes: object) -> IngestParams:
    """The project's ingest params reading IDX files from source."""
    return load_params(PROJECT).ingest.model_copy(update={"source": str(source), **changes})


def read_source(source: str | Path, scratch: Path, **changes: object) -> Source:
    return sources.read_source(idx_params(source, **changes), scratch)


@pytest.fixture
def copy_dir(fmnist_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the four raw files."""
    dest = tmp_path / "raw"
    shutil.copytree(fmnist_dir, dest)
    return dest


def test_reads_real_files(fmnist_dir: Path) -> None:
    test = read_split(fmnist_dir, "test")
    assert test.images.shape == (10000, 28, 28, 1) and test.images.dtype == np.uint8
    assert sorted(np.unique(test.labels)) == list(range(10))


def test_raw_and_gzip_give_the_same_array(copy_dir: Path) -> None:
    raw = copy_dir / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((copy_dir / TEST_LABELS).read_bytes()))
    np.testing.assert_array_equal(read_idx(raw), read_idx(copy_dir / TEST_LABELS))


def test_truncated_gzip_names_the_file(copy_dir: Path) -> None:
    path = copy_dir / TEST_IMAGES
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DataError, match=f"{path}: corrupt or truncated gzip"):
        read_idx(path)


def test_truncated_data_names_the_file_and_sizes(copy_dir: Path) -> None:
    path = copy_dir / TEST_IMAGES
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-784]))
    with pytest.raises(DataError, match=r"header says shape \(10000, 28, 28\) = 7840000 bytes"):
        read_idx(path)


def test_bad_magic_is_rejected(copy_dir: Path) -> None:
    path = copy_dir / TEST_IMAGES
    path.write_bytes(gzip.compress(b"PK\x03\x04" + bytes(100)))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_mismatched_files_are_rejected(copy_dir: Path) -> None:
    # the training labels next to the test images: 60000 labels for 10000 images
    shutil.copy(copy_dir / "train-labels-idx1-ubyte.gz", copy_dir / TEST_LABELS)
    with pytest.raises(DataError, match="holds 10000 images but .* holds 60000 labels"):
        read_split(copy_dir, "test")


def test_missing_file_is_named(copy_dir: Path) -> None:
    (copy_dir / TEST_LABELS).unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte.gz"):
        read_split(copy_dir, "test")


def test_a_folder_is_read_in_place(fmnist_dir: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    source = read_source(fmnist_dir, scratch)
    assert source.location == str(fmnist_dir) and not scratch.exists()
    assert source.splits["train"].images.shape == (60000, 28, 28, 1)
    assert len(source.splits["test"]) == 10000 and source.converted == 0


def test_a_missing_folder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ingest.source: .* is not a folder"):
        read_source(tmp_path / "nope", tmp_path / "scratch")


def gunzip(path: Path) -> Path:
    """Replace path (a .gz file) by the same file decompressed; return the new path."""
    plain = path.with_suffix("")
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
    return plain


def test_the_fingerprint_is_of_the_decoded_data_not_of_the_files(
    fmnist_dir: Path, copy_dir: Path, tmp_path: Path
) -> None:
    """Gunzipped, or gzipped again at another level with a file name and a timestamp in its
    header: other bytes, the same data, the same fingerprint."""
    gunzip(copy_dir / "train-labels-idx1-ubyte.gz")
    images = copy_dir / TEST_IMAGES
    with images.open("wb") as raw, gzip.GzipFile(images.name, "wb", 1, raw, mtime=1234) as out:
        out.write(gzip.decompress((fmnist_dir / TEST_IMAGES).read_bytes()))
    assert images.read_bytes() != (fmnist_dir / TEST_IMAGES).read_bytes()
    original = fingerprint(read_source(fmnist_dir, tmp_path / "a").splits)
    assert fingerprint(read_source(copy_dir, tmp_path / "b").splits) == original
    assert set(original["arrays"]) == {f"{s}/{r}" for s in IDX_FILES for r in ("images", "labels")}
    assert original["arrays"]["test/images"] | {"sha256": ""} == {
        "dtype": "uint8", "shape": [10000, 28, 28, 1], "sha256": ""
    }  # fmt: skip


def test_the_fingerprint_changes_with_any_value_shape_or_dtype(fmnist: dict) -> None:
    test = fmnist["test"]
    base = fingerprint({"test": test})["sha256"]
    relabelled = test.labels.copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    # the same bytes in another shape, or the same values in another dtype, are other data
    variants = [
        Split(test.images, relabelled),
        Split(test.images.reshape(-1, 14, 56, 1), test.labels),
        Split(test.images, test.labels.astype(np.int32)),
    ]
    assert len({base, *(fingerprint({"test": v})["sha256"] for v in variants)}) == 4


def test_the_snapshot_is_the_same_file_however_the_source_was_encoded(
    fmnist_dir: Path, copy_dir: Path, tmp_path: Path
) -> None:
    gunzip(copy_dir / TEST_LABELS)
    for name, folder in (("a", fmnist_dir), ("b", copy_dir)):
        write_raw(read_source(folder, tmp_path / "scratch").splits, tmp_path / name)
    for file in sorted((tmp_path / "a").iterdir()):
        assert file.read_bytes() == (tmp_path / "b" / file.name).read_bytes(), file.name
    # and it reads back as the same data
    np.testing.assert_array_equal(
        read_split(tmp_path / "a", "test").labels, read_split(fmnist_dir, "test").labels
    )


@pytest.fixture
def mirror(fmnist_dir: Path) -> Iterator[str]:
    """An HTTP mirror of the files on 127.0.0.1, standing in for the upstream download; any
    path under /busy/ answers 503 Service Unavailable."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(fmnist_dir), **kwargs)  # type: ignore[misc]

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.startswith("/busy/"):
                self.send_error(503)
            else:
                super().do_GET()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_mirror_is_downloaded_through_scratch(
    mirror: str, fmnist_dir: Path, tmp_path: Path
) -> None:
    source = read_source(mirror, tmp_path / "scratch")
    assert source.location == mirror and not (tmp_path / "scratch").exists()
    local = read_source(fmnist_dir, tmp_path / "scratch").splits
    assert fingerprint(source.splits) == fingerprint(local)


def test_a_missing_download_fails_at_once_and_leaves_no_file(mirror: str, tmp_path: Path) -> None:
    """404: permanent, a DataError (ingest does not retry it) naming the URL."""
    with pytest.raises(DataError, match="cannot download .*/missing/train-images") as excinfo:
        read_source(f"{mirror}/missing", tmp_path / "scratch")
    assert not isinstance(excinfo.value, FetchError)
    assert not (tmp_path / "scratch").exists()


def test_a_busy_mirror_is_a_fetch_error(mirror: str, tmp_path: Path) -> None:
    """503: transient, a FetchError (ingest retries it)."""
    with pytest.raises(FetchError, match="cannot download .*/busy/train-images.* 503"):
        read_source(f"{mirror}/busy", tmp_path / "scratch")


def test_splits_are_stratified_and_deterministic(fmnist: dict) -> None:
    train = fmnist["train"]
    idx = stratified_indices(train.labels, 20, np.random.default_rng(1))
    assert np.bincount(train.labels[idx]).tolist() == [20] * 10
    a = hold_out(train, 0.2, np.random.default_rng(3))
    b = hold_out(train, 0.2, np.random.default_rng(3))
    np.testing.assert_array_equal(a[1].labels, b[1].labels)
    assert np.bincount(a[1].labels).tolist() == [60] * 10
    assert len(a[0]) + len(a[1]) == len(train)


def test_idx_images_of_another_size_or_channels_are_converted_by_pillow(fmnist: dict) -> None:
    """IDX images go through the ImageFolder path (to_pixels) when ingest.channels or
    ingest.image_size differ: every image counted, each equal to its own Pillow conversion."""
    test = subset(fmnist["test"], np.arange(50))
    same, none = conform(test, 1, (28, 28), "shorter_side_crop")
    assert same is test and none == 0
    wide, count = conform(test, 3, (32, 40), "exact")
    assert wide.images.shape == (50, 32, 40, 3) and wide.images.dtype == np.uint8 and count == 50
    np.testing.assert_array_equal(wide.labels, test.labels)
    image = Image.fromarray(test.images[7, ..., 0], "L")
    np.testing.assert_array_equal(wide.images[7], to_pixels(image, 3, (32, 40), "exact")[0])
    # grey to RGB keeps the grey: the three channels are equal
    assert (wide.images[..., 0] == wide.images[..., 2]).all()


def test_read_source_converts_idx_to_the_configured_images(
    fmnist_dir: Path, tmp_path: Path
) -> None:
    source = read_source(fmnist_dir, tmp_path / "scratch", channels=3, image_size=[32, 32])
    assert source.splits["test"].images.shape == (10000, 32, 32, 3)
    assert source.converted == 70000


def test_a_dataset_too_large_for_memory_fails_before_decoding(
    fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "memory_limit", lambda: 2**30)
    # 70,000 images of 224x224x3 would need ~39 GiB: refused, saying how much per image
    with pytest.raises(DataError, match=r"70000 images of 224x224x3 need about 39\.3 GiB") as err:
        read_source(fmnist_dir, tmp_path / "scratch", channels=3, image_size=[224, 224])
    per_image = memory.bytes_per_image(224, 224, 3)
    assert f"~{per_image} bytes per image" in str(err.value) and "1.0 GiB" in str(err.value)
    assert per_image == 224 * 224 * 3 * memory.COPIES_IN_MEMORY + memory.PER_IMAGE_OVERHEAD


def test_the_memory_limit_is_half_of_this_machine() -> None:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < memory.memory_limit() <= physical // 2


def idx_source(*splits: Split) -> Source:
    return Source("somewhere", "idx", dict(zip(("train", "test"), splits, strict=True)))


def test_idx_class_names_come_from_params_or_are_the_labels(fmnist: dict) -> None:
    source = idx_source(fmnist["train"], fmnist["test"])
    assert class_names(source, None) == tuple("0123456789")
    names = [f"class {k}" for k in range(10)]
    assert class_names(source, names) == tuple(names)
    with pytest.raises(
        DataError, match="ingest.classes names 9 classes but somewhere holds labels up to 9"
    ):
        class_names(source, names[:9])
    with pytest.raises(DataError, match="ingest.classes: class 1 named more than once"):
        class_names(source, [*names[:9], "class 1"])


def test_one_folder_of_classes_is_split_by_test_fraction(fmnist: dict) -> None:
    train = fmnist["train"]  # 300 per class
    source = Source("somewhere", "imagefolder", {"all": train}, tuple("abcdefghij"))
    with pytest.raises(DataError, match="set ingest.test_fraction"):
        train_test(source, None, np.random.default_rng(0))
    split = train_test(source, 0.2, np.random.default_rng(0))
    assert np.bincount(split["test"].labels).tolist() == [60] * 10
    assert len(split["train"]) == 2400
    again = train_test(source, 0.2, np.random.default_rng(0))
    np.testing.assert_array_equal(again["test"].images, split["test"].images)
    with pytest.raises(DataError, match="holds its own test split"):
        train_test(idx_source(train, fmnist["test"]), 0.2, np.random.default_rng(0))
