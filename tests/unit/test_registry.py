"""Unit tests for the model registry on a local store."""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest

from squeeze.registry.registry import Damaged, Registry, RegistryError
from squeeze.registry.store import LocalStore, StoreError


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
    from squeeze.registry.registry import open_registry
    from squeeze.registry.store import S3Store

    local = open_registry("registry", "fam", base=tmp_path / "ws")
    assert local.store.url == str((tmp_path / "ws" / "registry").resolve())
    assert local.url(3, "model.onnx.xz") == f"{local.store.url}/fam/versions/3/model.onnx.xz"
    assert open_registry(str(tmp_path / "abs"), "fam", base=tmp_path / "ws").store.url == str(
        (tmp_path / "abs").resolve()
    )
    remote = open_registry("s3://bucket/pre", "fam", "http://127.0.0.1:9", base=tmp_path)
    assert isinstance(remote.store, S3Store) and remote.url(1, "card.json") == (
        "s3://bucket/pre/fam/versions/1/card.json"
    )


def test_damaged_version_names_the_key_and_version(registry: Registry, store: LocalStore) -> None:
    """Every way a version can be damaged raises Damaged with the object's location."""
    v1, v2, v3, v4 = (publish(registry, tag) for tag in "abcd")
    store.put(f"fmnist/versions/{v1}/model.onnx", b"tampered")
    (store.root / f"fmnist/versions/{v2}/card.json").unlink()
    store.put(f"fmnist/versions/{v3}/checksums.json", b"{not json")
    (store.root / f"fmnist/versions/{v4}/checksums.json").unlink()
    cases = [
        (v1, "model.onnx", "checksum mismatch"),
        (v2, "card.json", "is missing"),
        (v3, "checksums.json", "not valid JSON"),
        (v4, "checksums.json", "incomplete"),
    ]

    def download(version: int) -> None:
        registry.download(version, store.root.parent / "dl")

    for version, name, problem in cases:
        # card() reads only the card, so a damaged model.onnx does not stop it.
        card = [registry.card] if name != "model.onnx" else []
        for call in (registry.verify, registry.fetch, registry.promote, download, *card):
            with pytest.raises(Damaged, match=problem) as excinfo:
                call(version)
            damaged = excinfo.value
            assert (damaged.key, damaged.version) == (registry.url(version, name), version)
            assert damaged.key in str(damaged)
    assert not (store.root.parent / "dl").exists() and registry.production() is None
    # Prefect pickles a failed task's exception: the attributes survive.
    again = pickle.loads(pickle.dumps(damaged))
    assert (str(again), again.key, again.version) == (str(damaged), damaged.key, v4)


def test_fetch_checks_the_pointer_checksums_too(registry: Registry, store: LocalStore) -> None:
    version = publish(registry, "a")
    registry.promote(version)
    pointer = registry.production()
    assert pointer is not None
    files = registry.fetch(version, pointer["sha256"])
    assert set(files) == {"model.onnx", "card.json", "metrics.json"}
    assert files["model.onnx"] == b"onnx a"
    # Rewritten after promotion together with its checksum: checksums.json alone cannot tell.
    forged = json.loads(store.get("fmnist/versions/1/checksums.json"))
    forged["files"]["model.onnx"]["sha256"] = hashlib.sha256(b"forged").hexdigest()
    store.put("fmnist/versions/1/model.onnx", b"forged")
    store.put("fmnist/versions/1/checksums.json", json.dumps(forged).encode())
    registry.verify(version)
    with pytest.raises(Damaged, match="changed after it was promoted") as excinfo:
        registry.fetch(version, pointer["sha256"])
    assert excinfo.value.key == registry.url(version, "model.onnx")


def test_publishing_the_same_files_again_returns_that_version(
    registry: Registry, store: LocalStore
) -> None:
    v1 = publish(registry, "a")
    # The card differs (and its publication time always does): the files decide.
    assert registry.publish({"model.onnx": b"onnx a"}, {"name": "other"}, {"acc": 0.1}) == v1
    assert registry.versions() == [v1] and registry.card(v1)["name"] == "a"
    assert publish(registry, "b") == 2  # other files: a new version
    # Same bytes under another name are other files.
    assert registry.publish({"model.bin": b"onnx a"}, {}, {}) == 3
    # A damaged version is never handed out again: the same files get a fresh, intact version.
    store.put("fmnist/versions/1/model.onnx", b"tampered")
    assert publish(registry, "a") == 4
    registry.verify(4)
    assert publish(registry, "a") == 4


class FailAfter:
    """A store whose ``method`` on a key ending in ``suffix`` does its work once, then raises
    the StoreError of a lost response (the request reached the store; the reply did not)."""

    def __init__(self, store: LocalStore, method: str, suffix: str) -> None:
        self._store, self._method, self._suffix, self.fired = store, method, suffix, False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if name != self._method:
            return real

        def call(key: str, *args: Any) -> Any:
            result = real(key, *args)
            if key.endswith(self._suffix) and not self.fired:
                self.fired = True
                raise StoreError(f"connection reset while writing {key!r}")
            return result

        return call


@pytest.mark.parametrize(
    ("method", "suffix", "survivor"),
    [
        ("put", "/card.json", 2),  # before checksums.json: version 1 stays incomplete
        ("put_if_absent", "/checksums.json", 1),  # complete, but the publisher never heard
        ("get", "/checksums.json", 1),  # complete; the publisher's verification failed
    ],
)
def test_retried_publish_after_a_fault_leaves_one_version(
    registry: Registry, store: LocalStore, method: str, suffix: str, survivor: int
) -> None:
    faulty = Registry(FailAfter(store, method, suffix), "fmnist")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="connection reset"):
        publish(faulty, "a")
    assert publish(faulty, "a") == survivor  # the retry
    assert registry.versions() == [survivor]
    assert publish(registry, "a") == survivor  # and any later publish of the same model
    registry.verify(survivor)
