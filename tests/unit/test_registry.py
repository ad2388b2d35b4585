"""Unit tests for the model registry on a local store."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from squeeze.registry import Registry, RegistryError
from squeeze.storage import LocalStore


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "registry")


@pytest.fixture
def registry(store: LocalStore) -> Registry:
    return Registry(store, "fmnist")


def publish(registry: Registry, tag: str) -> int:
    """Publish a fake model whose bytes and card carry ``tag``."""
    return registry.publish({"model.onnx": f"onnx {tag}".encode()}, {"name": tag}, {"acc": 0.9})


def test_publish_promote_promote_again_rollback(registry: Registry, tmp_path: Path) -> None:
    assert registry.production() is None and registry.versions() == []
    v1, v2 = publish(registry, "a"), publish(registry, "b")
    assert (v1, v2) == (1, 2) and registry.versions() == [1, 2]
    assert registry.card(v2)["name"] == "b"
    assert registry.card(v2)["registry"]["version"] == 2

    registry.promote(v1, expected=None)
    registry.promote(v2)
    pointer = registry.production()
    assert pointer is not None
    assert (pointer["version"], pointer["previous"], pointer["path"]) == (2, [1], "versions/2")
    assert pointer["sha256"]["model.onnx"] == hashlib.sha256(b"onnx b").hexdigest()

    assert registry.rollback() == 1
    pointer = registry.production()
    assert pointer is not None and (pointer["version"], pointer["previous"]) == (1, [])
    assert [h["action"] for h in pointer["history"]] == ["promote", "promote", "rollback"]
    with pytest.raises(RegistryError, match="no previous version"):
        registry.rollback()

    out = registry.download(v1, tmp_path / "out")
    assert (out / "model.onnx").read_bytes() == b"onnx a"
    assert json.loads((out / "card.json").read_text())["name"] == "a"
    assert {p.name for p in out.iterdir()} == {
        "model.onnx",
        "card.json",
        "metrics.json",
        "checksums.json",
    }
    registry.download(v2, out)  # replaces an existing download
    assert (out / "model.onnx").read_bytes() == b"onnx b"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_rollback_with_nothing_promoted(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="nothing is in production"):
        registry.rollback()


def test_promote_with_stale_expected_is_refused(registry: Registry) -> None:
    v1, v2 = publish(registry, "a"), publish(registry, "b")
    registry.promote(v1)
    with pytest.raises(RegistryError, match="is version 1, not the expected None"):
        registry.promote(v2, expected=None)
    registry.promote(v2, expected=1)
    before = registry.production()
    assert before is not None and before["version"] == v2
    registry.promote(v2)  # already in production: nothing moves
    assert registry.production() == before


def test_corrupted_file_is_caught_naming_it(registry: Registry, store: LocalStore) -> None:
    v1, v2 = publish(registry, "a"), publish(registry, "b")
    registry.promote(v1)
    store.put(f"fmnist/versions/{v2}/model.onnx", b"tampered")
    with pytest.raises(RegistryError, match=r"checksum mismatch for .*versions/2/model\.onnx"):
        registry.verify(v2)
    with pytest.raises(RegistryError, match="model.onnx"):
        registry.promote(v2)
    with pytest.raises(RegistryError, match="model.onnx"):
        registry.download(v2, store.root.parent / "dl")
    assert not (store.root.parent / "dl").exists()
    assert registry.production()["version"] == v1  # type: ignore[index]


def test_missing_file_is_caught_naming_it(registry: Registry, store: LocalStore) -> None:
    v1 = publish(registry, "a")
    (store.root / "fmnist/versions/1/metrics.json").unlink()
    with pytest.raises(RegistryError, match=r"versions/1/metrics\.json is missing"):
        registry.verify(v1)


def test_incomplete_version_is_invisible_and_not_promotable(
    registry: Registry, store: LocalStore
) -> None:
    v1 = publish(registry, "a")
    # A publisher that crashed after claiming and uploading, before checksums.json.
    store.put("fmnist/versions/2/claim.json", b"{}")
    store.put("fmnist/versions/2/model.onnx", b"half")
    assert registry.versions() == [v1]
    with pytest.raises(RegistryError, match="missing or incomplete"):
        registry.promote(2)
    assert registry.production() is None
    assert publish(registry, "b") == 3  # the crashed number is never reused


def test_publish_rejects_bad_input(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="reserved"):
        registry.publish({"card.json": b"x"}, {}, {})
    with pytest.raises(RegistryError, match="invalid file name"):
        registry.publish({"../evil": b"x"}, {}, {})
    with pytest.raises(RegistryError, match="metrics is not JSON"):
        registry.publish({"model.onnx": b"x"}, {}, {"acc": object()})
    assert publish(registry, "a") == 1  # failed attempts did not burn version numbers
    with pytest.raises(RegistryError, match="invalid model family"):
        Registry(registry.store, "a/b")


def test_concurrent_publishes_get_distinct_versions(registry: Registry) -> None:
    barrier = threading.Barrier(6)
    results: list[int] = []

    def worker(i: int) -> None:
        barrier.wait()
        results.append(publish(registry, f"m{i}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert registry.versions() == [1, 2, 3, 4, 5, 6]
    for v in results:
        registry.verify(v)


def test_concurrent_promotions_exactly_one_wins(registry: Registry) -> None:
    base = publish(registry, "base")
    registry.promote(base)
    candidates = [publish(registry, f"c{i}") for i in range(4)]
    barrier = threading.Barrier(len(candidates))
    won: list[int] = []
    lost: list[str] = []

    def worker(version: int) -> None:
        barrier.wait()
        try:
            registry.promote(version, expected=base)
            won.append(version)
        except RegistryError as err:
            lost.append(str(err))

    threads = [threading.Thread(target=worker, args=(v,)) for v in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == len(candidates) - 1
    assert all("not the expected 1" in m or "moved" in m for m in lost)
    pointer = registry.production()
    assert pointer is not None and (pointer["version"], pointer["previous"]) == (won[0], [base])


def test_concurrent_default_promotions_serialize(registry: Registry) -> None:
    """With expected=CURRENT each promoter CASes from what it read: losers are refused,
    never silently overwritten, and the pointer's history stays consistent."""
    candidates = [publish(registry, f"c{i}") for i in range(4)]
    barrier = threading.Barrier(len(candidates))
    won: list[int] = []
    lost: list[str] = []

    def worker(version: int) -> None:
        barrier.wait()
        try:
            registry.promote(version)
            won.append(version)
        except RegistryError as err:
            lost.append(str(err))

    threads = [threading.Thread(target=worker, args=(v,)) for v in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won and len(won) + len(lost) == len(candidates)
    assert all("moved" in m for m in lost)
    pointer = registry.production()
    assert pointer is not None
    # Every winner is in the history exactly once, and the rollback stack mirrors it.
    moves = [h["version"] for h in pointer["history"]]
    assert sorted(moves) == sorted(won) and pointer["version"] == moves[-1]
    assert pointer["previous"] == moves[-2::-1]


def test_open_registry_resolves_local_paths_against_the_workspace(tmp_path: Path) -> None:
    from squeeze.registry import open_registry
    from squeeze.storage import S3Store

    local = open_registry("registry", "fam", base=tmp_path / "ws")
    assert local.store.url == str((tmp_path / "ws" / "registry").resolve())
    assert local.url(3, "model.onnx.gz") == f"{local.store.url}/fam/versions/3/model.onnx.gz"
    assert open_registry(str(tmp_path / "abs"), "fam", base=tmp_path / "ws").store.url == str(
        (tmp_path / "abs").resolve()
    )
    remote = open_registry("s3://bucket/pre", "fam", "http://127.0.0.1:9", base=tmp_path)
    assert isinstance(remote.store, S3Store) and remote.url(1, "card.json") == (
        "s3://bucket/pre/fam/versions/1/card.json"
    )
