"""The model card published with every registry version: contract, metrics, gates, lineage.

A consumer that downloads a version with any S3 client needs the card to use the model without
project code (the input contract and class names) and to trust it (the metrics and gate results
it was promoted on, and where it came from: git revision, dvc.lock, data fingerprint, effective
params and the chain of upstream models).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json
from squeeze.data.spec import DataSpec, read_spec
from squeeze.errors import StageRefused
from squeeze.registry.package import SHIPPED
from squeeze.registry.registry import Damaged, Registry

CARD_SCHEMA = 2  # 2: input and output shapes, classes and pixel statistics come from the data


def contract(spec: DataSpec) -> dict[str, dict[str, Any]]:
    """What the exported graph takes and returns (squeeze.measure.export.export_onnx,
    squeeze.nets.models.Classifier), for the data the model was trained on."""
    mode = {1: "grayscale", 3: "RGB"}[spec.channels]
    return {
        "input": {
            "name": "pixels",
            "dtype": "uint8",
            "layout": "NHWC",
            "shape": ["N", spec.height, spec.width, spec.channels],
            "scaling": f"raw 0..255 {mode} pixels, as ingest stored them",
            "preprocessing": "none outside the model: scaling and standardisation (per-channel "
            f"mean {list(spec.mean)}, std {list(spec.std)} on the 0..1 scale) are in the graph",
        },
        "output": {
            "name": "logits",
            "dtype": "float32",
            "shape": ["N", spec.num_classes],
            "meaning": "unnormalised class scores; argmax indexes classes (softmax for "
            "probabilities)",
        },
    }


def contract_differences(card: dict[str, Any], spec: DataSpec) -> list[str]:
    """How a published model's contract (its card's input, output and classes) differs from what
    a model of this data would take and return: [] when a consumer of the one can use the other.

    One line per difference, e.g. "input shape [N, 32, 32, 3], the data's [N, 28, 28, 1]". The
    pixel statistics are inside the graph, so they are not part of the contract.
    """
    ours = contract(spec)
    found = []
    for side, key in (("input", "shape"), ("input", "dtype"), ("input", "layout"),
                      ("output", "shape")):  # fmt: skip
        theirs = card.get(side, {}).get(key)
        if theirs != ours[side][key]:
            found.append(f"{side} {key} {theirs}, the data's {ours[side][key]}")
    if list(card.get("classes", [])) != list(spec.classes):
        found.append(f"classes {list(card.get('classes', []))}, the data's {list(spec.classes)}")
    return found


class ContractChanged(StageRefused):
    """The data no longer fits the contract of the production model of promote.family."""


def check_production_fits(registry: Registry, spec: DataSpec) -> None:
    """Refuse data that the production model of the registry's family does not fit.

    A family is one contract: its consumers call every version the same way, and promote
    compares a challenger with production on the same images. A model of data of another input
    shape, dtype, layout or classes can neither be measured against production nor replace it,
    so a dataset of another shape needs its own promote.family. Nothing promoted, or production
    damaged (Damaged: promote replaces it), is no refusal.

    Raises:
        ContractChanged: naming promote.family, the production version and every difference.
        StoreError: the registry could not be read (Unavailable: worth retrying).
    """
    try:
        pointer = registry.production()
        card = None if pointer is None else registry.card(pointer["version"])
    except Damaged:
        return
    differences = [] if card is None else contract_differences(card, spec)
    if differences:
        name = card.get("model", {}).get("name")
        raise ContractChanged(
            f"promote.family {registry.family!r} at {registry.store.url}: production version "
            f"{pointer['version']} ({name}) does not fit the data (data/profile.json): "
            f"{'; '.join(differences)}. Its consumers could not use a model of this data, nor "
            "can promote compare the two: set promote.family in params.yaml to a new family for "
            "this data, or switch ingest back to the data that version was trained on"
        )


def git(root: Path, *args: str) -> str | None:
    """The output of `git ARGS` in the workspace, or None outside git (or without git)."""
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_revision(root: Path) -> str:
    """`git rev-parse HEAD` of the workspace, or "unknown" outside git (or before a commit)."""
    return git(root, "rev-parse", "HEAD") or "unknown"


def git_dirty(root: Path, ignore: tuple[str, ...] = ()) -> bool | None:
    """Whether tracked files other than the paths in `ignore` differ from HEAD (params.yaml
    edited, code changed): the revision alone then does not say what built the model. None
    outside git. Untracked files and what git ignores (DVC's outputs) do not count."""
    if git_revision(root) == "unknown":
        return None
    status = git(root, "status", "--porcelain", "--untracked-files=no")
    if status is None:
        return None
    # each line is "XY PATH" (git() strips the first line's leading blank, so split, not slice)
    return any(line.split(maxsplit=1)[1] not in ignore for line in status.splitlines())


def file_sha256(path: Path) -> str | None:
    """Hex sha256 of a file, or None when it does not exist (dvc.lock before the first run)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def data_fingerprint(root: Path) -> str | None:
    """The raw data's fingerprint (data/fingerprint.json "sha256", written by ingest)."""
    path = Workspace(root).fingerprint
    return read_json(path)["sha256"] if path.exists() else None


def model_record(root: Path, name: str, params: Params) -> dict[str, Any]:
    """How a model was made: its models/<name>/model.json, else what params.yaml declares.

    Models that exist only as ONNX (a quantized export) may have no model.json; the params
    graph still names their method and upstreams.
    """
    path = Workspace(root).model(name) / "model.json"
    if path.exists():
        record = read_json(path)
        upstream = record.get("upstream") or []
        node = {"name": name, "method": record.get("method"), "upstream": list(upstream)}
        for key in ("arch", "data_sha256", "parameters", "layers", "search"):
            if key in record:
                node[key] = record[key]
        return node
    upstream = params.upstreams().get(name, [])
    return {"name": name, "method": params.stage_of(name), "upstream": upstream, "record": None}


def search_lineage(root: Path, chain: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For a model the budget search found (a finalist in its chain, whose record holds its
    recipe: study, trial, seed): the study and the sha256 of the trial list it was chosen from
    (search/trials.csv, as search/finalists.json records it); None for any other."""
    if not any("search" in node for node in chain):
        return None
    found = read_json(Workspace(root).search("finalists.json"))
    return {key: found[key] for key in ("study", "storage", "seed", "objective", "trials_sha256")}


def upstream_chain(root: Path, name: str, params: Params) -> list[dict[str, Any]]:
    """The model and every model it was built from, breadth first, each once (merges share
    upstreams): [{"name", "method", "upstream", ...}, ..., teacher]."""
    chain, queue, seen = [], [name], {name}
    while queue:
        node = model_record(root, queue.pop(0), params)
        chain.append(node)
        for up in node["upstream"]:
            if up not in seen:
                seen.add(up)
                queue.append(up)
    return chain


def effective_params(params: Params, chain: list[dict[str, Any]]) -> dict[str, Any]:
    """The params that made the model: data, each model of the chain, measurement, gates."""
    models = {}
    for node in chain:
        stage = params.stage_of(node["name"])
        cfg = (params.train_teacher if stage == "train_teacher"
               else params.section_of(stage).get(node["name"]))  # fmt: skip
        models[node["name"]] = {
            "stage": stage,
            "params": cfg.model_dump(mode="json") if cfg is not None else None,
        }
    return {
        "ingest": params.ingest.model_dump(mode="json"),
        "models": models,
        "evaluate": params.evaluate.model_dump(mode="json"),
        "gate": params.gate.model_dump(mode="json"),
    }


def build_card(
    root: Path,
    name: str,
    metrics: dict[str, Any],
    verdict: dict[str, Any],
    params: Params,
    decision: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of model ``name`` of the workspace at ``root``.

    Args:
        metrics: its evaluate record (metrics/candidates.json), measured on the exported file.
        verdict: its gate verdict (metrics/gate.json "candidates"[name]).
        params: the run's validated params.
        decision: the champion/challenger decision that promoted it, if any.
    """
    ws = Workspace(root)
    chain = upstream_chain(root, name, params)
    spec = read_spec(ws.profile)
    return {
        "schema": CARD_SCHEMA,
        "model": {"name": name, "method": chain[0]["method"], "format": "onnx", "file": SHIPPED},
        **contract(spec),
        "classes": list(spec.classes),
        "metrics": metrics,
        "evaluation": {
            # validation chose this model (gates, policy, champion vs challenger); test reports
            "chosen_on": "val",
            "reported_on": "test",
            "split_sha256": {s: file_sha256(ws.split(s)) for s in ("val", "test")},
            "runtime": "onnxruntime CPUExecutionProvider",
            "threads": params.evaluate.threads,
            # accuracy was measured in batches of this size; it matters for models whose
            # activation scales are computed per batch (onnxruntime dynamic int8)
            "batch": params.evaluate.throughput_batch,
        },
        "gate": {
            "policy": params.gate.policy,
            "thresholds": params.gate.model_dump(mode="json"),
            **verdict,
        },
        "decision": decision,
        "lineage": {
            "git_revision": git_revision(root),
            "git_dirty": git_dirty(root),
            "dvc_lock_sha256": file_sha256(root / "dvc.lock"),
            "data_fingerprint": data_fingerprint(root),
            "upstream_chain": chain,
            "search": search_lineage(root, chain),
        },
        "params": effective_params(params, chain),
    }


def chain_text(card: dict[str, Any]) -> str:
    """'kd_small_int8 (quantize) <- kd_small (distill) <- teacher (train)'."""
    chain = card.get("lineage", {}).get("upstream_chain", [])
    return " <- ".join(f"{n['name']} ({n.get('method') or '?'})" for n in chain)


def decision_text(decision: dict[str, Any] | None) -> str:
    """The champion/challenger statistics that promoted a model, in one line."""
    if not decision:
        return "promoted by hand"
    stats = decision.get("comparison")
    if not stats:
        return "; ".join(decision.get("reasons", []))
    return (
        f"vs champion v{decision.get('champion_version')} on validation: difference "
        f"{stats['difference']:+.5f}, paired 95% CI {stats['ci95']}, McNemar exact "
        f"p = {stats['p_value']:.4g} (alpha {stats['alpha']}, margin {stats['margin']})"
    )


def sparsity_text(card: dict[str, Any]) -> str:
    """'net.features.0 13%, net.features.3 52%, ... (of teacher_ch50_sp60_qat)': the share of
    zero weights per layer of the nearest pruned model in the chain (prune's `layers` record),
    or 'no pruned model in the chain'."""
    chain = card.get("lineage", {}).get("upstream_chain", [])
    node = next((n for n in chain if n.get("layers")), None)
    if node is None:
        return "no pruned model in the chain"
    layers = ", ".join(f"{k} {v['sparsity']:.0%}" for k, v in node["layers"].items())
    return f"{layers} (of {node['name']})"


def summary_markdown(card: dict[str, Any]) -> str:
    """A short Markdown summary of a card (for Prefect artifacts and `squeeze status`)."""
    m, lineage = card.get("metrics", {}), card.get("lineage", {})
    registry = card.get("registry", {})
    where = f" — {registry['family']} version {registry['version']}" if registry else ""
    lines = [
        f"### {card['model']['name']}{where}",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| test accuracy (95% CI) | {m.get('test_accuracy')} {m.get('test_accuracy_ci')} |",
        f"| validation accuracy (95% CI), which chose it | {m.get('val_accuracy')} "
        f"{m.get('val_accuracy_ci')} |",
        f"| size (bytes) | {m.get('shipped_bytes')} shipped ({SHIPPED}), {m.get('size_bytes')} "
        "unpacked |",
        f"| latency p50 / p95 (ms) | {m.get('latency_ms_p50')} / {m.get('latency_ms_p95')} |",
        f"| parameters (non-zero) | {m.get('params')} ({m.get('nonzero_params')}) |",
        "",
        f"- input: `{card['input']['name']}` {card['input']['dtype']} {card['input']['layout']} "
        f"{card['input']['shape']}, {card['input']['scaling']}",
        f"- output: `{card['output']['name']}` {card['output']['dtype']} {card['output']['shape']}",
        f"- classes: {', '.join(card['classes'])}",
        f"- lineage: {chain_text(card)}",
        f"- sparsity per layer: {sparsity_text(card)}",
        f"- decision: {decision_text(card.get('decision'))}",
        f"- git {lineage.get('git_revision')}"
        f"{' with uncommitted changes' if lineage.get('git_dirty') else ''}, dvc.lock sha256 "
        f"{(lineage.get('dvc_lock_sha256') or 'none')[:12]}, data "
        f"{(lineage.get('data_fingerprint') or 'unknown')[:12]}",
    ]
    return "\n".join(lines)
