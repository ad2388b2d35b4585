"""The `source` stamp of an ImageFolder on a real S3 endpoint (moto's server): a second stamp
with nothing changed lists the prefix (sizes and ETags) and fetches no image; a re-uploaded
image with the same pixels in another encoding is fetched again and changes nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from examples.fmnist_imagefolder import write_imagefolder
from squeeze.config.files import load_params
from squeeze.config.params import Params
from squeeze.config.workspace import Workspace
from stages import source as stage
from tests.integration.conftest import S3Endpoint

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]


def s3_params(endpoint: S3Endpoint, prefix: str) -> Params:
    """The project's params with ingest reading an RGB 32x32 ImageFolder at s3://BUCKET/prefix."""
    params = load_params(PROJECT)
    update = {"format": "imagefolder", "source": f"s3://{endpoint.bucket}/{prefix}",
              "endpoint_url": endpoint.url, "classes": None, "channels": 3,
              "image_size": [32, 32], "expected_train": None, "expected_test": None}  # fmt: skip
    return params.model_copy(update={"ingest": params.ingest.model_copy(update=update)})


def image_gets(requests: list[str]) -> list[str]:
    """The GETs of image objects among the endpoint's requests ("METHOD /bucket/key")."""
    return [r for r in requests if r.startswith("GET ") and r.endswith(".png")]


def test_a_second_stamp_of_an_unchanged_bucket_gets_no_image(
    s3_endpoint: S3Endpoint, s3_prefix: str, fmnist_dir: Path, tmp_path: Path
) -> None:
    folder = write_imagefolder(tmp_path / "pngs", 3, 2, rgb32=True)
    client = s3_endpoint.client()
    files = sorted(p for p in folder.rglob("*.png"))
    for path in files:
        key = f"{s3_prefix}/{path.relative_to(folder).as_posix()}"
        client.put_object(Bucket=s3_endpoint.bucket, Key=key, Body=path.read_bytes())
    root, params = tmp_path / "ws", s3_params(s3_endpoint, s3_prefix)

    with s3_endpoint.failing(500, "InternalError", times=0) as seen:  # only records requests
        stage.run(root, params)
    assert len(image_gets(seen)) == len(files) == 50
    first = Workspace(root).source.read_bytes()

    with s3_endpoint.failing(500, "InternalError", times=0) as seen:
        stage.run(root, params)
    assert image_gets(seen) == []
    assert seen  # the listing
    assert Workspace(root).source.read_bytes() == first

    # the same pixels, stored uncompressed: a new ETag and size, so the source is read again
    with Image.open(files[0]) as image:
        blob = io.BytesIO()
        image.save(blob, "PNG", compress_level=0)
    key = f"{s3_prefix}/{files[0].relative_to(folder).as_posix()}"
    client.put_object(Bucket=s3_endpoint.bucket, Key=key, Body=blob.getvalue())
    with s3_endpoint.failing(500, "InternalError", times=0) as seen:
        stage.run(root, params)
    assert len(image_gets(seen)) == len(files)
    assert Workspace(root).source.read_bytes() == first
