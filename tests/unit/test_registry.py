"""Unit tests for the model registry on a local store."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import pickle
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from squeeze.registry import registry as registry_module
from squeeze.registry.package import pack
from squeeze.registry.registry import HISTORY_LIMIT, Damaged, Registry, RegistryError
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


# -- the production pointer: damaged, capped, read back ------------------------------------------


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"{}", "key 'version' is missing"),
        (b'{"version": "3", "sha256": {"m": "x"}}', "key 'version' is '3', not a version number"),
        (b'{"version": 1}', "key 'sha256' is missing"),
        (b'{"version": 1, "sha256": {"m": "x"}, "previous": [0]}', "key 'previous' is [0]"),
        (b"[1]", "it holds a JSON list, not an object"),
        (b"{not json", "it is not valid JSON"),
    ],
)
def test_a_malformed_pointer_is_damaged_naming_the_key(
    registry: Registry, store: LocalStore, document: bytes, problem: str, tmp_path: Path
) -> None:
    v1 = publish(registry, "a")
    store.put("fmnist/production.json", document)
    where = f"{store.url}/fmnist/production.json"
    for call in (registry.production, registry.rollback, lambda: registry.promote(v1),
                 lambda: registry.download_production(tmp_path / "prod")):  # fmt: skip
        with pytest.raises(Damaged, match=re.escape(problem)) as excinfo:
            call()
        assert (excinfo.value.key, excinfo.value.version) == (where, None)
        assert "squeeze promote VERSION replaces the pointer" in str(excinfo.value)
    # an operator's promote replaces it
    registry.promote(v1, replace_damaged=True)
    pointer = registry.production()
    assert pointer is not None and (pointer["version"], pointer["previous"]) == (v1, [])
    assert pointer["history"][-1]["replaced_damaged_pointer"] is True


def test_history_and_rollback_stack_keep_the_last_moves(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "HISTORY_LIMIT", 3)
    versions = [publish(registry, tag) for tag in "abcde"]
    for version in versions:
        registry.promote(version)
    pointer = registry.production()
    assert pointer is not None
    assert [move["version"] for move in pointer["history"]] == [3, 4, 5]
    assert pointer["history_dropped"] == 2 and pointer["previous"] == [4, 3, 2]
    assert registry.versions() == versions  # what fell off is still there
    registry.promote(1)
    assert registry.production()["history_dropped"] == 3  # type: ignore[index]
    assert registry_module.HISTORY_LIMIT == 3 and HISTORY_LIMIT == 100  # the real one


def test_every_move_records_its_promotion_id_in_the_history(registry: Registry) -> None:
    v1, v2 = publish(registry, "a"), publish(registry, "b")
    registry.promote(v1)
    first = registry.production()
    registry.promote(v2)
    pointer = registry.production()
    assert first is not None and pointer is not None
    assert [m["promotion_id"] for m in pointer["history"]] == [
        first["promotion_id"], pointer["promotion_id"]
    ]  # fmt: skip


# -- row 7: production downloads check the pointer's sha256 ---------------------------------------


def test_download_production_checks_the_pointer_checksums(
    registry: Registry, store: LocalStore, tmp_path: Path
) -> None:
    with pytest.raises(RegistryError, match="nothing is in production"):
        registry.download_production(tmp_path / "none")
    version = publish(registry, "a")
    registry.promote(version)
    pointer = registry.production()
    out = registry.download_production(tmp_path / "prod", pointer)
    assert (out / "model.onnx").read_bytes() == b"onnx a"
    # rewritten after promotion together with its checksum: checksums.json alone cannot tell
    forged = json.loads(store.get("fmnist/versions/1/checksums.json"))
    forged["files"]["model.onnx"]["sha256"] = hashlib.sha256(b"forged").hexdigest()
    store.put("fmnist/versions/1/model.onnx", b"forged")
    store.put("fmnist/versions/1/checksums.json", json.dumps(forged).encode())
    registry.download(version, tmp_path / "plain")  # a plain download cannot tell
    for pointer_arg in (pointer, None):
        with pytest.raises(Damaged, match="changed after it was promoted") as excinfo:
            registry.download_production(tmp_path / "prod", pointer_arg)
        assert excinfo.value.key == registry.url(version, "model.onnx")
    assert (tmp_path / "prod" / "model.onnx").read_bytes() == b"onnx a"  # left as it was


# -- row 16: "the same model" is the same ONNX bytes ----------------------------------------------

ONNX = b"ONNX bytes of a model, as an export wrote them"


def test_onnx_sha256_is_recorded_and_ignores_how_the_model_was_compressed(
    registry: Registry, store: LocalStore
) -> None:
    digest = hashlib.sha256(ONNX).hexdigest()
    v1 = registry.publish({"model.onnx.xz": pack(ONNX)}, {}, {})
    table = json.loads(store.get("fmnist/versions/1/checksums.json"))["files"]
    assert table["model.onnx.xz"]["onnx_sha256"] == digest
    # another liblzma (here: another preset) packs the same ONNX into other bytes
    other = lzma.compress(ONNX, format=lzma.FORMAT_XZ, preset=1)
    assert other != pack(ONNX)
    v2 = registry.publish({"model.onnx.xz": other}, {}, {})
    assert v2 != v1 and registry.onnx_sha256(v1) == registry.onnx_sha256(v2) == digest
    # versions published before onnx_sha256 was recorded: unpacked to find it
    del table["model.onnx.xz"]["onnx_sha256"]
    store.put("fmnist/versions/1/checksums.json", json.dumps({"files": table}).encode())
    assert registry.onnx_sha256(v1) == digest
    v3 = registry.publish({"model.onnx.gz": gzip.compress(ONNX)}, {}, {})
    v4 = registry.publish({"model.onnx": ONNX}, {}, {})
    assert registry.onnx_sha256(v3) == registry.onnx_sha256(v4) == digest
    assert registry.onnx_sha256(publish(registry, "no model")) is not None  # bare model.onnx
    assert registry.onnx_sha256(registry.publish({"weights.bin": b"w"}, {}, {})) is None


def test_a_shipped_model_that_does_not_decompress_is_not_published(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="model.onnx.xz does not decompress"):
        registry.publish({"model.onnx.xz": b"not xz"}, {}, {})
    assert registry.store.list() == [] and publish(registry, "a") == 1


# -- row 18: half-versions are listed and cleaned --------------------------------------------------


def half_version(store: LocalStore, version: int, claimed_at: str | None) -> None:
    """What a publisher killed mid-upload leaves: a claim (or none), a model and its index entry."""
    if claimed_at is not None:
        store.put(f"fmnist/versions/{version}/claim.json",
                  json.dumps({"claimed_at": claimed_at, "token": "t"}).encode())  # fmt: skip
    store.put(f"fmnist/versions/{version}/model.onnx", b"half")
    store.put(f"fmnist/content/{version:064x}.json", json.dumps({"version": version}).encode())


def test_half_versions_are_listed_never_as_versions_and_cleaned_after_a_grace(
    registry: Registry, store: LocalStore
) -> None:
    v1 = publish(registry, "a")
    half_version(store, 2, "2026-12-01T10:00:00+00:00")
    half_version(store, 3, "2026-12-01T11:30:00+00:00")
    half_version(store, 4, None)  # its claim is gone: no age
    store.put("fmnist/versions/5/claim.json", b"{broken")  # an unreadable claim: no age
    assert registry.versions() == [v1]
    assert registry.incomplete() == [
        {"version": 2, "claimed_at": "2026-12-01T10:00:00+00:00",
         "objects": ["claim.json", "model.onnx"]},
        {"version": 3, "claimed_at": "2026-12-01T11:30:00+00:00",
         "objects": ["claim.json", "model.onnx"]},
        {"version": 4, "claimed_at": None, "objects": ["model.onnx"]},
        {"version": 5, "claimed_at": None, "objects": ["claim.json"]},
    ]  # fmt: skip
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # 2 h after 2's claim, 30 min after 3's
    assert registry.clean(now=now) == [2, 4, 5]
    assert [half["version"] for half in registry.incomplete()] == [3]
    assert not store.exists(f"fmnist/content/{2:064x}.json")  # its index entry went too
    assert store.exists(f"fmnist/content/{3:064x}.json")
    assert registry.clean(grace_s=600, now=now) == [3]
    assert registry.incomplete() == [] and registry.versions() == [v1]
    registry.verify(v1)
    assert publish(registry, "a") == v1 and publish(registry, "b") == 2


def test_clean_keeps_a_half_version_that_completed_meanwhile(
    registry: Registry, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    half_version(store, 1, "2026-12-01T10:00:00+00:00")
    listed = registry.incomplete()
    store.put("fmnist/versions/1/checksums.json", b"{}")  # the slow publisher finished
    monkeypatch.setattr(registry, "incomplete", lambda: listed)
    assert registry.clean(grace_s=0) == [] and store.exists("fmnist/versions/1/model.onnx")
