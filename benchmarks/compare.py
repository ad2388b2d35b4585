"""Measure the teacher, every candidate and the two naive anchors side by side, in one process.

Run after the pipeline (`make run`, `squeeze run` or `dvc repro`) in the workspace:

    python -m benchmarks.compare [--workspace .] [--noop] [--out benchmarks/RESULTS.md]

The anchors are taken literally from the sketch this project started from: a random 50% weight
mask, and min-max scaling of every weight tensor rounded to integers with no zero-point. With
--noop it also times a second `dvc repro` and a second `squeeze run` (nothing changed, so
nothing should run). Prints the table and writes it, with ratios and targets, to RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from squeeze.data import load_split
from squeeze.evaluate import export_onnx, measure
from squeeze.models import load_checkpoint, weight_layers
from squeeze.params import Params, load_params
from squeeze.train import predict
from squeeze.workspace import Workspace, read_json

COMMAND = "make run && .venv/bin/python -m benchmarks.compare --noop"


def random_mask(model: nn.Module, share: float, seed: int) -> nn.Module:
    """Anchor 1: zero a random `share` of every conv/linear weight, no fine-tuning."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in weight_layers(out).values():
            m.weight.mul_((torch.rand(m.weight.shape, generator=gen) >= share).float())
    return out


def minmax_integers(model: nn.Module, levels: int = 255) -> nn.Module:
    """Anchor 2: w -> round(w / s) · s with s = (max - min) / levels, per tensor, no zero-point
    (the sketch's scheme); the integers are stored back as floats to measure the accuracy."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for m in weight_layers(out).values():
            w = m.weight
            scale = (w.max() - w.min()) / levels
            w.copy_(torch.round(w / scale) * scale)
    return out


def measure_all(ws: Workspace, params: Params, tmp: Path) -> list[dict[str, Any]]:
    """Every model evaluate exported, plus the anchors built from the teacher: one process,
    one thread setting, the same test split."""
    test = load_split(ws.split("test"))
    cfg = params.evaluate
    torch.set_num_threads(cfg.threads)
    candidates = read_json(ws.metrics("candidates"))
    rows = []
    for name in params.model_names():
        rec = measure(ws.export(name), test, cfg)
        rows.append({"name": name, "method": candidates[name]["method"], **rec})
    teacher, _ = load_checkpoint(ws.model("teacher"))
    reference = predict(teacher, torch.from_numpy(test.images)).argmax(1).numpy()
    anchors = {
        "anchor_random_mask50": random_mask(teacher, 0.5, seed=0),
        "anchor_minmax_int_no_zero_point": minmax_integers(teacher),
    }
    for name, model in anchors.items():
        path = tmp / f"{name}.onnx"
        export_onnx(model, path)
        rows.append({"name": name, "method": "anchor", **measure(path, test, cfg, reference)})
    return rows


def timed(cmd: list[str], root: Path) -> tuple[float, str]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stdout + proc.stderr


def noop_timings(root: Path) -> list[str]:
    """Wall time of a second `dvc repro` and a second `squeeze run`, and what they ran."""
    lines = []
    seconds, out = timed(["dvc", "repro"], root)
    ran = out.count("Running stage")
    lines.append(f"| second `dvc repro` | {seconds:.1f} s | {ran} stages ran | ≤ 10 s, 0 stages |")
    seconds, out = timed(["squeeze", "run"], root)
    summary = next((ln for ln in out.splitlines() if ln.startswith("ran: ")), "?")
    lines.append(f"| second `squeeze run` (ephemeral Prefect API included) | {seconds:.1f} s | "
                 f"{summary} | ≤ 20 s, 0 stages |")  # fmt: skip
    return lines


def table(rows: list[dict[str, Any]]) -> list[str]:
    t = next(r for r in rows if r["name"] == "teacher")
    out = [
        "| model | method | accuracy % | Δ pts | .onnx bytes | gzip bytes | teacher .onnx ÷ gzip "
        "| nonzero params | MACs | p50 ms | p95 ms | speed-up p50 | img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['name']} | {r['method']} | {r['accuracy'] * 100:.2f} | "
            f"{(r['accuracy'] - t['accuracy']) * 100:+.2f} | {r['size_bytes']:,} | "
            f"{r['gzip_bytes']:,} | {t['size_bytes'] / r['gzip_bytes']:.1f}× | "
            f"{r['nonzero_params']:,} | {r['macs']:,} | {r['latency_ms_p50']:.4f} | "
            f"{r['latency_ms_p95']:.4f} | {t['latency_ms_p50'] / r['latency_ms_p50']:.2f}× | "
            f"{r['throughput']:,.0f} |"
        )
    return out


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with the best row that meets it (or the closest miss)."""
    t = next(r for r in rows if r["name"] == "teacher")
    cands = [r for r in rows if r["method"] not in ("anchor", "train")]
    drop = {r["name"]: (t["accuracy"] - r["accuracy"]) * 100 for r in cands}

    def verdict(ok: list[dict], label: str, show, tie_break=lambda r: 0.0) -> str:
        best = max(ok, key=lambda r: (r["accuracy"], tie_break(r))) if ok else None
        return f"| {label} | {'met' if best else 'missed'} | {show(best) if best else '—'} |"

    small = [r for r in cands if r["accuracy"] >= 0.925 and r["gzip_bytes"] <= 64 * 1024]
    tiny = [r for r in cands if t["size_bytes"] / r["gzip_bytes"] >= 40 and drop[r["name"]] <= 1]
    fast = [r for r in cands
            if t["latency_ms_p50"] / r["latency_ms_p50"] >= 3 and drop[r["name"]] <= 1]  # fmt: skip
    by_name = {r["name"]: r for r in rows}
    kd, ce = by_name.get("kd_small"), by_name.get("ce_small")
    lines = [
        "| target | result | best candidate meeting it |",
        "|---|---|---|",
        verdict(small, "≥ 92.5% with a deployable file ≤ 64 KB (the shipped model.onnx.gz)",
                lambda r: f"{r['name']}: {r['accuracy']:.2%}, {r['gzip_bytes']:,} B shipped "
                          f"({r['size_bytes']:,} B unpacked)"),
        verdict(tiny, "≥ 40× smaller than the teacher's fp32 .onnx (gzip bytes), ≤ 1 pt drop",
                lambda r: f"{r['name']}: {t['size_bytes'] / r['gzip_bytes']:.1f}×, "
                          f"{-drop[r['name']]:+.2f} pts",
                tie_break=lambda r: -r["gzip_bytes"]),
        verdict(fast, "≥ 3× lower batch-1 latency (p50, onnxruntime), ≤ 1 pt drop",
                lambda r: f"{r['name']}: {t['latency_ms_p50'] / r['latency_ms_p50']:.2f}×, "
                          f"{-drop[r['name']]:+.2f} pts",
                tie_break=lambda r: -r["latency_ms_p50"]),
    ]  # fmt: skip
    if kd and ce:
        gain = (kd["accuracy"] - ce["accuracy"]) * 100
        lines.append(f"| distillation beats the same student without it | "
                     f"{'met' if gain > 0 else 'missed'} | kd_small {kd['accuracy']:.2%} vs "
                     f"ce_small {ce['accuracy']:.2%} ({gain:+.2f} pts) |")  # fmt: skip
    return lines


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    ort_version = __import__("onnxruntime").__version__
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, onnxruntime {ort_version}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", default=".")
    p.add_argument("--noop", action="store_true", help="also time a no-op dvc repro / squeeze run")
    p.add_argument("--out", default="benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    root = Path(args.workspace).resolve()
    ws, params = Workspace(root), load_params(root)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure_all(ws, params, Path(tmp))
    teacher_rec = read_json(ws.model("teacher") / "model.json")
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{COMMAND}` (default params). Machine: {machine()}.",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, all rows in one process, "
        f"onnxruntime with {params.evaluate.threads} thread(s), batch-1 latency over "
        f"{params.evaluate.runs} runs after {params.evaluate.warmup} warm-up runs.",
        "",
        "Size: `.onnx bytes` is the ONNX file onnxruntime loads; `gzip bytes` is that file after "
        "gzip -9, which is the file the registry stores and ships (`model.onnx.gz`, "
        "squeeze/package.py): the zeros of a pruned model and the few distinct values of a "
        "quantization-aware one cost little there. Ratios divide the teacher's plain fp32 .onnx "
        "bytes by the candidate's gzip bytes, as Deep Compression compares compressed against "
        "original storage.",
        "",
        *table(rows),
        "",
        "## Targets",
        "",
        *targets(rows),
        "",
        "## Teacher",
        "",
        f"Test accuracy {rows[0]['accuracy']:.2%}; training {teacher_rec['train_seconds']:.0f} s "
        f"over {len(teacher_rec.get('history', [])) or params.train_teacher.fit.epochs} epochs "
        f"({teacher_rec['parameters']:,} parameters, threads={params.train_teacher.fit.threads}). "
        "Target: ≥ 93.0% in ≤ 12 minutes of training on 2 CPU cores.",
    ]
    if args.noop:
        lines += ["", "## Nothing changed", "", "| run | wall time | stages | target |",
                  "|---|---|---|---|", *noop_timings(root)]  # fmt: skip
    lines += ["", "Anchors (literal, from the original sketch): `anchor_random_mask50` zeroes a "
              "random half of every weight tensor; `anchor_minmax_int_no_zero_point` rounds "
              "w / ((max - min) / 255) to integers with no zero-point (stored back as floats, "
              "so its file is fp32-sized). Anchors in the literature: Deep Compression (Han et "
              "al. 2016) 39–40× on MNIST LeNets with no loss; Hinton et al. 2015 (distillation)."
              ]  # fmt: skip
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
