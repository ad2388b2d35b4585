"""The model card: input contract, lineage (git, dvc.lock, data, upstream chain), params."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from squeeze.config.files import load_params, read_yaml
from squeeze.config.params import Params, validate
from squeeze.config.workspace import Workspace, write_json
from squeeze.data.spec import DataSpec
from squeeze.registry.card import (
    build_card,
    contract,
    contract_differences,
    git_dirty,
    git_revision,
    summary_markdown,
    upstream_chain,
)

PROJECT = Path(__file__).resolve().parents[2]
# the workspace's data profile: nothing like Fashion-MNIST, so every figure of the card's
# contract that comes from the data shows where it came from
SPEC = DataSpec(classes=("cat", "dog", "ship"), height=32, width=24, channels=3,
                mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))  # fmt: skip


def chain_params() -> Params:
    """The project's params with the candidate graph teacher -> kd -> kd_ch50 -> kd_ch50_int8
    (entries copied from the project's own, so the test follows schema changes)."""
    data = read_yaml(PROJECT / "params.yaml")
    first = {s: next(iter(data[s].values())) for s in ("distill", "prune", "quantize")}
    data["distill"] = {"kd": first["distill"] | {"upstream": "teacher"}}
    data["prune"] = {"kd_ch50": first["prune"] | {"upstream": "kd"}}
    data["quantize"] = {"kd_ch50_int8": first["quantize"] | {"upstream": "kd_ch50"}}
    data["merge"] = {}
    return validate(data, "test params")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A workspace with model records for teacher and kd only (kd_ch50 and kd_ch50_int8 are
    known from params alone), a data fingerprint, the data profile SPEC and a dvc.lock; not a
    git repo."""
    root = tmp_path / "ws"
    write_json(Workspace(root).profile, SPEC.to_json())
    teacher = {"name": "teacher", "method": "train", "upstream": [], "arch": {"name": "convnet"}}
    write_json(root / "models" / "teacher" / "model.json", teacher)
    kd = {"name": "kd", "method": "distill", "upstream": ["teacher"]}
    write_json(root / "models" / "kd" / "model.json", kd)
    write_json(root / "data" / "fingerprint.json", {"sha256": "f" * 64, "files": {}})
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    return root


def metrics() -> dict[str, Any]:
    return {"accuracy": 0.9, "size_bytes": 1234, "shipped_bytes": 1000, "latency_ms_p50": 0.1}


def test_card_holds_contract_metrics_gates_and_lineage(workspace: Path) -> None:
    params = chain_params()
    verdict = {"passed": True, "failed": [], "gates": {"accuracy": {"passed": True}}}
    card = build_card(workspace, "kd_ch50_int8", metrics(), verdict, params, {"outcome": "x"})
    pixels = card["input"]
    assert (pixels["name"], pixels["dtype"], pixels["layout"], pixels["shape"]) == (
        "pixels",
        "uint8",
        "NHWC",
        ["N", 32, 24, 3],
    )
    assert "raw 0..255 RGB" in pixels["scaling"] and "in the graph" in pixels["preprocessing"]
    assert "[0.49, 0.48, 0.45]" in pixels["preprocessing"]  # per-channel mean, then std
    assert "[0.25, 0.24, 0.26]" in pixels["preprocessing"]
    assert card["output"]["name"] == "logits" and card["output"]["shape"] == ["N", 3]
    assert card["classes"] == ["cat", "dog", "ship"]
    assert card["metrics"] == metrics() and card["decision"] == {"outcome": "x"}
    assert card["gate"]["passed"] and card["gate"]["policy"] == params.gate.policy
    lineage = card["lineage"]
    assert lineage["git_revision"] == "unknown"  # tmp_path is outside any git repo
    assert lineage["git_dirty"] is None
    expected_lock = hashlib.sha256((workspace / "dvc.lock").read_bytes()).hexdigest()
    assert lineage["dvc_lock_sha256"] == expected_lock
    assert lineage["data_fingerprint"] == "f" * 64
    chain = [(n["name"], n["method"], n["upstream"]) for n in lineage["upstream_chain"]]
    assert chain == [
        ("kd_ch50_int8", "quantize", ["kd_ch50"]),  # from params: no model.json
        ("kd_ch50", "prune", ["kd"]),
        ("kd", "distill", ["teacher"]),  # from models/kd/model.json
        ("teacher", "train", []),
    ]
    assert set(card["params"]["models"]) == {"kd_ch50_int8", "kd_ch50", "kd", "teacher"}
    assert card["params"]["models"]["kd"]["stage"] == "distill"
    assert card["params"]["ingest"] == params.ingest.model_dump(mode="json")
    md = summary_markdown(card)
    assert "kd_ch50_int8 (quantize) <- kd_ch50 (prune) <- kd (distill) <- teacher (train)" in md
    assert "uint8 NHWC ['N', 32, 24, 3]" in md and "classes: cat, dog, ship" in md


def test_card_shows_the_sparsity_of_each_layer_of_the_pruned_model(workspace: Path) -> None:
    params, verdict = chain_params(), {"passed": True, "failed": [], "gates": {}}
    card = build_card(workspace, "kd_ch50_int8", metrics(), verdict, params)
    assert "sparsity per layer: no pruned model in the chain" in summary_markdown(card)
    layers = {"net.features.0": {"channels": 8, "sparsity": 0.125},
              "net.classifier": {"channels": 10, "sparsity": 0.6}}  # fmt: skip
    write_json(workspace / "models" / "kd_ch50" / "model.json",
               {"method": "prune", "upstream": ["kd"], "layers": layers})  # fmt: skip
    card = build_card(workspace, "kd_ch50_int8", metrics(), verdict, params)
    assert card["lineage"]["upstream_chain"][1]["layers"] == layers  # in the record, as prune wrote
    md = summary_markdown(card)
    assert "sparsity per layer: net.classifier 60%, net.features.0 12% (of kd_ch50)" in md


def test_grayscale_contract_follows_the_spec() -> None:
    gray = DataSpec(classes=tuple("0123456789"), height=28, width=28, channels=1,
                    mean=(0.286,), std=(0.353,))  # fmt: skip
    pixels, logits = contract(gray)["input"], contract(gray)["output"]
    assert pixels["shape"] == ["N", 28, 28, 1] and "grayscale" in pixels["scaling"]
    assert logits["shape"] == ["N", 10] and logits["dtype"] == "float32"


def test_merged_upstreams_appear_once(workspace: Path) -> None:
    write_json(workspace / "models" / "ens" / "model.json",
               {"method": "merge", "upstream": ["kd", "teacher"]})  # fmt: skip
    names = [n["name"] for n in upstream_chain(workspace, "ens", chain_params())]
    assert names == ["ens", "kd", "teacher"]


def test_git_revision_inside_a_repo(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    assert git_revision(tmp_path) == "unknown"  # no commit yet
    assert git_dirty(tmp_path) is None
    (tmp_path / "params.yaml").write_text("a: 1\n")
    git("add", "params.yaml")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    assert git_revision(tmp_path) == git("rev-parse", "HEAD")
    assert git_dirty(tmp_path) is False
    (tmp_path / "models").mkdir()  # untracked outputs do not make it dirty
    assert git_dirty(tmp_path) is False
    (tmp_path / "params.yaml").write_text("a: 2\n")  # an edited, uncommitted params.yaml does
    assert git_dirty(tmp_path) is True


def test_project_params_build_a_card(tmp_path: Path) -> None:
    """Every model the project's params.yaml declares gets a complete chain down to teacher."""
    params = load_params(PROJECT)
    for name in params.model_names():
        chain = upstream_chain(tmp_path, name, params)
        assert chain[-1]["name"] == "teacher" and chain[0]["name"] == name


def test_a_change_of_data_that_breaks_the_contract_is_named() -> None:
    gray = DataSpec(("a", "b"), 28, 28, 1, (0.5,), (0.25,))
    card = {**contract(gray), "classes": ["a", "b"]}
    assert contract_differences(card, gray) == []
    # other pixel statistics are inside the graph: not the consumer's concern
    assert contract_differences(card, DataSpec(("a", "b"), 28, 28, 1, (0.1,), (0.2,))) == []
    rgb = DataSpec(("a", "b", "c"), 32, 32, 3, (0.5,) * 3, (0.25,) * 3)
    assert contract_differences(card, rgb) == [
        "input shape ['N', 28, 28, 1], the data's ['N', 32, 32, 3]",
        "output shape ['N', 2], the data's ['N', 3]",
        "classes ['a', 'b'], the data's ['a', 'b', 'c']",
    ]
