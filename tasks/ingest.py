"""Stage `ingest`: fetch the raw Fashion-MNIST files, validate them, write splits and profile.

Reads params `ingest.*`; writes data/raw/, data/splits/, data/fingerprint.json,
metrics/ingest.json and the GX data docs in reports/ingest/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from squeeze import data_suite
from squeeze.data import (
    IDX_FILES,
    DataError,
    FetchError,
    fetch_raw,
    fingerprint,
    read_split,
    save_split,
    split_train_val,
    stratified_indices,
    subset,
)
from squeeze.expectations import validate
from squeeze.params import Params, load_params
from squeeze.workspace import Workspace, read_json, write_json
from tasks.retrying import io_task


def run(root: Path, params: Params) -> None:
    """Fetch into a scratch folder, validate there, and only then replace the workspace data,
    so that bad data never overwrites the last good snapshot."""
    ws, cfg = Workspace(root), params.ingest
    incoming = ws.state("incoming")
    source = fetch_raw(cfg.source, cfg.mirror, cfg.endpoint_url, incoming)
    raw = {name: read_split(incoming, name, source) for name in IDX_FILES}
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
    shutil.rmtree(ws.raw, ignore_errors=True)
    ws.raw.parent.mkdir(parents=True, exist_ok=True)
    incoming.replace(ws.raw)
    write_json(ws.fingerprint, fingerprint(ws.raw))
    write_json(
        ws.metrics("ingest"),
        {"source": source, **data_suite.profile(raw, splits),
         "checks": {r.suite: r.success for r in results}},
    )  # fmt: skip


def source_changed(root: Path, params: Params) -> bool:
    """Whether the source now holds other files than the workspace's snapshot.

    DVC cannot see outside the repo, so a scheduled run asks here: it fetches the source into
    scratch space and compares fingerprints (local copy or S3 download of ~30 MB).
    """
    ws, cfg = Workspace(root), params.ingest
    if not ws.fingerprint.exists():
        return True
    probe = ws.state("probe")
    try:
        fetch_raw(cfg.source, cfg.mirror, cfg.endpoint_url, probe)
        return fingerprint(probe)["sha256"] != read_json(ws.fingerprint)["sha256"]
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def fetch_failed(err: BaseException) -> bool:
    """A failed fetch (network, S3) is worth retrying; bad data fails at once."""
    return isinstance(err, FetchError)


ingest = io_task(run, "ingest", fetch_failed, timeout_seconds=1800)
check_source = io_task(source_changed, "check_source", fetch_failed, timeout_seconds=600)


def main() -> None:
    run(Path("."), load_params())


if __name__ == "__main__":
    main()
