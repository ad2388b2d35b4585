"""Stage `ingest`: read the source's data (IDX files or an ImageFolder), validate it, write the
splits and the data profile.

Reads params `ingest.*` and the source stamp data/source.json (the `source` stage: DVC re-runs
ingest when the data at the source changed); writes data/raw/, data/splits/,
data/fingerprint.json, data/profile.json (the DataSpec models read: classes, image size and
channels, per-channel mean and std of the training split), metrics/ingest.json and the GX data
docs in reports/ingest/.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from squeeze.config.params import Params
from squeeze.config.sections import IngestParams
from squeeze.config.workspace import Workspace, write_json
from squeeze.data import checks as data_suite
from squeeze.data.sources import fingerprint, read_source, write_snapshot
from squeeze.data.spec import DataError, DataSpec, Source, Split
from squeeze.data.splits import (
    class_names,
    hold_out,
    save_split,
    stratified_indices,
    subset,
    train_test,
)
from squeeze.expectations import validate
from stages.candidate import stage_main

LISTED = 20  # skipped or ignored files named in metrics/ingest.json (all are counted)


def make_splits(
    full: dict[str, Split], cfg: IngestParams, rng: np.random.Generator
) -> dict[str, Split]:
    """train, val and test: the stratified subsets of the source's train and test splits
    (ingest.train_per_class, test_per_class), val held out of train (ingest.val_fraction); and
    with ingest.search_fraction, search held out of what is left of train, after val, so that
    train, val and test are those of no search when it is 0."""
    train = subset(
        full["train"], stratified_indices(full["train"].labels, cfg.train_per_class, rng)
    )
    test = subset(full["test"], stratified_indices(full["test"].labels, cfg.test_per_class, rng))
    train, val = hold_out(train, cfg.val_fraction, rng)
    if not cfg.search_fraction:
        return {"train": train, "val": val, "test": test}
    train, search = hold_out(train, cfg.search_fraction, rng)
    return {"train": train, "val": val, "test": test, "search": search}


def image_report(source: Source) -> dict[str, Any]:
    """What happened to the source's files on the way in, for metrics/ingest.json."""
    return {
        "converted": source.converted,
        "skipped": len(source.skipped),
        "skipped_files": list(source.skipped[:LISTED]),
        "ignored": len(source.ignored),
        "ignored_files": list(source.ignored[:LISTED]),
    }


def run(root: Path, params: Params) -> None:
    """Read, split and validate the source's data first and only then replace the workspace
    data, so that bad data never overwrites the last good snapshot."""
    ws, cfg = Workspace(root), params.ingest
    source = read_source(cfg, ws.state("incoming"))
    if source.skipped:
        print(
            f"warning: {len(source.skipped)} unreadable files left out (ingest.on_bad_image: "
            f"skip), the first: {source.skipped[0]}",
            file=sys.stderr,
        )
    classes = class_names(source, cfg.classes)
    rng = np.random.default_rng(cfg.seed)
    full = train_test(source, cfg.test_fraction, rng)
    splits = make_splits(full, cfg, rng)
    docs = ws.report("ingest")
    shutil.rmtree(docs, ignore_errors=True)
    results = [validate(df, name, specs, docs)
               for name, df, specs in data_suite.suites(full, splits, classes, cfg)]  # fmt: skip
    failures = [f"{r.suite}: {f.expectation}({f.column or ''}) observed {f.observed}"
                for r in results for f in r.failures()]  # fmt: skip
    if failures:
        raise DataError(
            f"the data from {source.location} failed its checks (details in "
            f"{docs}/index.html):\n  " + "\n  ".join(failures)
        )
    spec = DataSpec.measure(splits["train"], classes)
    if not all(spec.std):
        raise DataError(
            f"the training images from {source.location} are constant in a channel (std "
            f"{list(spec.std)}): a model cannot learn from them"
        )
    ws.split("search").unlink(missing_ok=True)  # a search split of earlier params must not stay
    for name, split in splits.items():
        save_split(split, ws.split(name))
    # the snapshot is re-encoded from the decoded data: its bytes do not depend on how the
    # source's files were encoded, nor on their names
    snapshot = ws.state("snapshot")
    shutil.rmtree(snapshot, ignore_errors=True)
    snapshot.mkdir(parents=True)
    write_snapshot(source, snapshot)
    shutil.rmtree(ws.raw, ignore_errors=True)
    ws.raw.parent.mkdir(parents=True, exist_ok=True)
    snapshot.replace(ws.raw)
    write_json(ws.fingerprint, fingerprint(source.splits, source.classes))
    write_json(ws.profile, spec.to_json())
    write_json(
        ws.metrics("ingest"),
        {"source": source.location, "format": source.format,
         **data_suite.profile(full, splits, classes), "profile": spec.to_json(),
         "images": image_report(source), "checks": {r.suite: r.success for r in results}},
    )  # fmt: skip


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
