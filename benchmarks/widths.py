"""Which widths run fast: batch-1 onnxruntime latency of one network at several settings of one
init argument (its widths), timed together in interleaved rounds.

    python -m benchmarks.widths --class-path examples.user_models.ResNet \
        --init '{"in_channels": 3, "num_classes": 10, "blocks": [2, 2, 2]}' --arg widths \
        --values '[16, 32, 64]' '[12, 24, 48]' '[8, 16, 40]' '[8, 16, 32]' \
        [--spec data/profile.json] [--runs 300 --rounds 10 --warmup 50 --threads 1]

Structured pruning buys MACs; whether they turn into time depends on the runtime's kernels
(onnxruntime's CPU convolutions work on blocks of channels), so measure the widths a
`prune.*.round_to` would give before choosing it. Weights are random: a dense fp32 network's
latency does not depend on their values. Prints a Markdown table: MACs, p50 and p95 in ms, and
the speed-up of each setting over the first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from squeeze.config.sections import EvaluateParams
from squeeze.data.spec import read_spec
from squeeze.measure.export import export_onnx, graph_stats
from squeeze.measure.runtime import latencies
from squeeze.nets.models import build_model


def measure(
    class_path: str, init: dict[str, Any], arg: str, values: list[Any], spec_path: Path,
    cfg: EvaluateParams,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per value of init[arg]: {"value", "macs", "latency_ms_p50", "latency_ms_p95",
    "speedup_p50"} (over the first value), all exports timed together (evaluate.latencies)."""
    spec = read_spec(spec_path)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, value in enumerate(values):
            arch = {"class_path": class_path, "init_args": {**init, arg: value}}
            paths[str(i)] = Path(tmp) / f"{i}.onnx"
            export_onnx(build_model(arch, spec), paths[str(i)])
        sample = np.zeros((spec.height, spec.width, spec.channels), np.uint8)
        timed = latencies(paths, sample, cfg)
        macs = {key: graph_stats(path)["macs"] for key, path in paths.items()}
    first = timed["0"]["latency_ms_p50"]
    return [
        {"value": value, "macs": macs[str(i)], **timed[str(i)],
         "speedup_p50": round(first / timed[str(i)]["latency_ms_p50"], 3)}
        for i, value in enumerate(values)
    ]  # fmt: skip


def table(arg: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"| {arg} | MACs | p50 ms | p95 ms | speed-up p50 |", "|---|---|---|---|---|"]
    lines += [f"| {json.dumps(r['value'])} | {r['macs']:,} | {r['latency_ms_p50']:.4f} | "
              f"{r['latency_ms_p95']:.4f} | {r['speedup_p50']:.2f}× |" for r in rows]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--class-path", required=True, help="the network, as params' class_path")
    p.add_argument("--init", default="{}", help="its other init_args, as JSON")
    p.add_argument("--arg", required=True, help="the init argument that varies")
    p.add_argument("--values", nargs="+", required=True, help="its settings, each as JSON")
    p.add_argument("--spec", default="data/profile.json", help="the data profile ingest wrote")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    cfg = EvaluateParams(threads=args.threads, warmup=args.warmup, runs=args.runs,
                         rounds=args.rounds, throughput_batch=1)  # fmt: skip
    values = [json.loads(v) for v in args.values]
    rows = measure(args.class_path, json.loads(args.init), args.arg, values, Path(args.spec), cfg)
    print(table(args.arg, rows))


if __name__ == "__main__":
    main()
