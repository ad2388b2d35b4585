"""Unit tests for the local object store and store URL parsing."""

from __future__ import annotations

import multiprocessing
import socket
import threading
from pathlib import Path

import pytest

from squeeze.registry.store import LocalStore, NotFound, S3Store, StoreError, open_store


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
