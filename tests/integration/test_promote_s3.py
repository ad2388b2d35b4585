"""Gate and promote against a real S3 endpoint (moto's server), with a small real model.

A tiny ConvNet is trained for a few hundred steps on real Fashion-MNIST; its ONNX export is
the teacher and the `kd` candidate, and its dynamic int8 quantization is `kd_int8` (smaller,
no torch source). Workspaces hold just what gate and promote read: params.yaml, the data profile,
the val split (decisions) and the test split (the first TEST_IMAGES images of t10k, so a consumer
can rebuild it from the raw files), the exports, metrics/candidates.json and model records.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from flows.artifacts import promote_markdown
from flows.in_process import TASKS
from squeeze.cli import main as cli
from squeeze.config.files import load_params, read_yaml
from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.data.idx import read_split
from squeeze.data.spec import DataSpec, Split
from squeeze.data.splits import save_split
from squeeze.measure.export import export_onnx
from squeeze.measure.runtime import latencies, measure_logits
from squeeze.measure.stats import paired_table
from squeeze.nets.models import build_model
from squeeze.registry.registry import Registry, RegistryError
from squeeze.registry.store import StoreError
from stages import gate as gate_stage
from stages import production as production_stage
from stages import promote as promote_stage
from stages.promote import ProductionDamaged
from tests.integration.conftest import S3Endpoint, StopBeforePointerMove, artifacts_of

PROJECT = Path(__file__).resolve().parents[2]
FAMILY = "fmnist"
TEST_IMAGES = 2000


@dataclass(frozen=True)
class Model:
    """An ONNX file, its evaluate record (as metrics/candidates.json holds it, less the paired
    table vs the teacher) and its per-image correctness on val."""

    path: Path
    record: dict[str, Any]
    correct: np.ndarray


@dataclass(frozen=True)
class Lab:
    """The trained models, the data spec they were trained for and the splits they were
    measured on."""

    fp32: Model
    int8: Model
    spec: DataSpec
    val: Split
    test: Split
    data_dir: Path


def train_tiny(train: Split, spec: DataSpec, steps: int = 300) -> torch.nn.Module:
    """A 16/32-channel ConvNet, Adam for a few hundred steps: about 60 % test accuracy."""
    torch.manual_seed(0)
    model = build_model({"name": "convnet", "channels": [16, 32], "convs_per_stage": 1,
                         "dropout": 0.0, "batchnorm": True}, spec)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    images, labels = torch.tensor(train.images), torch.tensor(train.labels)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def lab(
    fmnist: dict[str, Split], fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Lab:
    """Train, export and quantize once per module; measure both exports like evaluate does."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("models")
    torch.set_num_threads(1)
    spec = DataSpec.measure(fmnist["train"], load_params(PROJECT).ingest.classes)
    model = train_tiny(fmnist["train"], spec)
    full = read_split(fmnist_dir, "test")
    test = Split(full.images[:TEST_IMAGES], full.labels[:TEST_IMAGES])
    export_onnx(model, folder / "fp32.onnx")
    quantize_dynamic(folder / "fp32.onnx", folder / "int8.onnx", weight_type=QuantType.QInt8)
    splits = {"val": fmnist["val"], "test": test}
    with torch.no_grad():
        reference = model(torch.tensor(splits["val"].images)).argmax(1).numpy()
    cfg = workspace_params("unused", None).evaluate
    models = {}
    for name in ("fp32", "int8"):  # int8's source is the fp32 export, fp32's the torch model
        record, logits = measure_logits(
            folder / f"{name}.onnx", splits, list(spec.classes), cfg, reference
        )
        models[name] = Model(
            folder / f"{name}.onnx", record, logits["val"].argmax(1) == splits["val"].labels
        )
        reference = logits["val"].argmax(1)
    timed = latencies({name: m.path for name, m in models.items()}, splits["val"].images[0], cfg)
    for name, m in models.items():
        m.record.update(timed[name])  # the record dict, not the frozen field
    return Lab(models["fp32"], models["int8"], spec, splits["val"], test, fmnist_dir)


def workspace_params(registry: str, endpoint: str | None, **gate: Any) -> Params:
    """The project's params with the graph teacher -> kd -> kd_int8, fast measurement, gates
    this tiny model can pass, and the registry at ``registry``."""
    data = read_yaml(PROJECT / "params.yaml")
    distill, quantize = next(iter(data["distill"].values())), next(iter(data["quantize"].values()))
    data |= {
        "distill": {"kd": distill | {"upstream": "teacher"}},
        "prune": {},
        "quantize": {"kd_int8": quantize | {"upstream": "kd"}},
        "merge": {},
    }
    data["evaluate"] |= {"threads": 1, "warmup": 2, "runs": 20, "throughput_batch": 1000}
    data["gate"] |= {
        "min_accuracy": 0.5, "max_accuracy_drop": 0.05, "max_class_drop": 0.3,
        "max_size_bytes": 1_000_000, "max_latency_ms": 50.0, "min_agreement": 0.9,
        "policy": "smallest", "alpha": 0.05,
        # 500 validation images of a tiny model: a wide interval; and its dynamic int8 scores
        # as onnxruntime's int8 kernels for this CPU round: on an AVX-512 VNNI Xeon 1 point
        # under fp32 (one-sided bound -0.022), so the margin leaves room for that
        "noninferiority_margin": 0.03,
    } | gate  # fmt: skip
    data["promote"] = {"registry": registry, "endpoint_url": endpoint, "family": FAMILY}
    return Params.model_validate(data)


class Bench:
    """A workspace folder holding what gate and promote read; candidates are added per round."""

    def __init__(self, root: Path, lab: Lab, params: Params) -> None:
        self.root, self.lab, self.ws = root, lab, Workspace(root)
        (root / "params.yaml").parent.mkdir(parents=True, exist_ok=True)
        (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
        self.params = load_params(root)
        save_split(lab.val, self.ws.split("val"))
        save_split(lab.test, self.ws.split("test"))
        write_json(self.ws.fingerprint, {"sha256": "d" * 64, "files": {}})
        write_json(self.ws.profile, lab.spec.to_json())
        self.candidates: dict[str, dict[str, Any]] = {}
        self.add("teacher", lab.fp32, "train", [])
        self.add("kd", lab.fp32, "distill", ["teacher"])

    def add(self, name: str, model: Model, method: str, upstream: list[str]) -> None:
        """Make ``model`` the export of candidate ``name``; record it like evaluate would."""
        self.ws.export(name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.path, self.ws.export(name))
        self.candidates[name] = {"name": name, "method": method, "upstream": upstream,
                                 **model.record,
                                 "val_vs_teacher": paired_table(model.correct,
                                                                self.lab.fp32.correct)}  # fmt: skip
        if method != "quantize":  # quantized models exist only as ONNX: lineage from params
            write_json(self.ws.model(name) / "model.json",
                       {"name": name, "method": method, "upstream": upstream})  # fmt: skip
        write_json(self.ws.metrics("candidates"), self.candidates)

    def gate(self) -> dict[str, Any]:
        gate_stage.run(self.root, self.params)
        return read_json(self.ws.metrics("gate"))

    def promote(self) -> dict[str, Any]:
        promote_stage.run(self.root, self.params)
        return read_json(self.ws.metrics("promote"))

    def cli(self, *argv: str) -> int:
        return cli.main(["-w", str(self.root), *argv])


@pytest.fixture
def registry_url(s3_endpoint: S3Endpoint, s3_prefix: str) -> str:
    return f"s3://{s3_endpoint.bucket}/{s3_prefix}"


@pytest.fixture
def bench(tmp_path: Path, lab: Lab, s3_endpoint: S3Endpoint, registry_url: str) -> Bench:
    return Bench(tmp_path / "ws", lab, workspace_params(registry_url, s3_endpoint.url))


@pytest.fixture
def registry(s3_endpoint: S3Endpoint, s3_prefix: str) -> Registry:
    """The test's registry, with a store that does not retry (faults stay fast)."""
    return Registry(s3_endpoint.store(s3_prefix, max_attempts=1), FAMILY)


@pytest.fixture
def fast_failing(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> Registry:
    """Make promote use the non-retrying registry, so a dead endpoint fails at once."""
    monkeypatch.setattr(promote_stage, "registry_of", lambda root, params: registry)
    return registry


def test_promote_promote_again_and_roll_back(
    bench: Bench, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    # Round 1: kd and the teacher are the same file; the name breaks the tie.
    assert bench.gate()["challenger"] == "kd"
    first = bench.promote()
    assert (first["outcome"], first["registry"]["published"], first["champion"]) == (
        "promoted", 1, None)  # fmt: skip
    assert "nothing is in production yet" in first["reasons"]
    # Round 2: the int8 model is smaller and about as accurate: it beats the re-measured v1.
    bench.add("kd_int8", bench.lab.int8, "quantize", ["kd"])
    assert bench.gate()["challenger"] == "kd_int8"
    second = bench.promote()
    assert second["outcome"] == "promoted", second["reasons"]
    assert second["champion"]["version"] == 1 and second["champion"]["failed_gates"] == []
    measured = second["champion"]["measured"]
    assert measured["val_accuracy"] == bench.lab.fp32.record["val_accuracy"]
    assert second["comparison"]["noninferior"] and second["comparison"]["table"]
    assert (second["registry"]["published"], second["registry"]["production"]) == (2, 2)
    card = registry.card(2)
    assert card["model"]["name"] == "kd_int8" and card["registry"]["version"] == 2
    assert [n["name"] for n in card["lineage"]["upstream_chain"]] == ["kd_int8", "kd", "teacher"]
    assert card["decision"]["champion_version"] == 1 and card["gate"]["passed"]
    # Round 3: nothing changed, so nothing is published.
    third = bench.promote()
    assert third["outcome"] == "already_in_production" and registry.versions() == [1, 2]
    # Operations: roll back, then promote 2 again by hand.
    capsys.readouterr()
    assert bench.cli("rollback") == 0
    assert "version 1 (rolled back from 2)" in capsys.readouterr().out
    assert bench.cli("status", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["production"]["version"] == 1 and info["versions"] == [1, 2]
    assert info["production"]["verified"] and info["production"]["model"]["name"] == "kd"
    assert info["last_decision"]["source"] == "metrics/promote.json"
    assert bench.cli("promote", "2") == 0 and registry.production()["version"] == 2  # type: ignore[index]


def test_two_concurrent_promotions_exactly_one_wins(
    tmp_path: Path, lab: Lab, s3_endpoint: S3Endpoint, registry_url: str,
    registry: Registry, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    params = workspace_params(registry_url, s3_endpoint.url)
    runs = [Bench(tmp_path / f"ws{i}", lab, params) for i in (1, 2)]
    runs[1].add("kd_int8", lab.int8, "quantize", ["kd"])
    for run in runs:
        run.gate()
    # Both have read "nothing in production" before either publishes.
    barrier, publish = threading.Barrier(2), Registry.publish

    def publish_together(self: Registry, *args: Any, **kwargs: Any) -> int:
        barrier.wait(timeout=60)
        return publish(self, *args, **kwargs)

    monkeypatch.setattr(Registry, "publish", publish_together)
    outcomes: dict[int, Any] = {}

    def attempt(i: int) -> None:
        try:
            outcomes[i] = runs[i].promote()["registry"]["published"]
        except RegistryError as err:
            outcomes[i] = err

    threads = [threading.Thread(target=attempt, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [v for v in outcomes.values() if isinstance(v, int)]
    lost = [e for e in outcomes.values() if isinstance(e, RegistryError)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert "production" in str(lost[0])
    assert registry.production()["version"] == won[0]  # type: ignore[index]
    assert registry.versions() == [1, 2]  # the loser's version is complete, just not production


def test_endpoint_stopped_between_upload_and_pointer_move(
    bench: Bench, fast_failing: Registry, s3_endpoint: S3Endpoint, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from prefect.states import Failed

    bench.gate()
    bench.promote()
    bench.add("kd_int8", bench.lab.int8, "quantize", ["kd"])
    bench.gate()
    dying = Registry(StopBeforePointerMove(fast_failing.store, s3_endpoint), FAMILY)  # type: ignore[arg-type]
    monkeypatch.setattr(promote_stage, "registry_of", lambda root, params: dying)
    with pytest.raises(RegistryError, match="cannot reach S3 endpoint") as excinfo:
        bench.promote()
    # The flow's task would retry this: the cause is a StoreError.
    assert TASKS["promote"].retry_condition_fn(None, None, Failed(data=excinfo.value))
    s3_endpoint.start()
    assert fast_failing.production()["version"] == 1  # type: ignore[index]
    assert fast_failing.versions() == [1, 2]  # uploaded and verified, never promoted
    assert bench.cli("pull-production", str(tmp_path / "prod")) == 0
    assert run_onnx(tmp_path / "prod" / "model.onnx", bench.lab.test) == pytest.approx(
        bench.lab.fp32.record["test_accuracy"], abs=1e-5
    )
    # The retry (here: a re-run) promotes on top of the intact production; publish is idempotent
    # by content, so it promotes the version already uploaded instead of a duplicate.
    monkeypatch.setattr(promote_stage, "registry_of", lambda root, params: fast_failing)
    assert bench.promote()["registry"]["production"] == 2
    assert fast_failing.versions() == [1, 2]


def run_onnx(path: Path, test: Split) -> float:
    """Accuracy of an ONNX model in a stock onnxruntime session."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"pixels": test.images})[0]
    return round(float((logits.argmax(1) == test.labels).mean()), 5)


def test_corrupted_object_is_caught_by_its_checksum(
    bench: Bench, fast_failing: Registry, s3_endpoint: S3Endpoint, s3_prefix: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    from prefect.states import Failed

    bench.gate()
    bench.promote()
    s3 = s3_endpoint.client()

    def tamper(version: int) -> None:
        key = f"{s3_prefix}/{FAMILY}/versions/{version}/model.onnx.xz"
        s3.put_object(Bucket=s3_endpoint.bucket, Key=key, Body=b"not the model")

    publish = Registry.publish

    def publish_then_tamper(self: Registry, *args: Any, **kwargs: Any) -> int:
        version = publish(self, *args, **kwargs)
        tamper(version)  # after the upload's own verification, before the pointer moves
        return version

    monkeypatch.setattr(Registry, "publish", publish_then_tamper)
    bench.add("kd_int8", bench.lab.int8, "quantize", ["kd"])
    bench.gate()
    with pytest.raises(
        RegistryError, match="checksum mismatch.*versions/2/model.onnx.xz"
    ) as excinfo:
        bench.promote()
    assert not TASKS["promote"].retry_condition_fn(None, None, Failed(data=excinfo.value))
    assert fast_failing.production()["version"] == 1  # type: ignore[index]
    # A damaged production is reported by status and refused by pull-production.
    tamper(1)
    capsys.readouterr()
    assert bench.cli("status") == 1
    assert "checksums: FAILED: checksum mismatch" in capsys.readouterr().out
    assert bench.cli("pull-production", str(tmp_path / "prod")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum mismatch" in err
    assert not (tmp_path / "prod").exists()


def test_a_damaged_champion_is_replaced_by_a_valid_challenger(
    bench: Bench, registry: Registry, s3_endpoint: S3Endpoint, s3_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bench.gate()
    assert bench.promote()["registry"]["production"] == 1
    key = f"{s3_prefix}/{FAMILY}/versions/1/model.onnx.xz"
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=key, Body=b"bit rot")
    bench.add("kd_int8", bench.lab.int8, "quantize", ["kd"])
    bench.gate()
    capsys.readouterr()
    result = bench.promote()
    log = capsys.readouterr().out
    assert f"production version 1 is damaged (s3://{s3_endpoint.bucket}/{key})" in log
    assert result["outcome"] == "promoted" and result["registry"]["production"] == 2
    assert result["champion"]["damaged"].endswith("versions/1/model.onnx.xz")
    assert result["champion"]["failed_gates"] == ["checksums"]
    assert "the champion fails today's gates: checksums" in result["reasons"]
    registry.verify(2)


def test_damaged_production_with_no_passing_candidate_is_refused_naming_it(
    bench: Bench, registry: Registry, s3_endpoint: S3Endpoint, s3_prefix: str, registry_url: str
) -> None:
    bench.gate()
    assert bench.promote()["registry"]["production"] == 1
    production_stage.run(bench.root, bench.params)
    assert read_json(bench.ws.production) == {"damaged": None}
    key = f"{s3_prefix}/{FAMILY}/versions/1/model.onnx.xz"
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=key, Body=b"bit rot")
    production_stage.run(bench.root, bench.params)  # what makes DVC and the flow re-run promote
    damaged = f"s3://{s3_endpoint.bucket}/{key}"
    assert read_json(bench.ws.production) == {"damaged": damaged}
    strict = workspace_params(registry_url, s3_endpoint.url, min_accuracy=0.999)
    (bench.root / "params.yaml").write_text(yaml.safe_dump(strict.model_dump(mode="json")))
    bench.params = load_params(bench.root)
    assert bench.gate()["challenger"] is None
    with pytest.raises(ProductionDamaged, match=rf"damaged \({damaged}\) and no candidate passed"):
        bench.promote()  # before: promote.json said "unchanged", the run exited 0
    result = read_json(bench.ws.metrics("promote"))
    assert result["outcome"] == "nothing_passed" and result["registry"]["damaged"] == damaged
    assert "is damaged" in promote_markdown(bench.root, bench.params, result)  # no crash
    assert registry.production()["version"] == 1  # nothing promoted over it, nothing removed


def test_an_unreadable_production_pointer_is_replaced_by_a_passing_challenger(
    bench: Bench, registry: Registry, s3_endpoint: S3Endpoint, s3_prefix: str
) -> None:
    bench.gate()
    assert bench.promote()["registry"]["production"] == 1
    key = f"{s3_prefix}/{FAMILY}/production.json"
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=key, Body=b"{}")
    production_stage.run(bench.root, bench.params)
    assert read_json(bench.ws.production)["damaged"] == f"s3://{s3_endpoint.bucket}/{key}"
    result = bench.promote()
    assert result["outcome"] == "promoted" and result["champion"]["failed_gates"] == ["checksums"]
    assert registry.damaged_production() is None and registry.production()["version"] == 1


CONSUMER = r"""
import gzip, hashlib, json, lzma, sys
import boto3, numpy as np, onnxruntime as ort

endpoint, bucket, prefix, family, data_dir, count = sys.argv[1:7]
s3 = boto3.client("s3", endpoint_url=endpoint)
def get(key):
    return s3.get_object(Bucket=bucket, Key=f"{prefix}/{family}/{key}")["Body"].read()
pointer = json.loads(get("production.json"))
shipped = get(pointer["path"] + "/model.onnx.xz")
assert hashlib.sha256(shipped).hexdigest() == pointer["sha256"]["model.onnx.xz"]
model = lzma.decompress(shipped)  # the standard .xz container (xz -d)
card = json.loads(get(pointer["path"] + "/card.json"))
def idx(name):  # an IDX file: zero, zero, type, ndim, big-endian dims, data
    blob = gzip.decompress(open(f"{data_dir}/{name}", "rb").read())
    dims = np.frombuffer(blob, ">u4", blob[3], offset=4)
    return np.frombuffer(blob, np.uint8, offset=4 + 4 * blob[3]).reshape(dims)
inp, out = card["input"], card["output"]
assert inp["layout"] == "NHWC", inp
images = idx("t10k-images-idx3-ubyte.gz")[: int(count)].reshape(-1, *inp["shape"][1:])
labels = idx("t10k-labels-idx1-ubyte.gz")[: int(count)]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
assert sess.get_inputs()[0].name == inp["name"], sess.get_inputs()[0].name
batch = card["evaluation"]["batch"]  # dynamic int8 scales activations per batch
logits = np.concatenate([
    sess.run([out["name"]], {inp["name"]: images[i : i + batch].astype(inp["dtype"])})[0]
    for i in range(0, len(images), batch)
])
assert logits.shape == (len(images), len(card["classes"]))
print(json.dumps({
    "accuracy": round(float((logits.argmax(1) == labels).mean()), 5),
    "card_accuracy": card["metrics"]["test_accuracy"],
    "squeeze_imported": any(m.split(".")[0] in ("squeeze", "stages") for m in sys.modules),
}))
"""


def test_production_model_runs_with_plain_boto3_and_onnxruntime(
    bench: Bench, s3_endpoint: S3Endpoint, s3_prefix: str, tmp_path: Path
) -> None:
    bench.add("kd_int8", bench.lab.int8, "quantize", ["kd"])
    bench.gate()
    assert bench.promote()["challenger"]["name"] == "kd_int8"
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    args = [s3_endpoint.url, s3_endpoint.bucket, s3_prefix, FAMILY, str(bench.lab.data_dir)]
    proc = subprocess.run(
        [sys.executable, "-I", str(script), *args, str(TEST_IMAGES)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["accuracy"] == result["card_accuracy"] == bench.lab.int8.record["test_accuracy"]
    assert not result["squeeze_imported"]


def test_a_failing_gate_promotes_nothing(
    tmp_path: Path, lab: Lab, s3_endpoint: S3Endpoint, s3_prefix: str, registry_url: str
) -> None:
    params = workspace_params(registry_url, s3_endpoint.url, min_accuracy=0.99)
    bench = Bench(tmp_path / "ws", lab, params)
    report = bench.gate()
    assert report["challenger"] is None and report["outcome"] == "nothing_passed"
    result = bench.promote()
    assert (result["outcome"], result["promoted"], result["registry"]["published"]) == (
        "nothing_passed", False, None)  # fmt: skip
    assert any("kd: " in r and "(accuracy)" in r for r in result["reasons"])
    listing = s3_endpoint.client().list_objects_v2(Bucket=s3_endpoint.bucket, Prefix=s3_prefix)
    assert listing["KeyCount"] == 0


# -- CLI failures: one line, exit status 1, no secret -------------------------------------------


@pytest.fixture
def cli_workspace(tmp_path: Path, lab: Lab, s3_endpoint: S3Endpoint, registry_url: str) -> Path:
    """A workspace whose registry holds version 1 (kd) in production."""
    params = workspace_params(registry_url, s3_endpoint.url)
    ws = Bench(tmp_path / "ws", lab, params)
    ws.gate()
    ws.promote()
    return ws.root


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    return captured.err


def test_cli_no_such_version_and_nothing_to_roll_back(
    cli_workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert cli.main(["-w", str(cli_workspace), "promote", "7"]) == 1
    err = one_line_error(capsys)
    assert "no version 7 of 'fmnist'" in err and "versions: 1" in err
    assert cli.main(["-w", str(cli_workspace), "rollback"]) == 1
    assert "there is no previous version" in one_line_error(capsys)
    assert cli.main(["-w", str(cli_workspace), "status"]) == 0
    out = capsys.readouterr().out
    assert "production: version 1 (kd)" in out and "lineage: kd (distill) <- teacher" in out


def test_cli_unreachable_registry(
    cli_workspace: Path, s3_endpoint: S3Endpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_endpoint.stop()
    try:
        capsys.readouterr()
        assert cli.main(["-w", str(cli_workspace), "status"]) == 1
        err = one_line_error(capsys)
        assert f"cannot reach S3 endpoint {s3_endpoint.url}" in err and "endpoint_url" in err
    finally:
        s3_endpoint.start()


def test_cli_refused_credentials_never_show_the_secret(
    cli_workspace: Path, s3_endpoint: S3Endpoint, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    secret = "sEcReT-never-print-9876543210"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEBADKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    capsys.readouterr()
    with s3_endpoint.checking_credentials():
        code = cli.main(["-w", str(cli_workspace), "pull-production", str(cli_workspace / "out")])
    captured = capsys.readouterr()
    assert code == 1 and captured.err.count("\n") == 1
    assert "S3 refused the credentials" in captured.err and "AWS_SECRET_ACCESS_KEY" in captured.err
    assert secret not in captured.err + captured.out


def test_an_unavailable_store_alone_is_retried() -> None:
    from prefect.states import Failed

    from squeeze.registry.store import NotFound, Unavailable

    retry = TASKS["promote"].retry_condition_fn
    assert retry(None, None, Failed(data=Unavailable("endpoint down")))
    wrapped = RegistryError("pointer not moved")
    wrapped.__cause__ = Unavailable("endpoint down")
    assert retry(None, None, Failed(data=wrapped))
    assert not retry(None, None, Failed(data=StoreError("AccessDenied: credentials refused")))
    assert not retry(None, None, Failed(data=RegistryError("checksum mismatch")))
    assert not retry(None, None, Failed(data=NotFound("gone")))
    assert not retry(None, None, Failed(data=ValueError("bug")))


# -- DVC remote on S3 ---------------------------------------------------------------------------


def dvc(root: Path, *args: str) -> str:
    """Run the dvc CLI of this interpreter in ``root``; fail with its output."""
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / "dvc"), *args], cwd=root, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                   check=True, capture_output=True, timeout=60)  # fmt: skip


@pytest.fixture
def dvc_repo(tmp_path: Path, s3_endpoint: S3Endpoint, s3_prefix: str) -> Iterator[Path]:
    """A git + DVC repo with data and a model stage, its default remote on the moto bucket."""
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "data" / "raw.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "mkdir -p models/m && cp data/raw.bin models/m/weights.bin && echo 1 > models/m/v",
        "deps": ["data/raw.bin"], "outs": ["models/m"],
    }}}))  # fmt: skip
    dvc(root, "add", "-q", "data/raw.bin")
    dvc(root, "repro", "-q")
    dvc(root, "remote", "add", "-d", "s3", f"s3://{s3_endpoint.bucket}/{s3_prefix}/dvc")
    dvc(root, "remote", "modify", "s3", "endpointurl", s3_endpoint.url)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "pipeline")
    yield root


@pytest.mark.slow
def test_dvc_push_then_pull_in_a_fresh_clone(dvc_repo: Path, tmp_path: Path) -> None:
    from flows.remote import push

    assert push(dvc_repo) >= 3  # data/raw.bin, models/m/weights.bin, models/m/v (+ listing)
    assert push(dvc_repo) == 0  # the remote has everything already
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(dvc_repo), str(clone))
    assert not (clone / "models" / "m").exists()
    dvc(clone, "pull", "-q")
    assert "up to date" in dvc(clone, "status")
    for rel in ("data/raw.bin", "models/m/weights.bin", "models/m/v"):
        assert (
            hashlib.sha256((clone / rel).read_bytes()).digest()
            == hashlib.sha256((dvc_repo / rel).read_bytes()).digest()
        )


def test_push_without_a_remote_says_what_to_do(tmp_path: Path) -> None:
    from flows.remote import RemoteError, push

    git(tmp_path, "init", "-q")
    dvc(tmp_path, "init", "-q")
    with pytest.raises(RemoteError, match="dvc remote add -d"):
        push(tmp_path)


# -- Prefect artifacts inside a flow ------------------------------------------------------------


@pytest.mark.slow
def test_gate_and_promote_publish_artifacts_in_a_flow(bench: Bench, prefect_api: None) -> None:
    """Inside a flow both tasks publish their table, Markdown and (promote) link artifacts."""
    from prefect import flow

    @flow
    def gate_and_promote(root: str) -> None:
        params = load_params(Path(root))
        TASKS["gate"](Path(root), params)
        TASKS["promote"](Path(root), params)

    state = gate_and_promote(str(bench.root), return_state=True)
    assert state.is_completed(), state
    by_key = artifacts_of(state.state_details.flow_run_id)
    assert set(by_key) == {"gate-verdicts", "gate-decision", "pareto", "promote-comparison",
                           "promote-decision", "registry-production"}  # fmt: skip
    assert "challenger **kd**" in by_key["gate-decision"].data
    assert "/fmnist/versions/1/model.onnx.xz" in by_key["registry-production"].data
    assert "kd (distill) <- teacher (train)" in by_key["promote-decision"].data
