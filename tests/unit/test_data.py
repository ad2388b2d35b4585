"""IDX parsing and source fetching, on the real Fashion-MNIST files and broken copies of them."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from squeeze.data import (
    DataError,
    FetchError,
    fetch_raw,
    fingerprint,
    raw_names,
    read_idx,
    read_split,
    split_train_val,
    stratified_indices,
)

TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


@pytest.fixture
def copy_dir(fmnist_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the four raw files."""
    dest = tmp_path / "raw"
    shutil.copytree(fmnist_dir, dest)
    return dest


def test_reads_real_files(fmnist_dir: Path) -> None:
    test = read_split(fmnist_dir, "test")
    assert test.images.shape == (10000, 28, 28) and test.images.dtype == np.uint8
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


def test_fetch_from_folder_copies_all_files(fmnist_dir: Path, tmp_path: Path) -> None:
    resolved = fetch_raw(str(fmnist_dir), "http://unused", None, tmp_path / "out")
    assert resolved == str(fmnist_dir)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{n}.gz" for n in raw_names()
    )
    assert fingerprint(tmp_path / "out") == fingerprint(fmnist_dir)


def test_fetch_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ingest.source: .* is not a folder"):
        fetch_raw(str(tmp_path / "nope"), "http://unused", None, tmp_path / "out")


@pytest.fixture
def mirror(fmnist_dir: Path) -> Iterator[str]:
    """An HTTP mirror of the files on 127.0.0.1, standing in for the upstream download."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(fmnist_dir))
    handler.log_message = lambda *_: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_downloads_from_a_mirror(mirror: str, fmnist_dir: Path, tmp_path: Path) -> None:
    assert fetch_raw(mirror, "http://unused", None, tmp_path / "out") == mirror
    assert fingerprint(tmp_path / "out") == fingerprint(fmnist_dir)


def test_failed_download_is_a_fetch_error_and_leaves_no_file(mirror: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="cannot download .*/missing/train-images"):
        fetch_raw(f"{mirror}/missing", "http://unused", None, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_splits_are_stratified_and_deterministic(fmnist: dict) -> None:
    train = fmnist["train"]
    idx = stratified_indices(train.labels, 20, np.random.default_rng(1))
    assert np.bincount(train.labels[idx]).tolist() == [20] * 10
    a = split_train_val(train, 0.2, np.random.default_rng(3))
    b = split_train_val(train, 0.2, np.random.default_rng(3))
    np.testing.assert_array_equal(a[1].labels, b[1].labels)
    assert np.bincount(a[1].labels).tolist() == [60] * 10
    assert len(a[0]) + len(a[1]) == len(train)
