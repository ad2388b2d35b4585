"""Measure the teacher, every candidate, the two naive anchors and the peers side by side.

Run after the pipeline (`make run`, `squeeze run` or `dvc repro`) in the workspace:

    python -m benchmarks.compare [--workspace .] [--noop] [--out benchmarks/RESULTS.md]
        [--json benchmarks/results.json] [--readme README.md]

One process, one thread setting, the same validation and test images for every row: the models
evaluate exported, the anchors built from the teacher (benchmarks/anchors.py) and the peers a
user would pick instead, built here on the same teacher and data (benchmarks/peers.py). Every
choice reads validation (benchmarks/choose.py); differences are paired comparisons on the same
images (squeeze.measure.stats). With --noop it also times a second `dvc repro` and a second
`squeeze run`
(nothing changed, so nothing should run). Writes RESULTS.md and results.json from the same
results (benchmarks/report.py), and with --readme the body of README's Figures section.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks import choose, peers, report
from benchmarks.anchors import anchors
from squeeze.config.dvcyaml import stages_ran
from squeeze.config.files import load_params
from squeeze.config.params import UNIFORM, Params
from squeeze.config.sections import EvaluateParams
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.data.spec import Split, read_spec
from squeeze.data.splits import load_split
from squeeze.decide.choose import POLICIES, best
from squeeze.measure.export import export_onnx
from squeeze.measure.runtime import latencies, measure_logits, predicted_classes
from squeeze.measure.stats import compare, paired_table
from squeeze.methods.quantize import calibration_images
from squeeze.methods.search import PER_LAYER
from squeeze.methods.train import predict
from squeeze.nets.models import load_checkpoint
from squeeze.registry.card import git_dirty, git_revision
from stages import search as search_stage
from stages.quantize import fp32_source

COMMAND = "make run && .venv/bin/python -m benchmarks.compare --noop --readme README.md"
DEFAULT = "default"  # the profile name of params.yaml as committed
# what a profile's data needs before its run (profiles/<name>.yaml names the data it reads)
PROFILE_DATA = {"resnet": "python -m examples.fmnist_imagefolder datasets/fmnist-rgb32 --rgb32"}
# the profiles a profile overlays, in the order applied (profiles/<name>.yaml says so)
PROFILE_BASE = {"fastest": ("budget",), "resnet-fastest": ("resnet", "budget", "fastest")}
# the profile whose hand-written graph ran on the same data and network as a budget profile's
# search (benchmarks.compare.hand_tuned), where that is not the default params
HAND_WRITTEN = {"resnet-fastest": "resnet"}

SPLITS = ("val", "test")
ALPHA = 0.05  # significance level of every paired verdict
# Whole interleaved timings of every row per benchmark, fixed before any was read: a row's p50 is
# the median of its REPEATS p50s, and the spread of the repeats is reported beside it.
REPEATS = 5


def report_files(profile: str) -> tuple[str, str]:
    """A profile's report and its JSON twin, as paths from the project's root."""
    suffix = "" if profile == DEFAULT else f"-{profile}"
    return f"benchmarks/RESULTS{suffix}.md", f"benchmarks/results{suffix}.json"


def command_for(profile: str, noop: bool = True) -> str:
    """The command that reproduces a profile's benchmark from a fresh clone, for its report: with
    --noop when the benchmark also timed a no-op re-run (as the default one always does)."""
    if profile == DEFAULT:
        return COMMAND
    applied = (*PROFILE_BASE.get(profile, ()), profile)
    data = "".join(f"{PROFILE_DATA[name]} && " for name in applied if name in PROFILE_DATA)
    profiles = "".join(f"squeeze profile {name} && " for name in applied)
    return (f"make setup && . .venv/bin/activate && {data}{profiles}"
            f"squeeze run && python -m benchmarks.compare --profile {profile} "
            f"{'--noop ' if noop else ''}"
            "--out {} --json {}".format(*report_files(profile)))  # fmt: skip


@dataclass
class Bench:
    """What one benchmark run has measured so far: rows in report order, and every row's
    predicted classes per split (the paired comparisons read those)."""

    splits: dict[str, Split]
    classes: list[str]
    cfg: EvaluateParams
    rows: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def add(self, path: Path, reference: np.ndarray | None = None, **about: Any) -> None:
        """Measure the ONNX file at path as row about["name"] and keep its predicted classes.

        reference: what the file was made from, its predicted classes on val (agreement).
        Per-class accuracies stay in metrics/candidates.json; the benchmark reports overall."""
        record, logits = measure_logits(path, self.splits, self.classes, self.cfg, reference)
        self.predictions[about["name"]] = {split: x.argmax(1) for split, x in logits.items()}
        record = {k: v for k, v in record.items() if not k.endswith("per_class_accuracy")}
        self.rows.append({**about, **record})
        self.paths[about["name"]] = path

    def time_all(self) -> None:
        """Every row's batch-1 latency, all files timed together in interleaved rounds
        (squeeze.measure.runtime.latencies), REPEATS times once every row is built: p50 and p95
        are the medians over the repeats, `latency_ms_p50_repeats` the REPEATS p50s (ms)."""
        timed = [latencies(self.paths, self.splits["val"].images[0], self.cfg)
                 for _ in range(REPEATS)]  # fmt: skip
        for row in self.rows:
            repeats = {k: [t[row["name"]][k] for t in timed]
                       for k in ("latency_ms_p50", "latency_ms_p95")}  # fmt: skip
            row |= {k: round(float(np.median(v)), 4) for k, v in repeats.items()}
            row["latency_ms_p50_repeats"] = repeats["latency_ms_p50"]


def torch_classes(model: nn.Module, images: np.ndarray) -> np.ndarray:
    return predict(model, torch.from_numpy(images)).argmax(1).numpy()


def measure_models(bench: Bench, ws: Workspace, params: Params) -> dict[str, dict[str, Any]]:
    """Every model evaluate exported, as evaluate recorded it (agreement included); returns
    metrics/candidates.json, whose validation accuracies choose the quantization peers'
    counterpart."""
    records = read_json(ws.metrics("candidates"))
    for name in params.model_names():
        rec = records[name]
        bench.add(ws.export(name), name=name, role="teacher" if name == "teacher" else "candidate",
                  method=rec["method"], upstream=rec["upstream"])  # fmt: skip
        bench.rows[-1]["agreement"] = rec.get("agreement")  # the export vs its own source
    return records


def measure_variants(bench: Bench, ws: Workspace, params: Params, tmp: Path) -> None:
    """What each soup is compared with, saved beside it by the merge stage (its best ingredient
    on validation and the other soup): rows named <soup>/<variant>, never chosen for a target."""
    for name in params.merge:
        for variant in read_json(ws.model(name) / "model.json").get("variants", {}):
            model, _ = load_checkpoint(ws.variant(name, variant))
            path = tmp / f"{name}-{variant}.onnx"
            export_onnx(model, path)
            reference = torch_classes(model, bench.splits["val"].images)
            bench.add(path, reference, name=f"{name}/{variant}", role="variant", method=variant,
                      upstream=[name])  # fmt: skip


def measure_anchors(bench: Bench, teacher: nn.Module, tmp: Path) -> None:
    """The sketch's anchors, built from the teacher; agreement is with the teacher."""
    reference = torch_classes(teacher, bench.splits["val"].images)
    for name, model in anchors(teacher).items():
        export_onnx(model, tmp / f"{name}.onnx")
        bench.add(tmp / f"{name}.onnx", reference, name=name, role="anchor", method="anchor",
                  upstream=["teacher"])  # fmt: skip


def torch_peer(bench: Bench, ws: Workspace, params: Params, name: str, tmp: Path) -> None:
    """PyTorch's global_unstructured on candidate `name`'s upstream, at its sparsity and with
    its fine-tuning budget."""
    cfg = params.prune[name]
    sparsity = read_json(ws.model(name) / "model.json")["sparsity"]  # the achieved share
    model, _ = load_checkpoint(ws.model(cfg.upstream))
    train, val = load_split(ws.split("train")), bench.splits["val"]
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.fit.threads)  # the candidate's own training threads
    try:
        pruned, _ = peers.torch_pruned(model, sparsity, cfg.fit, train, val)
    finally:
        torch.set_num_threads(threads)
    path = tmp / f"peer_torch_prune-{name}.onnx"
    export_onnx(pruned, path)
    bench.add(path, torch_classes(pruned, val.images), name=f"peer_torch_prune/{name}",
              role="peer", method="torch.nn.utils.prune", upstream=[cfg.upstream],
              compared_with=name,
              built=f"global_unstructured L1 to sparsity {sparsity:.4f}, fine-tuned "
                    f"{cfg.fit.epochs} epoch(s) (lr {cfg.fit.lr}, batch {cfg.fit.batch_size}, "
                    f"seed {cfg.fit.seed}), cross-entropy (label smoothing "
                    f"{cfg.fit.label_smoothing}), no distillation")  # fmt: skip


def quantization_peers(bench: Bench, ws: Workspace, params: Params, name: str, tmp: Path) -> None:
    """onnxruntime quantize_dynamic and NNCF quantize on the fp32 export that squeeze's static
    int8 candidate `name` quantizes; NNCF calibrates on the same training images."""
    cfg = params.quantize[name]
    source = fp32_source(ws, cfg.upstream, tmp)
    reference = predicted_classes(source, bench.splits["val"].images)
    about = {"role": "peer", "upstream": [cfg.upstream], "compared_with": name}
    ort_path = tmp / "peer_ort_dynamic.onnx"
    peers.ort_dynamic(source, ort_path)
    bench.add(ort_path, reference, name="peer_ort_dynamic",
              method="onnxruntime quantize_dynamic", built="quantize_dynamic, default settings",
              **about)  # fmt: skip
    images = calibration_images(load_split(ws.split("train")), cfg.calibration_samples)
    nncf_path = tmp / "peer_nncf_ptq.onnx"
    peers.nncf_quantized(source, nncf_path, images)
    bench.add(nncf_path, reference, name="peer_nncf_ptq", method="nncf.quantize",
              built=f"default preset, {len(images)} calibration images", **about)  # fmt: skip


def paired(bench: Bench, method: str, a: str, b: str, split: str) -> dict[str, Any]:
    """Model a against model b on the same images of split (squeeze.measure.stats.compare); method
    names what the pair shows."""
    labels = bench.splits[split].labels
    table = paired_table(bench.predictions[a][split] == labels,
                         bench.predictions[b][split] == labels)  # fmt: skip
    result = compare(table, ALPHA, margin=0.0)
    keep = ("difference", "ci95", "p_value", "alpha", "better", "worse", "table")
    return {"method": method, "a": a, "b": b, "split": split, **{k: result[k] for k in keep}}


def kd_pairs(params: Params) -> list[tuple[str, str]]:
    """(distilled, control): every student distilled with alpha > 0, from a model (distill) or
    from an ensemble (merge kind distill_ensemble), with a distill twin of alpha 0 and no feature
    matching that has the same student and fit, so the only difference is the soft targets
    (kd_small and ce_small in the default params)."""
    controls = [(n, c) for n, c in params.distill.items()
                if c.alpha == 0 and c.feature_weight == 0]  # fmt: skip
    students = [(n, k) for n, k in params.distill.items() if k.alpha > 0]
    students += [(n, m) for n, m in params.merge.items()
                 if m.kind == "distill_ensemble" and m.alpha > 0]  # fmt: skip
    return [(kd, ce) for kd, k in students for ce, c in controls
            if k.student == c.student and k.fit == c.fit]  # fmt: skip


def ensemble_pairs(params: Params, records: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(ensemble, its best member on validation) for every logit ensemble."""
    return [(name, max(m.upstreams, key=lambda up: records[up]["val_accuracy"]))
            for name, m in params.merge.items() if m.kind == "ensemble"]  # fmt: skip


def per_layer_finalists(ws: Workspace, params: Params) -> list[str]:
    """The search finalists built from a per-layer trial (their recipe's kind, in model.json):
    the others, search_uniform and a finalist of the uniform study's front, are uniform."""
    return [name for name in params.finalists()
            if read_json(ws.model(name) / "model.json")["search"]["kind"] == PER_LAYER]  # fmt: skip


def comparisons(
    bench: Bench, params: Params, records: dict[str, dict[str, Any]], per_layer: list[str]
) -> list[dict[str, Any]]:
    """What each method adds, on validation and on test: each squeeze candidate vs the peer
    built against it, each distilled student vs the same student without distillation, each
    ensemble vs its best member, each soup vs its variants (best ingredient, other soup), and
    each `per_layer` search finalist vs the uniform one found at the same budget."""
    pairs = [("vs peer", r["compared_with"], r["name"]) for r in bench.rows if r["role"] == "peer"]
    pairs += [("distillation", a, b) for a, b in kd_pairs(params)]
    pairs += [("ensemble", a, b) for a, b in ensemble_pairs(params, records)]
    pairs += [("soup", r["upstream"][0], r["name"]) for r in bench.rows if r["role"] == "variant"]
    pairs += [("per-layer vs uniform", name, UNIFORM) for name in per_layer]
    return [paired(bench, *pair, split) for pair in pairs for split in SPLITS]


def repeat_ratios(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """Row a's p50 ÷ row b's p50 within each repeat of the timing (Bench.time_all)."""
    return [x / y for x, y in zip(a["latency_ms_p50_repeats"], b["latency_ms_p50_repeats"],
                                  strict=True)]  # fmt: skip


def speedup_range(row: dict[str, Any], teacher: dict[str, Any]) -> list[float]:
    """[lowest, highest] teacher p50 ÷ row p50 over the repeats (each ratio within one repeat)."""
    ratios = repeat_ratios(teacher, row)
    return [round(min(ratios), 3), round(max(ratios), 3)]


def latency_over_peer(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """squeeze p50 ÷ peer p50 (medians over the repeats) and [lowest, highest] of that ratio
    within each repeat: a range that holds 1 is a tie on this machine."""
    ratios = repeat_ratios(ours, peer)
    return {"latency_ms_p50": round(ours["latency_ms_p50"] / peer["latency_ms_p50"], 4),
            "latency_ms_p50_range": [round(min(ratios), 4), round(max(ratios), 4)]}  # fmt: skip


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their size and latency ratios to the teacher and, for a peer, squeeze ÷ peer."""
    teacher = next(r for r in rows if r["name"] == "teacher")
    by_name = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        r = {**r, "shipped_ratio": round(choose.shipped_ratio(r, teacher), 3),
             "onnx_ratio": round(choose.onnx_ratio(r, teacher), 3),
             "speedup_p50": round(choose.speedup(r, teacher), 3),
             "speedup_p50_range": speedup_range(r, teacher),
             "macs_ratio": round(choose.macs_ratio(r, teacher), 3)}  # fmt: skip
        if r["role"] == "peer":
            ours = by_name[r["compared_with"]]
            r["squeeze_over_peer"] = {
                k: round(ours[k] / r[k], 4) for k in ("shipped_bytes", "size_bytes")
            } | latency_over_peer(ours, r)
        out.append(r)
    return out


def benchmark(ws: Workspace, params: Params, tmp: Path) -> tuple[list, list]:
    """Measure every row and compare the pairs; returns (rows with ratios, comparisons)."""
    torch.set_num_threads(params.evaluate.threads)
    splits = {s: load_split(ws.split(s)) for s in SPLITS}
    bench = Bench(splits, list(read_spec(ws.profile).classes), params.evaluate)
    records = measure_models(bench, ws, params)
    measure_variants(bench, ws, params, tmp)
    measure_anchors(bench, load_checkpoint(ws.model("teacher"))[0], tmp)
    for name in choose.unstructured(records, params):
        torch_peer(bench, ws, params, name, tmp)
    if static_int8 := choose.best_static_int8(records, params):
        quantization_peers(bench, ws, params, static_int8, tmp)
    bench.time_all()
    return with_ratios(bench.rows), comparisons(
        bench, params, records, per_layer_finalists(ws, params)
    )


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target's best candidate, chosen on validation (benchmarks/choose.py)."""
    teacher = next(r for r in rows if r["name"] == "teacher")
    candidates = [r for r in rows if r["role"] == "candidate"]
    return [choose.choose_target(t, candidates, teacher) for t in choose.TARGETS]


def timed(cmd: list[str], root: Path) -> tuple[float, str]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stdout + proc.stderr


def noop_timings(root: Path) -> list[dict[str, Any]]:
    """Wall time of a second `dvc repro` and a second `squeeze run`, and what they ran."""
    seconds, out = timed(["dvc", "repro"], root)
    repro = {
        "run": "second `dvc repro`",
        "seconds": round(seconds, 2),
        # `source` stamps the data at the source on every run (always_changed in dvc.yaml)
        "stages": f"{len(stages_ran(out))} stages ran besides the stamps",
        "target": "≤ 10 s, 0 stages",
    }
    seconds, out = timed(["squeeze", "run"], root)
    # the total row of the run's stage table: "total: 1 of 19 ran" (the `source` stamp)
    summary = next((ln.split("  ")[0] for ln in out.splitlines() if ln.startswith("total: ")), "?")
    flow = {
        "run": "second `squeeze run` (ephemeral Prefect API included)",
        "seconds": round(seconds, 2),
        "stages": summary,
        "target": "≤ 20 s, only the stamps (`source`, `production`) ran",
    }
    return [repro, flow]


RUN_CONFIGURATION = ("params.yaml", "dvc.yaml")  # a profile rewrites both; results record it


def code_changed(root: Path, written: tuple[str, ...] = ()) -> bool | None:
    """Whether the commit alone did not build the models at root: a tracked file differs from
    HEAD besides the run's configuration (RUN_CONFIGURATION) and the report files a compare
    writes (`written`, paths relative to root: a second compare over the same models rewrites
    them). None outside git (squeeze.registry.card.git_dirty)."""
    return git_dirty(root, ignore=RUN_CONFIGURATION + written)


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    ort_version = __import__("onnxruntime").__version__
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, onnxruntime {ort_version}")  # fmt: skip


def teacher_training(ws: Workspace, params: Params) -> dict[str, Any]:
    rec = read_json(ws.model("teacher") / "model.json")
    return {
        "train_seconds": rec["train_seconds"],
        "epochs": len(rec.get("history", [])) or params.train_teacher.fit.epochs,
        "parameters": rec["parameters"],
        "threads": params.train_teacher.fit.threads,
    }


def search_summary(ws: Workspace, params: Params) -> dict[str, Any] | None:
    """The budget search the workspace ran (None if none): its budget, how long it took, its
    trials (search/trials.csv) and finalists' recipes, and each finalist's build time."""
    if not params.search.finalists:
        return None
    found = read_json(ws.search(search_stage.FINALISTS))
    with ws.search(search_stage.TRIALS).open() as f:
        trials = list(csv.DictReader(f))
    budget = ("objective", "max_accuracy_drop", "drop", "max_latency_ms", "max_shipped_bytes",
              "trials", "uniform_trials", "hours", "seed", "rescore",
              "rescore_epochs")  # fmt: skip
    return {
        "budget": {k: getattr(params.search, k) for k in budget},
        # None: a search/finalists.json written before the search recorded its wall time
        "search_seconds": found.get("seconds"),
        "build_seconds": {
            n: read_json(ws.model(n) / "model.json")["wall_seconds"] for n in found["finalists"]
        },  # fmt: skip
        "teacher": found["teacher"],
        # {} where size counts; absent from a search written before the levers were timed
        "speed_levers": found.get("speed_levers") or {},
        "finalists": found["finalists"],
        "trials": trials,
    }


def gate_choice(ws: Workspace, params: Params) -> dict[str, Any] | None:
    """The gate's challenger (chosen on validation by gate.policy), when the gate ran and one
    passed."""
    path = ws.metrics("gate")
    challenger = read_json(path).get("challenger") if path.exists() else None
    return {"challenger": challenger, "policy": params.gate.policy} if challenger else None


def results(
    root: Path, params: Params, noop: bool, profile: str = DEFAULT, command: str = COMMAND,
    written: tuple[str, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    """Everything the benchmark reports about the workspace at root, as one JSON-ready dict.

    profile names the params the workspace ran (DEFAULT, or a profiles/*.yaml) and command
    how to reproduce the run and this report; both are printed in the report. written: the
    report files this compare rewrites (code_changed)."""
    ws = Workspace(root)
    with tempfile.TemporaryDirectory() as tmp:
        rows, compared = benchmark(ws, params, Path(tmp))
    return {
        "command": command,
        "profile": profile,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        # the code that built the models; RESULTS' hand-written notes carry it (notes_commit)
        "commit": git_revision(root),
        "dirty": code_changed(root, written),
        "machine": machine(),
        "evaluate": params.evaluate.model_dump(mode="json"),
        "latency_repeats": REPEATS,
        "choose_split": choose.CHOOSE,
        "report_split": choose.REPORT,
        "teacher_training": teacher_training(ws, params),
        "models": rows,
        "comparisons": compared,
        "targets": targets(rows),
        "by_method": choose.by_method(rows),
        "network": params.train_teacher.arch.model_dump(mode="json"),
        "gate": gate_choice(ws, params),
        "search": search_summary(ws, params),
        "noop": noop_timings(root) if noop else [],
    }


def write(data: dict[str, Any], out: Path, json_path: Path, readme: Path | None) -> str:
    """Write RESULTS.md (keeping its hand-written notes), results.json and, when given, README's
    Figures section; returns the RESULTS.md text."""
    notes = report.kept_notes(out.read_text() if out.exists() else "")
    text = report.results_md(data, notes, json_path.as_posix())
    out.write_text(text)
    write_json(json_path, data)
    if readme is not None:
        text_of_readme = report.replace_section(
            readme.read_text(), report.README_SECTION, report.readme_figures(data)
        )
        methods = report.methods_by_network(committed_results(json_path.parent))
        readme.write_text(report.replace_section(text_of_readme, report.METHODS_SECTION, methods))
    return text


def hand_tuned(
    folder: Path, policy: str, max_drop: float, profile: str = DEFAULT
) -> dict[str, Any] | None:  # fmt: skip
    """The hand-written graph's answer to a search run's budget, for its report to stand beside:
    of folder's results of the hand-written graph on the same data and network (results.json for
    the default params, results-<HAND_WRITTEN[profile]>.json otherwise), the candidate best under
    policy (a gate.policy, squeeze.decide.choose's order) among those within max_drop (a fraction,
    absolute) of that run's teacher on validation, with the teacher's row; None without such a
    run or candidate. Chosen on validation only, as the gate would choose."""
    written = HAND_WRITTEN.get(profile, DEFAULT)
    report_md, report_json = report_files(written)
    path = folder / Path(report_json).name
    if not path.exists():
        return None
    found = read_json(path)
    teacher = report.by_name(found)["teacher"]
    within = [
        r for r in found["models"]
        if r["role"] == "candidate" and choose.drop(r, teacher, choose.CHOOSE) <= max_drop
    ]  # fmt: skip
    chosen = best(within, POLICIES[policy])
    if chosen is None:
        return None
    return {
        "report": report_md, "params": written, "commit": found["commit"],
        "measured": found["measured"], "policy": policy, "max_drop": max_drop,
        "chosen": chosen, "teacher": teacher,
    }  # fmt: skip


def committed_results(folder: Path) -> list[dict[str, Any]]:
    """Every benchmark's results in folder (results.json first, then results-*.json by name)."""
    paths = sorted(folder.glob("results*.json"), key=lambda p: (p.name != "results.json", p.name))
    return [read_json(path) for path in paths]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default=".")
    p.add_argument("--noop", action="store_true", help="also time a no-op dvc repro / squeeze run")
    p.add_argument("--out", default=report_files(DEFAULT)[0])
    p.add_argument("--json", default=report_files(DEFAULT)[1])
    p.add_argument("--readme", default=None, help="also rewrite this README's Figures section")
    p.add_argument(
        "--profile", default=DEFAULT, help="the profile the workspace ran, for the report"
    )
    p.add_argument(
        "--command",
        default=None,
        help="the command that reproduces it, for the report (default: command_for(profile))",
    )
    args = p.parse_args(argv)
    root = Path(args.workspace).resolve()
    command = args.command or command_for(args.profile, args.noop)
    params = load_params(root)
    written = tuple(
        os.path.relpath(Path(path).resolve(), root)
        for path in (args.out, args.json, args.readme)
        if path
    )
    data = results(root, params, args.noop, args.profile, command, written)
    if data["search"] and args.profile != DEFAULT:
        gate = params.gate
        data["hand_tuned"] = hand_tuned(
            Path(args.json).parent, gate.policy, gate.max_accuracy_drop, args.profile
        )
    readme = Path(args.readme) if args.readme else None
    print(write(data, Path(args.out), Path(args.json), readme))


if __name__ == "__main__":
    main()
