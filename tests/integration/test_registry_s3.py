"""The registry and S3 store against a real S3 HTTP endpoint (moto's server)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from squeeze.cli.ops import pull
from squeeze.registry.registry import Damaged, Registry, RegistryError
from squeeze.registry.store import NotFound, S3Store, Store, StoreError, open_store
from tests.integration.conftest import S3Endpoint, StopBeforePointerMove

FAMILY = "fmnist"


def publish(registry: Registry, tag: str) -> int:
    """Publish a fake model whose bytes and card carry ``tag``."""
    return registry.publish({"model.onnx": f"onnx {tag}".encode()}, {"name": tag}, {"acc": 0.9})


def stop_after(store: Store, endpoint: S3Endpoint, method: str, suffix: str) -> None:
    """Make ``store.<method>`` stop the endpoint right after it wrote a key ending in
    ``suffix``: that write lands, every later request finds the endpoint dead."""
    real = getattr(store, method)

    def then_stop(key: str, *args: Any) -> Any:
        result = real(key, *args)
        if key.endswith(suffix):
            endpoint.stop()
        return result

    setattr(store, method, then_stop)


def test_store_conditional_writes(s3_endpoint: S3Endpoint, s3_prefix: str) -> None:
    store = s3_endpoint.store(s3_prefix)
    assert store.put_if_absent("k", b"one")
    assert not store.put_if_absent("k", b"two")
    data, tag = store.get_with_tag("k")
    assert data == b"one"
    assert not store.put_if_match("k", b"x", '"0123456789abcdef0123456789abcdef"')
    assert store.put_if_match("k", b"three", tag)
    assert not store.put_if_match("k", b"four", tag)  # stale tag
    assert not store.put_if_match("gone", b"x", tag)  # If-Match on a missing key
    assert store.get("k") == b"three"
    assert store.list() == ["k"] and store.exists("k") and not store.exists("gone")
    with pytest.raises(NotFound):
        store.get("gone")


def test_registry_flow_over_s3(s3_endpoint: S3Endpoint, s3_prefix: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_endpoint.bucket}/{s3_prefix}", endpoint_url=s3_endpoint.url)
    registry = Registry(store, FAMILY)
    v1, v2 = publish(registry, "a"), publish(registry, "b")
    assert registry.versions() == [v1, v2] == [1, 2]
    registry.promote(v1, expected=None)
    registry.promote(v2, expected=v1)
    assert registry.production()["previous"] == [v1]  # type: ignore[index]
    assert registry.rollback() == v1
    assert registry.production()["version"] == v1  # type: ignore[index]
    out = registry.download(v2, tmp_path / "v2")
    assert (out / "model.onnx").read_bytes() == b"onnx b"
    # A consumer with a plain S3 client finds the model from the pointer alone.
    listing = s3_endpoint.client().list_objects_v2(Bucket=s3_endpoint.bucket, Prefix=s3_prefix)
    keys = {obj["Key"] for obj in listing["Contents"]}
    assert f"{s3_prefix}/{FAMILY}/production.json" in keys
    assert f"{s3_prefix}/{FAMILY}/versions/1/model.onnx" in keys


def test_concurrent_promotions_exactly_one_wins(s3_endpoint: S3Endpoint, s3_prefix: str) -> None:
    registry = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    base, a, b = publish(registry, "base"), publish(registry, "a"), publish(registry, "b")
    registry.promote(base)
    barrier = threading.Barrier(2)
    won: list[int] = []
    lost: list[str] = []

    def worker(version: int) -> None:
        # Separate Registry objects, as two processes would have.
        mine = Registry(s3_endpoint.store(s3_prefix), FAMILY)
        barrier.wait()
        try:
            mine.promote(version, expected=base)
            won.append(version)
        except RegistryError as err:
            lost.append(str(err))

    threads = [threading.Thread(target=worker, args=(v,)) for v in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 1, (won, lost)
    assert "production" in lost[0]
    pointer = registry.production()
    assert pointer is not None and (pointer["version"], pointer["previous"]) == (won[0], [base])


def test_endpoint_dies_before_pointer_move(
    s3_endpoint: S3Endpoint, s3_prefix: str, tmp_path: Path
) -> None:
    # No retries: the endpoint is really down, and waiting for backoff only slows the test.
    registry = Registry(s3_endpoint.store(s3_prefix, max_attempts=1), FAMILY)
    v1, v2 = publish(registry, "a"), publish(registry, "b")
    registry.promote(v1)

    dying = Registry(StopBeforePointerMove(registry.store, s3_endpoint), FAMILY)  # type: ignore[arg-type]
    with pytest.raises(RegistryError) as excinfo:
        dying.promote(v2)
    message = str(excinfo.value)
    assert f"cannot reach S3 endpoint {s3_endpoint.url}" in message
    assert "check endpoint_url / network" in message and "version 2" in message

    s3_endpoint.start()
    assert registry.production()["version"] == v1  # type: ignore[index]
    registry.verify(v1)
    assert (registry.download(v1, tmp_path / "prod") / "model.onnx").read_bytes() == b"onnx a"


def test_endpoint_dies_mid_publish(s3_endpoint: S3Endpoint, s3_prefix: str) -> None:
    # No retries: the endpoint is really down, and waiting for backoff only slows the test.
    registry = Registry(s3_endpoint.store(s3_prefix, max_attempts=1), FAMILY)
    v1 = publish(registry, "a")
    registry.promote(v1)
    stop_after(registry.store, s3_endpoint, "put", "/model.onnx")  # dies before card.json
    with pytest.raises(StoreError, match="cannot reach S3 endpoint"):
        publish(registry, "b")
    s3_endpoint.start()
    assert registry.versions() == [v1]  # the half-published version 2 is invisible
    with pytest.raises(RegistryError, match="incomplete"):
        registry.promote(2)
    assert registry.production()["version"] == v1  # type: ignore[index]


def test_corrupted_object_is_caught_naming_the_key(
    s3_endpoint: S3Endpoint, s3_prefix: str, tmp_path: Path
) -> None:
    registry = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    version = publish(registry, "a")
    key = f"{s3_prefix}/{FAMILY}/versions/{version}/model.onnx"
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=key, Body=b"tampered")
    url = f"s3://{s3_endpoint.bucket}/{key}"
    for call in (
        registry.verify,
        registry.promote,
        lambda v: registry.download(v, tmp_path / "dl"),
    ):
        with pytest.raises(Damaged, match=f"checksum mismatch for {url}") as excinfo:
            call(version)
        assert (excinfo.value.key, excinfo.value.version) == (url, version)
    assert not (tmp_path / "dl").exists() and registry.production() is None


@pytest.mark.parametrize(
    ("method", "suffix", "survivor"),
    [
        ("put", "/card.json", 2),  # before checksums.json: version 1 stays incomplete
        ("put_if_absent", "/checksums.json", 1),  # complete; the publisher's verification fails
    ],
)
def test_publish_retried_after_the_endpoint_dies_leaves_one_version(
    s3_endpoint: S3Endpoint, s3_prefix: str, method: str, suffix: str, survivor: int
) -> None:
    store = s3_endpoint.store(s3_prefix, max_attempts=1)
    stop_after(store, s3_endpoint, method, suffix)
    with pytest.raises(StoreError, match="cannot reach S3 endpoint"):
        publish(Registry(store, FAMILY), "a")
    s3_endpoint.start()
    registry = Registry(s3_endpoint.store(s3_prefix), FAMILY)  # the retry: a fresh process
    assert publish(registry, "a") == survivor
    assert publish(registry, "a") == survivor  # and every later publish of the same model
    assert registry.versions() == [survivor]
    registry.verify(survivor)
    assert publish(registry, "b") == survivor + 1


def test_pull_writes_beside_the_users_files(
    s3_endpoint: S3Endpoint, s3_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from squeeze.registry.package import pack

    registry = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    registry.promote(registry.publish({"model.onnx.xz": pack(b"onnx a")}, {"name": "a"}, {}))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert pull(registry, Path(".")) == (1, [tmp_path / "model.onnx", tmp_path / "card.json"])
    assert sorted(os.listdir(tmp_path)) == ["card.json", "model.onnx", "notes.txt"]
    assert (tmp_path / "model.onnx").read_bytes() == b"onnx a"


def test_refused_credentials_give_a_clear_error_without_the_secret(
    s3_endpoint: S3Endpoint, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sEcReT-do-not-print-0123456789"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEBADKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    registry = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    with s3_endpoint.checking_credentials(), pytest.raises(StoreError) as excinfo:
        registry.versions()
    message = str(excinfo.value)
    assert "S3 refused the credentials" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert f"s3://{s3_endpoint.bucket}/{s3_prefix}" in message
    assert secret not in message and secret not in str(excinfo.value.__cause__)


def test_unreachable_endpoint_fails_fast(s3_prefix: str) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    store = S3Store("squeeze-test", s3_prefix, endpoint_url=url, max_attempts=2)
    with pytest.raises(StoreError, match=f"cannot reach S3 endpoint {url}"):
        store.get("anything")


def test_missing_bucket(s3_endpoint: S3Endpoint) -> None:
    store = S3Store("no-such-bucket", "x", endpoint_url=s3_endpoint.url)
    with pytest.raises(StoreError, match="S3 bucket 'no-such-bucket' does not exist"):
        store.put("k", b"x")
