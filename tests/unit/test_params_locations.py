"""Params that name a place (a folder, bucket, URL or endpoint) are checked when params.yaml is
loaded: a value that looks like a URL but is not a valid one is refused naming the key, instead of
being read as a local folder (`s3:/bucket` -> a folder `s3:` in the workspace) or reaching
botocore as an endpoint without a scheme."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from squeeze.config.errors import ParamsError
from squeeze.config.params import validate

PROJECT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((PROJECT / "params.yaml").read_text())


def with_value(dotted: str, value: object) -> dict:
    data = copy.deepcopy(PARAMS)
    section, key = dotted.split(".")
    data[section][key] = value
    return data


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("promote.registry", "s3:/bucket/registry", "did you mean 's3://bucket/registry'"),
        ("promote.registry", "s3://Bad_Bucket/registry", "not a valid S3 bucket name"),
        ("promote.endpoint_url", "127.0.0.1:9000", "e.g. 'http://127.0.0.1:9000'"),
        ("ingest.endpoint_url", "", "empty"),
        ("ingest.source", "s3:/bucket/fmnist", "did you mean 's3://bucket/fmnist'"),
        ("ingest.mirror", "ftp://example.org/", r"not an http\(s\):// URL"),
        ("train_teacher.init", "s3:teacher.safetensors", "not a valid S3 URL"),
        ("train_teacher.endpoint_url", "localhost:9000", r"not an http\(s\) URL"),
    ],
)
def test_a_malformed_location_is_refused_at_load_naming_the_key(
    key: str, value: str, says: str
) -> None:
    with pytest.raises(ParamsError, match=rf"params.yaml: {key}: .*{says}") as err:
        validate(with_value(key, value), "params.yaml")
    assert str(err.value).count("\n") == 0  # one line


def test_a_credential_in_a_refused_url_is_never_printed() -> None:
    with pytest.raises(ParamsError) as err:
        validate(with_value("promote.endpoint_url", "ftp://admin:hunter2@host:9000"), "p.yaml")
    assert "hunter2" not in str(err.value) and "***@host" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("promote.registry", "s3://squeeze/registry"),
        ("promote.registry", "registry"),
        ("promote.registry", "/srv/registry"),
        ("promote.endpoint_url", "http://127.0.0.1:9000"),
        ("promote.endpoint_url", None),
        ("ingest.source", "auto"),
        ("ingest.source", "https://example.org/fmnist/"),
        ("ingest.source", "s3://data-bucket/fmnist"),
        ("train_teacher.init", "teacher.safetensors"),
    ],
)
def test_valid_locations_load(key: str, value: object) -> None:
    section, name = key.split(".")
    assert getattr(getattr(validate(with_value(key, value), "p"), section), name) == value
