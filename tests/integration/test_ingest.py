"""What counts as new data, in a fresh git+DVC repo on real Fashion-MNIST files: `dvc repro` and
the flow both notice a changed source through the `source` stamp stage, and both ignore a source
whose files were only re-encoded (the fingerprint is taken over the decoded data)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from prefect import flow

from flows.compress import build
from squeeze.config.files import load_params
from squeeze.config.workspace import Workspace, read_json
from squeeze.data.idx import read_split
from stages import ingest as ingest_stage
from tests.conftest import dvc_up_to_date, run, set_param

pytestmark = pytest.mark.slow

TRAIN_LABELS = "train-labels-idx1-ubyte"
# what ingest writes that later stages, the DVC cache and the registry's lineage see
INGESTED = ("data/raw/*", "data/splits/*", "data/fingerprint.json", "data/profile.json")


def digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for pattern in INGESTED
        for path in sorted(root.glob(pattern))
    }


def repro_ingest(root: Path) -> list[str]:
    """`dvc repro ingest` (ingest and the stage it depends on); the stages that ran."""
    out = run(["dvc", "repro", "ingest"], root).stdout
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]


def up_to_date(root: Path) -> bool:
    """DVC has nothing to do for ingest: `source` runs anyway, ingest is current."""
    return dvc_up_to_date(root, "source", "ingest")


@flow
def flow_ingests(root: Path) -> bool:
    """The flow's first two steps, with its own task: stamp the source, then ingest if stale."""
    params = load_params(root)
    build("source", root, params)
    return build("ingest", root, params)


def reencode(folder: Path) -> None:
    """The same data, other files: the training labels gunzipped, the test images gzipped
    again at another level, with a file name and a timestamp in the gzip header."""
    labels = folder / f"{TRAIN_LABELS}.gz"
    (folder / TRAIN_LABELS).write_bytes(gzip.decompress(labels.read_bytes()))
    labels.unlink()
    images = folder / "t10k-images-idx3-ubyte.gz"
    blob = gzip.decompress(images.read_bytes())
    with images.open("wb") as raw, gzip.GzipFile("x", "wb", 1, raw, mtime=99) as out:
        out.write(blob)


def shuffle_training_labels(folder: Path, seed: int) -> None:
    """New data: the training labels permuted (still valid, balanced IDX data)."""
    path = folder / TRAIN_LABELS
    blob = path.read_bytes()
    body = np.random.default_rng(seed).permutation(np.frombuffer(blob, np.uint8, offset=8))
    path.write_bytes(blob[:8] + body.tobytes())


def test_both_entry_points_see_new_data_and_ignore_a_new_encoding(
    workspace: Path, fmnist_dir: Path, prefect_api
) -> None:
    source = workspace.parent / "source"
    shutil.copytree(fmnist_dir, source)
    set_param(workspace, "ingest", "source", str(source))
    assert repro_ingest(workspace) == ["source", "ingest"]
    ingested = digests(workspace)
    assert read_json(Workspace(workspace).source) == read_json(Workspace(workspace).fingerprint)

    # nothing changed: only the stamp runs, in both entry points
    assert repro_ingest(workspace) == ["source"]
    assert not flow_ingests(workspace)
    assert up_to_date(workspace)

    # re-encoded, not changed: still nothing to ingest, in both entry points
    reencode(source)
    assert repro_ingest(workspace) == ["source"]
    assert not flow_ingests(workspace)
    assert digests(workspace) == ingested

    # new data: the flow ingests it, and then DVC agrees that all is current
    shuffle_training_labels(source, seed=1)
    assert flow_ingests(workspace)
    assert up_to_date(workspace) and repro_ingest(workspace) == ["source"]
    flow_ingested = digests(workspace)
    assert flow_ingested["data/fingerprint.json"] != ingested["data/fingerprint.json"]

    # other new data: `dvc repro` ingests it, and then the flow has nothing to do
    shuffle_training_labels(source, seed=2)
    assert repro_ingest(workspace) == ["source", "ingest"]
    assert digests(workspace)["data/fingerprint.json"] != flow_ingested["data/fingerprint.json"]
    assert not flow_ingests(workspace)
    assert up_to_date(workspace)


def test_ingest_writes_the_same_bytes_whatever_the_encoding(
    fmnist_dir: Path, tmp_path: Path
) -> None:
    """When ingest does run (new code, new params), a re-encoded source still gives a
    byte-identical snapshot, splits and fingerprint: nothing downstream re-runs."""
    source = tmp_path / "source"
    shutil.copytree(fmnist_dir, source)
    reencode(source)
    written = {}
    for name, folder in (("original", fmnist_dir), ("reencoded", source)):
        root = tmp_path / name
        params = load_params(Path(__file__).parents[2])
        cfg = params.ingest.model_copy(update={"source": str(folder)})
        ingest_stage.run(root, params.model_copy(update={"ingest": cfg}))
        written[name] = digests(root)
    assert written["original"] == written["reencoded"]
    # four raw files, three splits, fingerprint, profile
    assert len(written["original"]) == 4 + 3 + 1 + 1
    # the snapshot is the data: it reads back as the system copy's arrays
    snapshot = read_split(tmp_path / "reencoded" / "data" / "raw", "train")
    np.testing.assert_array_equal(snapshot.labels, read_split(fmnist_dir, "train").labels)
