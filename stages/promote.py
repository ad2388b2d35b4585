"""Stage `promote`: champion vs challenger on the same validation images, then publish and promote.

Reads params `promote.*`, `gate.*` and `evaluate.*`, metrics/gate.json, metrics/candidates.json,
exports/{<challenger>,teacher}.onnx, data/splits/{val,test}.safetensors and the registry; writes
metrics/promote.json. The production model is downloaded (checksums verified) and measured in
this process next to the challenger's export, so the comparison is like for like: the decision
is a paired comparison on validation (squeeze.decide.champion.decide); the test figures of both are
measured for the report only. A production version that fails its checksums is a champion
that fails the gates: a valid challenger replaces it, and the log names the damaged file.
Before anything is measured, data that production does not fit (its card's input shape, dtype,
layout or classes: squeeze.registry.card.check_production_fits) is refused naming promote.family
and what differs, and nothing is published: such a model could not be measured here, nor replace
production for its consumers.

A promotion uploads model.onnx.xz (squeeze.registry.package) + card.json + metrics.json, verifies
every checksum, and only then moves the production pointer by compare-and-swap against the champion
that was measured here: if someone else promoted meanwhile, nothing moves and the stage fails,
to be re-run on the new champion. In a flow run, the comparison, the decision and a link to
production become artifacts of the run (flows.artifacts, from metrics/promote.json).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.data.spec import Split, read_spec
from squeeze.data.splits import load_split
from squeeze.decide.champion import decide
from squeeze.decide.gate import COMPARED, check
from squeeze.errors import StageRefused
from squeeze.measure.runtime import latencies, measure_logits, predicted_classes
from squeeze.measure.stats import paired_table
from squeeze.registry.card import build_card, check_production_fits
from squeeze.registry.package import SHIPPED, pack, unpack
from squeeze.registry.registry import Damaged, Registry, registry_of
from stages.candidate import stage_main

CHAMPION, CHALLENGER = "champion", "challenger"  # latency keys of the pair timed together


class ProductionDamaged(StageRefused):
    """Production is damaged and no candidate passed the gates to replace it."""


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """The compared metrics of a measurement."""
    return {key: record.get(key) for key in COMPARED}


def measure_champion(
    registry: Registry,
    pointer: dict[str, Any],
    ws: Workspace,
    params: Params,
    splits: dict[str, Split],
    teacher_correct: np.ndarray,
    challenger: Path,
) -> tuple[dict[str, Any], dict[str, Any] | None, np.ndarray | None, dict[str, Any] | None]:
    """Download production (verified) and measure it as evaluate measures a candidate; gate it
    against today's thresholds with the teacher of this run as the reference. Its latency is
    timed together with the challenger's export (`challenger`), in interleaved rounds.

    A version that fails its checksums is not measured: it counts as failing the `checksums`
    gate, and the damaged key is logged.

    Returns:
        (the champion's summary for promote.json, its measurement or None when damaged, its
        per-image correctness on val or None, the challenger's latency record or None).
    """
    version = pointer["version"]
    with tempfile.TemporaryDirectory(prefix="squeeze-champion-") as tmp:
        try:
            folder = registry.download_production(Path(tmp) / "champion", pointer)
        except Damaged as err:
            return damaged_champion(version, err.key), None, None, None
        path = unpack(folder)
        measured, logits = measure_logits(
            path, splits, list(read_spec(ws.profile).classes), params.evaluate
        )
        # timed together, so that a slow spell of the machine cannot decide between them
        timed = latencies({CHAMPION: path, CHALLENGER: challenger}, splits["val"].images[0],
                          params.evaluate)  # fmt: skip
        measured |= timed[CHAMPION]
        card = read_json(folder / "card.json")
    # its source is not shipped, so its agreement is the one measured when it was promoted
    measured["agreement"] = card.get("metrics", {}).get("agreement")
    correct = logits["val"].argmax(1) == splits["val"].labels
    measured["val_vs_teacher"] = paired_table(correct, teacher_correct)
    teacher = read_json(ws.metrics("gate"))["teacher"]
    reference = read_json(ws.metrics("candidates"))[teacher]
    label = f"production-v{version}"
    verdict = check({teacher: reference, label: measured}, params.gate, teacher=teacher)
    summary = {
        "version": version,
        "name": card.get("model", {}).get("name"),
        "measured": compact(measured),
        "failed_gates": verdict["candidates"][label]["failed"],
    }
    return summary, measured, correct, timed[CHALLENGER]


def damaged_champion(version: int | None, key: str) -> dict[str, Any]:
    """The champion's summary when production is damaged (its pointer, or a file of its
    version): not measurable, it fails the `checksums` gate, so a valid challenger replaces it."""
    print(f"production version {version} is damaged ({key}): it fails the gates", flush=True)
    return {"version": version, "name": None, "measured": None, "damaged": key,
            "failed_gates": ["checksums"]}  # fmt: skip


def production_now(registry: Registry) -> tuple[dict[str, Any] | None, str | None]:
    """(the production pointer, None), (None, None) when nothing is promoted, or (None, the
    damaged key) when production.json itself cannot be read as a pointer."""
    try:
        return registry.production(), None
    except Damaged as err:
        return None, err.key


def promote_challenger(root: Path, params: Params, gate_report: dict[str, Any]) -> dict[str, Any]:
    """Re-measure champion and challenger, decide, and publish + promote when the challenger
    wins. Returns the promote.json document."""
    ws, name = Workspace(root), gate_report["challenger"]
    registry = registry_of(root, params)
    candidates = read_json(ws.metrics("candidates"))
    shipped = pack(ws.export(name).read_bytes())
    sha = hashlib.sha256(shipped).hexdigest()
    splits = {split: load_split(ws.split(split)) for split in ("val", "test")}
    labels = splits["val"].labels
    classes = list(read_spec(ws.profile).classes)
    challenger_now, logits = measure_logits(ws.export(name), splits, classes, params.evaluate)
    challenger_correct = logits["val"].argmax(1) == labels
    teacher_pred = predicted_classes(ws.export(gate_report["teacher"]), splits["val"].images)
    pointer, broken = production_now(registry)
    champion, champion_now, champion_correct, timing = None, None, None, None
    if broken:
        champion = damaged_champion(None, broken)
    elif pointer:
        champion, champion_now, champion_correct, timing = measure_champion(
            registry, pointer, ws, params, splits, teacher_pred == labels, ws.export(name)
        )
    if timing is None:  # no champion to time it with
        timing = latencies({name: ws.export(name)}, splits["val"].images[0], params.evaluate)[name]
    challenger_now |= timing
    decision = decide(
        challenger_now,
        champion_now,
        None if champion_correct is None else paired_table(challenger_correct, champion_correct),
        params.gate,
        champion_failed=champion["failed_gates"] if champion else None,
        # a damaged champion is replaced even by its own bytes: that repairs production. The
        # ONNX bytes are compared, not the shipped .xz ones (which change with liblzma)
        identical=bool(champion_now)
        and registry.onnx_sha256(pointer["version"])
        == hashlib.sha256(ws.export(name).read_bytes()).hexdigest(),
    )
    version = None
    if decision["promote"]:
        summary = {k: decision[k] for k in ("outcome", "reasons", "comparison")}
        summary["champion_version"] = champion["version"] if champion else None
        card = build_card(
            root, name, candidates[name], gate_report["candidates"][name], params, summary
        )
        version = registry.publish({SHIPPED: shipped}, card, candidates[name])
        registry.promote(version, expected=champion["version"] if champion else None,
                         replace_damaged=broken is not None)  # fmt: skip
    production = registry.production()
    now = production["version"] if production else None
    return {
        "outcome": decision["outcome"],
        "promoted": decision["promote"],
        "reasons": gate_report["reasons"] + decision["reasons"],
        "policy": params.gate.policy,
        "comparison": decision["comparison"],
        "challenger": {"name": name, "sha256": sha, "measured": compact(challenger_now)},
        "champion": champion,
        "registry": {
            "url": registry.store.url,
            "family": registry.family,
            "published": version,
            "production": now,
            "model": registry.url(now, SHIPPED) if now else None,
        },
    }


def nothing_passed(root: Path, params: Params, gate_report: dict[str, Any]) -> dict[str, Any]:
    """promote.json when no candidate passed: the registry is not touched (only read: what
    stays in production)."""
    registry = registry_of(root, params)
    pointer, damaged = production_now(registry)
    damaged = damaged or registry.damaged_production()
    now = pointer["version"] if pointer else None
    return {
        "outcome": "nothing_passed",
        "promoted": False,
        "reasons": gate_report["reasons"],
        "policy": params.gate.policy,
        "comparison": None,
        "challenger": None,
        "champion": None,
        "registry": {"url": registry.store.url, "family": registry.family, "published": None,
                     "production": now, "model": registry.url(now, SHIPPED) if now else None,
                     "damaged": damaged},
    }  # fmt: skip


def run(root: Path, params: Params) -> None:
    """Decide and (maybe) promote; write metrics/promote.json; print the decision. Raises
    ContractChanged (nothing measured or published) on data that production does not fit."""
    ws = Workspace(root)
    check_production_fits(registry_of(root, params), read_spec(ws.profile))
    gate_report = read_json(ws.metrics("gate"))
    if gate_report["challenger"] is None:
        result = nothing_passed(root, params, gate_report)
    else:
        result = promote_challenger(root, params, gate_report)
    write_json(ws.metrics("promote"), result)
    print(headline(result), flush=True)
    for reason in result["reasons"]:
        print(f"  - {reason}", flush=True)
    reg = result["registry"]
    if reg.get("damaged"):
        raise ProductionDamaged(
            f"production of {reg['family']!r} at {reg['url']} is damaged ({reg['damaged']}) and "
            "no candidate passed the gates to replace it: `squeeze rollback` to the previous "
            "version, or `squeeze promote VERSION` an intact one (`squeeze status` lists them), "
            "or change the data or params so that a candidate passes, and run again"
        )


def headline(result: dict[str, Any]) -> str:
    """One line: what happened and where production is now."""
    reg = result["registry"]
    where = f"{reg['family']} at {reg['url']}"
    if result["outcome"] == "promoted":
        return f"promoted {result['challenger']['name']} as version {reg['published']} of {where}"
    if result["outcome"] == "nothing_passed":
        left = "damaged" if reg.get("damaged") else "unchanged"
        return f"nothing promoted: no candidate passed the gates; {where} is {left}"
    name = result["challenger"]["name"]
    return f"kept production version {reg['production']} of {where}; challenger {name} not promoted"


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
