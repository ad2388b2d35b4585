"""Unit tests for the local object store and store URL parsing."""

from __future__ import annotations

import multiprocessing
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from squeeze.registry.store import (
    LocalStore,
    NotFound,
    S3Store,
    StoreError,
    check_endpoint,
    check_location,
    open_store,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "root")


def test_put_get_list_exists(store: LocalStore) -> None:
    store.put("a/b/c.bin", b"123")
    store.put("a/d.json", b"{}")
    store.put("ab.txt", b"x")
    assert store.get("a/b/c.bin") == b"123"
    assert store.exists("a/d.json") and not store.exists("a/nope")
    assert store.list() == ["a/b/c.bin", "a/d.json", "ab.txt"]
    assert store.list("a/") == ["a/b/c.bin", "a/d.json"]
    assert store.list("a") == ["a/b/c.bin", "a/d.json", "ab.txt"]  # a string prefix, like S3
    assert store.list("zzz/") == []


def test_get_missing_raises_not_found(store: LocalStore) -> None:
    with pytest.raises(NotFound, match="nope"):
        store.get("nope")
    with pytest.raises(NotFound):
        store.get_with_tag("a/nope")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", ".hidden", "a/.tmp"])
def test_invalid_keys_rejected(store: LocalStore, key: str) -> None:
    with pytest.raises(StoreError, match="invalid store key"):
        store.put(key, b"x")


def test_put_if_absent(store: LocalStore) -> None:
    assert store.put_if_absent("k", b"first")
    assert not store.put_if_absent("k", b"second")
    assert store.get("k") == b"first"
    assert store.list() == ["k"]  # no temp or lock files leak into the key space


def test_put_if_match_is_compare_and_swap(store: LocalStore) -> None:
    assert not store.put_if_match("k", b"v1", "some-tag")  # missing key never matches a tag
    assert store.put_if_match("k", b"v1", None)
    assert not store.put_if_match("k", b"again", None)
    _, tag = store.get_with_tag("k")
    assert store.put_if_match("k", b"v2", tag)
    assert not store.put_if_match("k", b"v3", tag)  # stale tag
    assert store.get("k") == b"v2"


def test_concurrent_put_if_match_has_one_winner(store: LocalStore) -> None:
    store.put("k", b"start")
    _, tag = store.get_with_tag("k")
    barrier = threading.Barrier(8)
    wins: list[int] = []

    def attempt(i: int) -> None:
        barrier.wait()
        if store.put_if_match("k", f"writer {i}".encode(), tag):
            wins.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get("k") == f"writer {wins[0]}".encode()


def _cas_from_process(root: str, tag: str, i: int) -> bool:
    return LocalStore(root).put_if_match("k", f"process {i}".encode(), tag)


def test_put_if_match_is_safe_across_processes(store: LocalStore) -> None:
    store.put("k", b"start")
    _, tag = store.get_with_tag("k")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.starmap(_cas_from_process, [(str(store.root), tag, i) for i in range(8)])
    assert sum(results) == 1
    assert store.get("k") == f"process {results.index(True)}".encode()


def test_s3_errors_never_show_endpoint_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as sock:  # a port that nothing listens on: refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://user:hunter2@127.0.0.1:{port}"
    store = S3Store("bucket", "pre", endpoint_url=url, max_attempts=1)
    with pytest.raises(StoreError, match=f"cannot reach S3 endpoint http://127.0.0.1:{port} ") as e:
        store.get("k")
    assert "hunter2" not in str(e.value) and "s3://bucket/pre/k" in str(e.value)


def test_open_store_dispatch(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert open_store(f"file://{tmp_path}").url == str(tmp_path)
    s3 = open_store("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.url) == ("bucket", "some/prefix", "s3://bucket/some/prefix")
    with pytest.raises(StoreError, match="unsupported store URL"):
        open_store("gs://bucket/x")


@pytest.mark.parametrize(
    "value",
    ["registry", "./registry", "/abs/registry", "./odd:name", "file:///abs/registry",
     "s3://bucket", "s3://my.bucket-1/some/prefix"],
)  # fmt: skip
def test_check_location_accepts_what_open_store_opens(value: str) -> None:
    assert check_location(value) == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("s3:/bucket/registry", "two slashes after 's3:' (did you mean 's3://bucket/registry'?)"),
        ("s3:bucket", "did you mean 's3://bucket'?"),
        ("s3:///registry", "is not a valid S3 URL"),
        ("s3://Bad_Bucket/x", "'Bad_Bucket' is not a valid S3 bucket name"),
        ("file://host/abs", "write file:///ABSOLUTE/PATH"),
        ("gs://bucket/x", "unsupported store URL (gs:)"),
        ("localhost:9000/bucket", "unsupported store URL (localhost:)"),
        ("", "is not a location"),
    ],
)
def test_check_location_refuses_what_looks_like_a_url_but_is_not_one(
    value: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_location(value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="invalid store location") as excinfo:
        open_store(value)
    assert repr(value) in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []  # no folder named "s3:" or the like


@pytest.mark.parametrize("value", [None, "http://127.0.0.1:9000", "https://s3.example.com/base"])
def test_check_endpoint_accepts_http_urls_and_none(value: str | None) -> None:
    assert check_endpoint(value) == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("127.0.0.1:9000", "write it with its scheme, e.g. 'http://127.0.0.1:9000'"),
        ("minio.local:9000", "e.g. 'http://minio.local:9000'"),
        ("ftp://host", "is not an http(s) URL"),
        ("http://host:99999", "has an invalid port"),
        ("http://", "is not a valid endpoint"),
        ("", "is empty: use null for AWS"),
    ],
)
def test_check_endpoint_refuses_what_botocore_cannot_use(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_endpoint(value)
    with pytest.raises(StoreError, match=re.escape(problem)):
        open_store("s3://bucket/x", endpoint_url=value)


def test_check_endpoint_never_echoes_a_password() -> None:
    with pytest.raises(ValueError) as excinfo:
        check_endpoint("user:hunter2@127.0.0.1:9000")
    assert "hunter2" not in str(excinfo.value) and "***@127.0.0.1:9000" in str(excinfo.value)


def test_delete_removes_the_key_and_the_folders_it_leaves_empty(store: LocalStore) -> None:
    store.put("a/b/c.bin", b"1")
    store.put("a/d.bin", b"2")
    store.delete("a/b/c.bin")
    store.delete("a/b/never-there")  # not an error
    assert store.list() == ["a/d.bin"] and not (store.root / "a" / "b").exists()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_put_all_writes_every_key(store: LocalStore) -> None:
    store.put("model.onnx", b"old model")
    store.put_all({"model.onnx": b"new model", "card.json": b"{}"})
    assert store.get("model.onnx") == b"new model" and store.get("card.json") == b"{}"
    assert hidden(store.root) == []


def test_put_all_changes_nothing_when_a_key_is_a_folder(store: LocalStore) -> None:
    store.put("model.onnx", b"old model")
    (store.root / "card.json").mkdir()
    with pytest.raises(StoreError, match=r"cannot write 'card.json' .* is not a file"):
        store.put_all({"model.onnx": b"new model", "card.json": b"{}"})
    assert store.get("model.onnx") == b"old model" and hidden(store.root) == []


def test_put_all_puts_back_what_it_renamed_when_a_later_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "new" / "dir")  # does not exist yet
    real = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if Path(dst).name == "card.json":
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StoreError, match="cannot write 'card.json'.*No space left"):
        store.put_all({"model.onnx": b"new model", "card.json": b"{}"})
    assert not (tmp_path / "new").exists()  # the folders it created are gone again
    (store.root).mkdir(parents=True)
    real_store = LocalStore(store.root)
    real_store.put("model.onnx", b"old model")
    with pytest.raises(StoreError, match="nothing was changed"):
        real_store.put_all({"model.onnx": b"new model", "card.json": b"{}"})
    assert real_store.get("model.onnx") == b"old model"
    assert real_store.list() == ["model.onnx"] and hidden(store.root) == []
