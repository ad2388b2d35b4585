"""Stage `ingest`: fetch the raw Fashion-MNIST files, validate them, write splits and profile.

Reads params `ingest.*` and the source stamp data/source.json (the `source` stage: DVC re-runs
ingest when the data at the source changed); writes data/raw/, data/splits/,
data/fingerprint.json, metrics/ingest.json and the GX data docs in reports/ingest/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from squeeze import data_suite
from squeeze.data import (
    DataError,
    fingerprint,
    read_source,
    save_split,
    split_train_val,
    stratified_indices,
    subset,
    write_raw,
)
from squeeze.expectations import validate
from squeeze.params import Params
from squeeze.workspace import Workspace, write_json
from tasks.candidate import stage_main
from tasks.retrying import io_task
from tasks.source import fetch_failed


def run(root: Path, params: Params) -> None:
    """Read and validate the source's data first and only then replace the workspace data,
    so that bad data never overwrites the last good snapshot."""
    ws, cfg = Workspace(root), params.ingest
    source, raw = read_source(cfg.source, cfg.mirror, cfg.endpoint_url, ws.state("incoming"))
    docs = ws.report("ingest")
    shutil.rmtree(docs, ignore_errors=True)
    results = [validate(df, name, specs, docs) for name, df, specs in data_suite.suites(raw, cfg)]
    failures = [f"{r.suite}: {f.expectation}({f.column or ''}) observed {f.observed}"
                for r in results for f in r.failures()]  # fmt: skip
    if failures:
        raise DataError(
            f"the data from {source} failed its checks (details in {docs}/index.html):\n  "
            + "\n  ".join(failures)
        )
    rng = np.random.default_rng(cfg.seed)
    train = subset(raw["train"], stratified_indices(raw["train"].labels, cfg.train_per_class, rng))
    test = subset(raw["test"], stratified_indices(raw["test"].labels, cfg.test_per_class, rng))
    train, val = split_train_val(train, cfg.val_fraction, rng)
    splits = {"train": train, "val": val, "test": test}
    for name, split in splits.items():
        save_split(split, ws.split(name))
    # the snapshot is re-encoded from the decoded data: its bytes do not depend on whether the
    # source's files were gzipped, nor on their names
    snapshot = ws.state("snapshot")
    shutil.rmtree(snapshot, ignore_errors=True)
    write_raw(raw, snapshot)
    shutil.rmtree(ws.raw, ignore_errors=True)
    ws.raw.parent.mkdir(parents=True, exist_ok=True)
    snapshot.replace(ws.raw)
    write_json(ws.fingerprint, fingerprint(raw))
    write_json(
        ws.metrics("ingest"),
        {"source": source, **data_suite.profile(raw, splits),
         "checks": {r.suite: r.success for r in results}},
    )  # fmt: skip


ingest = io_task(run, "ingest", fetch_failed, timeout_seconds=1800)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
