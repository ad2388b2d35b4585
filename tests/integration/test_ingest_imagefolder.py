"""ingest on an ImageFolder of real Fashion-MNIST PNGs: data/profile.json from the training
split, the same bytes from a local folder and from its copy under an s3:// prefix (moto's real
S3 endpoint), bad files named with their s3:// URL, and `dvc repro` seeing new images but not
re-encoded ones."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.numpy import load

from examples.fmnist_imagefolder import folder_names, write_imagefolder
from squeeze.config.dvcyaml import stages_ran
from squeeze.config.files import load_params
from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json
from squeeze.data.spec import DataError, read_spec
from squeeze.data.splits import load_split
from stages import ingest as ingest_stage
from tests.conftest import run
from tests.integration.conftest import S3Endpoint

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
# everything ingest writes that later stages, the DVC cache and the registry's lineage see
INGESTED = ("data/raw/*", "data/splits/*", "data/fingerprint.json", "data/profile.json")
IMAGEFOLDER = {"format": "imagefolder", "classes": None, "channels": 3, "image_size": [32, 32],
               "expected_train": None, "expected_test": None}  # fmt: skip


def imagefolder_params(source: str, **changes: object) -> Params:
    params = load_params(PROJECT)
    cfg = params.ingest.model_copy(update=IMAGEFOLDER | {"source": source} | changes)
    return params.model_copy(update={"ingest": cfg})


def digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for pattern in INGESTED
        for path in sorted(root.glob(pattern))
    }


@pytest.fixture(scope="module")
def pngs(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/ and test/<class>/: 30 + 10 RGB 32x32 PNGs per class."""
    return write_imagefolder(tmp_path_factory.mktemp("pngs"), 30, 10, rgb32=True)


def upload(endpoint: S3Endpoint, folder: Path, prefix: str) -> str:
    """Copy every file under folder to s3://BUCKET/prefix/; returns that URL."""
    client = endpoint.client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        client.put_object(Bucket=endpoint.bucket, Key=key, Body=path.read_bytes())
    return f"s3://{endpoint.bucket}/{prefix}"


def test_ingest_writes_the_profile_of_the_training_split(pngs: Path, tmp_path: Path) -> None:
    ingest_stage.run(tmp_path, imagefolder_params(str(pngs)))
    ws = Workspace(tmp_path)
    spec = read_spec(ws.profile)
    assert spec.classes == tuple(sorted(folder_names()))
    assert (spec.height, spec.width, spec.channels) == (32, 32, 3)
    train = load_split(ws.split("train"))
    assert train.images.shape == (270, 32, 32, 3) and len(load_split(ws.split("val"))) == 30
    pixels = train.images.reshape(-1, 3) / 255
    np.testing.assert_allclose(spec.mean, pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(spec.std, pixels.std(0), atol=1e-6)
    metrics = read_json(ws.metrics("ingest"))
    assert metrics["profile"] == read_json(ws.profile)
    assert metrics["format"] == "imagefolder" and metrics["raw_images"] == {
        "train": 300,
        "test": 100,
    }
    assert metrics["images"] | {"skipped_files": [], "ignored_files": []} == {
        "converted": 0, "skipped": 0, "skipped_files": [], "ignored": 0, "ignored_files": []
    }  # fmt: skip
    assert all(metrics["checks"].values()) and "duplicates" in metrics["checks"]
    # the snapshot: the decoded arrays and the class names, enough to ingest again
    assert sorted(p.name for p in ws.raw.iterdir()) == [
        "classes.json", "test.safetensors.gz", "train.safetensors.gz"
    ]  # fmt: skip
    assert read_json(ws.raw / "classes.json") == list(spec.classes)
    snapshot = load(gzip.decompress((ws.raw / "train.safetensors.gz").read_bytes()))
    assert snapshot["images"].shape == (300, 32, 32, 3) and snapshot["labels"].shape == (300,)


def test_bad_data_stops_ingest_and_keeps_the_last_good_data(pngs: Path, tmp_path: Path) -> None:
    ingest_stage.run(tmp_path / "ws", imagefolder_params(str(pngs)))
    good = digests(tmp_path / "ws")
    broken = Path(shutil.copytree(pngs, tmp_path / "broken"))
    bad = sorted((broken / "train" / "Pullover").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:70])
    with pytest.raises(DataError, match=f"{bad}: corrupt image"):
        ingest_stage.run(tmp_path / "ws", imagefolder_params(str(broken)))
    assert digests(tmp_path / "ws") == good
    # with skip: ingested, the file counted and named in the report
    ingest_stage.run(tmp_path / "ws", imagefolder_params(str(broken), on_bad_image="skip"))
    images = read_json(Workspace(tmp_path / "ws").metrics("ingest"))["images"]
    assert images["skipped"] == 1
    assert images["skipped_files"][0].startswith(f"train/Pullover/{bad.name}: corrupt image")


def test_an_s3_prefix_gives_the_bytes_of_the_local_folder(
    pngs: Path, s3_endpoint: S3Endpoint, s3_prefix: str, tmp_path: Path
) -> None:
    url = upload(s3_endpoint, pngs, s3_prefix)
    ingest_stage.run(tmp_path / "local", imagefolder_params(str(pngs)))
    ingest_stage.run(tmp_path / "s3", imagefolder_params(url + "/", endpoint_url=s3_endpoint.url))
    local, remote = digests(tmp_path / "local"), digests(tmp_path / "s3")
    assert local == remote and len(local) == 3 + 3 + 2  # snapshot, splits, fingerprint, profile
    assert read_json(Workspace(tmp_path / "s3").metrics("ingest"))["source"] == url


def test_a_bad_file_under_an_s3_prefix_is_named_by_its_url(
    pngs: Path, s3_endpoint: S3Endpoint, s3_prefix: str, tmp_path: Path
) -> None:
    url = upload(s3_endpoint, pngs, s3_prefix)
    key = f"{s3_prefix}/test/Sneaker/readme.txt"
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=key, Body=b"hello")
    params = imagefolder_params(url, endpoint_url=s3_endpoint.url)
    with pytest.raises(DataError, match=f"{url}/test/Sneaker/readme.txt: not an image file"):
        ingest_stage.run(tmp_path, params)
    # a class folder missing from test, on S3 too
    client = s3_endpoint.client()
    listed = client.list_objects_v2(Bucket=s3_endpoint.bucket, Prefix=f"{s3_prefix}/test/Bag/")
    for item in listed["Contents"]:
        client.delete_object(Bucket=s3_endpoint.bucket, Key=item["Key"])
    with pytest.raises(DataError, match=f"{url}/test/Bag/ is missing but train/Bag/ exists"):
        ingest_stage.run(tmp_path, params)


def reencode(folder: Path) -> None:
    """The same pixels in other files: every PNG saved again at the highest compression."""
    for path in sorted(folder.rglob("*.png")):
        Image.open(path).save(path, compress_level=9)


def test_dvc_repro_sees_new_images_but_not_reencoded_ones(pngs: Path, workspace: Path) -> None:
    source = Path(shutil.copytree(pngs, workspace.parent / "source"))
    path = workspace / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["ingest"] |= IMAGEFOLDER | {"source": str(source)}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_ran(run(["dvc", "repro", "ingest"], workspace).stdout) == ["ingest"]
    ingested = digests(workspace)
    assert read_spec(Workspace(workspace).profile).channels == 3

    reencode(source)
    assert stages_ran(run(["dvc", "repro", "ingest"], workspace).stdout) == []
    assert digests(workspace) == ingested

    # one more image (a coat mirrored: a copy would be refused as a duplicate): new data
    coat = Image.open(sorted((source / "train" / "Coat").iterdir())[0])
    coat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(source / "train" / "Coat" / "new.png")
    assert stages_ran(run(["dvc", "repro", "ingest"], workspace).stdout) == ["ingest"]
    assert digests(workspace)["data/fingerprint.json"] != ingested["data/fingerprint.json"]
