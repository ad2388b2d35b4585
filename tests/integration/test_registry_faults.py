"""The registry against misbehaving S3 endpoints: moto's server behind a fault-injecting proxy
(tests/faulty_s3.py) that answers 409, ignores conditional headers or holds an upload, a socket
that accepts connections and never answers, and a publisher process killed mid-upload."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from squeeze.cli import main as cli
from squeeze.config.files import read_yaml
from squeeze.registry.registry import Registry, RegistryError
from squeeze.registry.store import ConditionsIgnored, Conflict, S3Store, Store, Unavailable
from tests.faulty_s3 import FaultyS3
from tests.integration.conftest import S3Endpoint

PROJECT = Path(__file__).resolve().parents[2]
FAMILY = "fmnist"
CONFLICT = (409, "ConditionalRequestConflict")


@pytest.fixture
def proxy(s3_endpoint: S3Endpoint) -> Iterator[FaultyS3]:
    """The fault-injecting proxy in front of the session's moto endpoint."""
    with FaultyS3(s3_endpoint.url) as faulty:
        yield faulty


def publish(registry: Registry, tag: str) -> int:
    """Publish a fake model whose bytes and card carry ``tag``."""
    return registry.publish({"model.onnx": f"onnx {tag}".encode()}, {"name": tag}, {"acc": 0.9})


def workspace(root: Path, registry: str, endpoint: str | None) -> Path:
    """A workspace whose params.yaml names the registry at ``registry`` through ``endpoint``."""
    root.mkdir(parents=True, exist_ok=True)
    params = read_yaml(PROJECT / "params.yaml")
    params["promote"] = {"registry": registry, "endpoint_url": endpoint, "family": FAMILY}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def squeeze(ws: Path, *argv: str) -> int:
    return cli.main(["-w", str(ws), *argv])


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


# -- row 5: 409 ConditionalRequestConflict is retried, not taken for "moved" or "taken" -----------


def test_a_409_on_the_pointer_is_retried_and_production_moves(
    s3_endpoint: S3Endpoint, s3_prefix: str, proxy: FaultyS3, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    direct = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    v1, v2 = publish(direct, "a"), publish(direct, "b")
    direct.promote(v1)
    ws = workspace(tmp_path / "ws", f"s3://{s3_endpoint.bucket}/{s3_prefix}", proxy.url)
    proxy.answer(*CONFLICT, match=f"/{s3_prefix}/{FAMILY}/production.json")
    assert squeeze(ws, "promote", str(v2)) == 0, capsys.readouterr().err
    assert f"version {v2} (was {v1})" in capsys.readouterr().out
    pointer = direct.production()
    assert pointer is not None and (pointer["version"], pointer["previous"]) == (v2, [v1])
    assert [move["version"] for move in pointer["history"]] == [v1, v2]
    pointer_puts = [r for r in proxy.seen if r.startswith("PUT") and "production.json" in r]
    assert len(pointer_puts) == 2 and all("if-match" in r for r in pointer_puts)


def test_a_409_on_a_claim_or_checksums_is_retried_not_taken(
    s3_endpoint: S3Endpoint, s3_prefix: str, proxy: FaultyS3
) -> None:
    registry = Registry(proxy.store(s3_prefix), FAMILY)
    proxy.answer(*CONFLICT, match=f"/{FAMILY}/versions/1/claim.json")
    assert publish(registry, "a") == 1  # the number was not burnt
    proxy.answer(*CONFLICT, match=f"/{FAMILY}/versions/2/checksums.json")
    assert publish(registry, "b") == 2  # not "already exists"
    direct = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    assert direct.versions() == [1, 2] and direct.incomplete() == []
    assert direct.fetch(2)["model.onnx"] == b"onnx b"


def test_409_every_time_is_a_conflict_and_production_stays(
    s3_endpoint: S3Endpoint, s3_prefix: str, proxy: FaultyS3
) -> None:
    direct = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    v1, v2 = publish(direct, "a"), publish(direct, "b")
    direct.promote(v1)
    proxy.answer(*CONFLICT, match=f"/{FAMILY}/production.json", times=100)
    start = time.monotonic()
    with pytest.raises(RegistryError) as excinfo:
        Registry(proxy.store(s3_prefix), FAMILY).promote(v2)
    assert time.monotonic() - start < 15  # bounded backoff
    message = str(excinfo.value)
    assert "409 ConditionalRequestConflict" in message and "moved" not in message
    # a Conflict is transient (an Unavailable): the promote task retries it
    assert isinstance(excinfo.value.__cause__, Conflict)
    assert isinstance(excinfo.value.__cause__, Unavailable)
    assert direct.production()["version"] == v1  # type: ignore[index]


# -- row 6: a store that ignores If-Match / If-None-Match -------------------------------------


def test_a_store_that_ignores_conditional_writes_is_refused(
    s3_endpoint: S3Endpoint, s3_prefix: str, proxy: FaultyS3, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    direct = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    v1 = publish(direct, "a")
    proxy.strip_conditions()
    with pytest.raises(ConditionsIgnored) as excinfo:
        publish(Registry(proxy.store(s3_prefix), FAMILY), "b")
    message = str(excinfo.value)
    assert f"S3 endpoint {proxy.url} ignores If-None-Match and If-Match" in message
    assert "Use a store that enforces conditional writes" in message
    ws = workspace(tmp_path / "ws", f"s3://{s3_endpoint.bucket}/{s3_prefix}", proxy.url)
    capsys.readouterr()
    assert squeeze(ws, "promote", str(v1)) == 1
    assert f"S3 endpoint {proxy.url} ignores" in one_line(capsys)
    # nothing was published or promoted, and the probes were deleted
    assert direct.versions() == [v1] and direct.incomplete() == []
    assert direct.production() is None
    assert direct.store.list("_squeeze/") == []
    # read-only commands write no probe: status still works on such a store
    assert squeeze(ws, "status") == 0


class Overlapping:
    """A store proxy for one of two racing publishers or promoters: ``before`` runs before the
    store call ``method`` on a key ending in ``suffix``, ``after`` after it."""

    def __init__(self, store: Store, method: str, suffix: str, before: Any, after: Any) -> None:
        self._store, self._method, self._suffix = store, method, suffix
        self._before, self._after = before, after

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if name != self._method:
            return real

        def call(key: str, *args: Any) -> Any:
            if key.endswith(self._suffix):
                self._before()
            result = real(key, *args)
            if key.endswith(self._suffix):
                self._after()
            return result

        return call


def race(workers: dict[str, Any]) -> dict[str, Any]:
    """Run each worker in a thread; its return value or the RegistryError it raised, by name."""
    outcomes: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            outcomes[name] = workers[name]()
        except RegistryError as err:
            outcomes[name] = err

    threads = [threading.Thread(target=run, args=(name,)) for name in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcomes


def checked_then_ignoring(proxy: FaultyS3, prefix: str, n: int) -> list[S3Store]:
    """``n`` stores that passed the probe while the endpoint enforced conditional writes; the
    endpoint then stops enforcing them (as after a swap to an older server behind the same
    name), so what the registry itself checks is what is left."""
    stores = [proxy.store(prefix) for _ in range(n)]
    for store in stores:
        store.check_conditional_writes()
    proxy.strip_conditions()
    return stores


def test_overlapping_publishes_never_return_the_other_runs_model(
    s3_endpoint: S3Endpoint, s3_prefix: str, proxy: FaultyS3
) -> None:
    a_store, b_store = checked_then_ignoring(proxy, s3_prefix, 2)
    listed, a_written, b_written = threading.Barrier(2), threading.Event(), threading.Event()
    # Both have listed before either claims (both pick version 1: the barrier is after the
    # listing, so neither can claim before the other's listing is done); A writes all of
    # version 1, then B overwrites all of it; then both read back what they published.
    a = Overlapping(a_store, "put_if_absent", "checksums.json", lambda: None,
                    lambda: (a_written.set(), b_written.wait(30)))  # fmt: skip
    b = Overlapping(b_store, "put_if_absent", "claim.json", lambda: a_written.wait(30),
                    lambda: None)  # fmt: skip
    b = Overlapping(b, "put_if_absent", "checksums.json", lambda: None, b_written.set)
    a, b = (Overlapping(s, "list", "", lambda: None, lambda: listed.wait(30)) for s in (a, b))
    outcomes = race({tag: lambda s=store, t=tag: publish(Registry(s, FAMILY), t)
                     for tag, store in (("a", a), ("b", b))})  # fmt: skip
    assert outcomes["b"] == 1, outcomes
    assert isinstance(outcomes["a"], RegistryError), outcomes
    assert "does not hold what this publish uploaded" in str(outcomes["a"])
    assert "If-None-Match" in str(outcomes["a"])
    direct = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    assert direct.fetch(1)["model.onnx"] == b"onnx b"


def test_overlapping_promotions_never_lose_an_update_silently(
    s3_endpoint: S3Endpoint, s3_prefix: str, proxy: FaultyS3
) -> None:
    direct = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    base, v_a, v_b = publish(direct, "base"), publish(direct, "a"), publish(direct, "b")
    direct.promote(base)
    a_store, b_store = checked_then_ignoring(proxy, s3_prefix, 2)
    read, a_written, b_written = threading.Barrier(2), threading.Event(), threading.Event()
    # Both read the pointer (base) before either writes; A writes, then B overwrites; then both
    # read back. Without If-Match both writes land: B's replaces A's.
    a = Overlapping(a_store, "put_if_match", "production.json", read.wait,
                    lambda: (a_written.set(), b_written.wait(30)))  # fmt: skip
    b = Overlapping(b_store, "put_if_match", "production.json",
                    lambda: (read.wait(), a_written.wait(30)), b_written.set)  # fmt: skip
    outcomes = race({"a": lambda: Registry(a, FAMILY).promote(v_a),
                     "b": lambda: Registry(b, FAMILY).promote(v_b)})  # fmt: skip
    assert outcomes["b"] is None, outcomes
    assert isinstance(outcomes["a"], RegistryError), outcomes
    message = str(outcomes["a"])
    assert f"lost this move to version {v_a}" in message and "does not enforce If-Match" in message
    pointer = direct.production()
    assert pointer is not None and pointer["version"] == v_b


# -- row 17: an endpoint that accepts connections and never answers ----------------------------


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_status_on_a_silent_endpoint_fails_within_seconds(
    silent_endpoint: str, s3_endpoint: S3Endpoint, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    ws = workspace(tmp_path / "ws", "s3://squeeze-test/registry", silent_endpoint)
    start = time.monotonic()
    assert squeeze(ws, "status") == 1
    took = time.monotonic() - start
    err = one_line(capsys)
    assert took < 18, took  # 3 attempts x 4 s read timeout + backoff (15 s), not 4 x 30 s
    assert f"S3 endpoint {silent_endpoint} accepted the connection but did not answer" in err
    assert "gave up after 3 attempts, 2 s to connect and 4 s per read each" in err


# -- row 18: a publisher killed mid-upload ------------------------------------------------------

PUBLISHER = """
import sys
from squeeze.registry.registry import Registry
from squeeze.registry.store import S3Store

bucket, prefix, endpoint = sys.argv[1:4]
store = S3Store(bucket, prefix, endpoint_url=endpoint)
files = {"model.onnx": b"onnx a", "tokenizer.bin": b"vocab"}
Registry(store, "fmnist").publish(files, {"name": "a"}, {"acc": 0.9})
"""


def test_a_publisher_killed_mid_upload_leaves_a_half_version_status_lists_and_clean_removes(
    s3_endpoint: S3Endpoint, s3_prefix: str, proxy: FaultyS3, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    held = proxy.hold(f"/{s3_prefix}/{FAMILY}/versions/1/card.json")
    publisher = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, s3_endpoint.bucket, s3_prefix, proxy.url],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert held.arrived.wait(60), publisher.communicate(timeout=5)[0]
        publisher.send_signal(signal.SIGKILL)  # mid-upload: after the claim and the model
        publisher.wait(timeout=30)
    finally:
        publisher.kill()
        held.release()
    registry = Registry(s3_endpoint.store(s3_prefix), FAMILY)
    assert registry.versions() == []
    [half] = registry.incomplete()
    assert half["version"] == 1 and half["claimed_at"]
    assert half["objects"] == ["claim.json", "model.onnx", "tokenizer.bin"]

    ws = workspace(tmp_path / "ws", f"s3://{s3_endpoint.bucket}/{s3_prefix}", s3_endpoint.url)
    capsys.readouterr()
    assert squeeze(ws, "status") == 0
    out = capsys.readouterr().out
    assert "versions: none" in out
    assert (
        f"half-published (no checksums.json; not versions): 1 (claimed {half['claimed_at']}, "
        "3 objects); squeeze clean-registry removes those claimed over 60 min ago"
    ) in out
    assert squeeze(ws, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["incomplete"] == [half]

    assert squeeze(ws, "clean-registry") == 0  # just claimed: may be a publish still uploading
    assert "removed half-published versions of 'fmnist': none; kept 1" in capsys.readouterr().out
    assert registry.incomplete() == [half]
    assert squeeze(ws, "clean-registry", "--grace", "0") == 0
    assert "removed half-published versions of 'fmnist': 1" in capsys.readouterr().out
    assert registry.store.list(f"{FAMILY}/") == []  # nothing of it is left
    assert registry.incomplete() == [] and publish(registry, "a") == 1
    registry.verify(1)
