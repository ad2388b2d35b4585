"""The location allow-list (squeeze.config.allowlist.check_locations): params from the Prefect API
or UI may point a key that names a place (registry, data source, mirror, init weights, endpoints,
Dask scheduler) only where params.yaml does or under a location the workspace owner allowed in
pyproject.toml or $SQUEEZE_ALLOWED_LOCATIONS."""

from __future__ import annotations

from pathlib import Path

import pytest

from squeeze.config.allowlist import (
    LOCATIONS_ENV_VAR,
    LocationRefused,
    allowed_locations,
    check_locations,
    locations,
    place,
)
from squeeze.config.files import load_params, merge
from squeeze.config.params import Params, validate
from tests.conftest import PROJECT


@pytest.fixture
def trusted() -> Params:
    """The project's params.yaml (registry `registry`, source `auto`): what the owner wrote."""
    return load_params(PROJECT)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace allowing `s3://team/registries`, the folder `/data/sets` and a MinIO host."""
    monkeypatch.delenv(LOCATIONS_ENV_VAR, raising=False)
    (tmp_path / "pyproject.toml").write_text(
        "[tool.squeeze]\n"
        'allowed_locations = ["s3://team/registries/", "/data/sets", "http://minio:9000", '
        '"shared"]\n'
    )
    return tmp_path


def changed(params: Params, overlay: dict) -> Params:
    return validate(merge(params.model_dump(mode="json"), overlay), "api")


def test_every_place_naming_key_is_checked(trusted: Params) -> None:
    assert set(locations(trusted)) == {
        "ingest.source", "ingest.mirror", "ingest.endpoint_url", "train_teacher.init",
        "train_teacher.endpoint_url", "promote.registry", "promote.endpoint_url",
        "flow.dask_address",
    }  # fmt: skip


def test_unchanged_params_pass_whatever_the_allow_list(trusted: Params, tmp_path: Path) -> None:
    check_locations(trusted, trusted, tmp_path)  # no pyproject.toml: nothing allowed
    # the same place written another way is no change
    check_locations(changed(trusted, {"promote": {"registry": "./registry/"}}), trusted, tmp_path)


@pytest.mark.parametrize(
    "overlay",
    [
        {"promote": {"registry": "s3://team/registries/vision"}},
        {"promote": {"registry": "s3://team/registries"}},
        {"ingest": {"source": "/data/sets/fmnist"}},
        {"train_teacher": {"init": "shared/teacher.pt"}},  # relative: from the workspace
        {"promote": {"registry": "s3://team/registries/x", "endpoint_url": "http://MINIO:9000/"}},
        {"ingest": {"source": "auto"}, "train_teacher": {"init": None}},  # name no new place
    ],
)
def test_a_change_within_the_allowed_locations_passes(
    trusted: Params, root: Path, overlay: dict
) -> None:
    check_locations(changed(trusted, overlay), trusted, root)


@pytest.mark.parametrize(
    ("overlay", "key"),
    [
        ({"promote": {"registry": "/tmp/elsewhere"}}, "promote.registry"),
        ({"promote": {"registry": "s3://team/registries-evil/x"}}, "promote.registry"),
        ({"promote": {"registry": "s3://team/other"}}, "promote.registry"),
        ({"ingest": {"source": "/data/sets/../../etc"}}, "ingest.source"),
        ({"ingest": {"source": "/data/setsx"}}, "ingest.source"),
        ({"ingest": {"mirror": "https://evil.example/fmnist/"}}, "ingest.mirror"),
        ({"ingest": {"endpoint_url": "http://minio:9001"}}, "ingest.endpoint_url"),
        ({"train_teacher": {"init": "../outside/teacher.pt"}}, "train_teacher.init"),
        ({"train_teacher": {"endpoint_url": "http://evil:9000"}}, "train_teacher.endpoint_url"),
        ({"promote": {"endpoint_url": "http://u:s3cr3t@evil:9000"}}, "promote.endpoint_url"),
        ({"flow": {"dask_address": "tcp://evil:8786"}}, "flow.dask_address"),
    ],
)
def test_a_change_outside_the_allowed_locations_is_refused_naming_the_key(
    trusted: Params, root: Path, overlay: dict, key: str
) -> None:
    with pytest.raises(LocationRefused) as refused:
        check_locations(changed(trusted, overlay), trusted, root)
    message = str(refused.value)
    assert f"\n{key}: " in message and "is not params.yaml's value" in message
    assert "[tool.squeeze] allowed_locations" in message and LOCATIONS_ENV_VAR in message
    assert "s3cr3t" not in message  # a password in a URL is never echoed


def test_every_refused_key_is_named_at_once(trusted: Params, tmp_path: Path) -> None:
    hostile = changed(trusted, {"promote": {"registry": "/x"}, "ingest": {"mirror": "http://e/"}})
    with pytest.raises(LocationRefused, match=r"(?s)ingest\.mirror: .*promote\.registry: "):
        check_locations(hostile, trusted, tmp_path)


def test_the_environment_variable_allows_too(
    trusted: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile = changed(trusted, {"promote": {"registry": "/srv/registries/a"}})
    with pytest.raises(LocationRefused):
        check_locations(hostile, trusted, tmp_path)
    monkeypatch.setenv(LOCATIONS_ENV_VAR, "s3://b/x, /srv/registries/")
    assert allowed_locations(tmp_path) == ("s3://b/x", str(Path("/srv/registries").resolve()))
    check_locations(hostile, trusted, tmp_path)


def test_a_symlink_out_of_an_allowed_folder_is_refused(trusted: Params, root: Path) -> None:
    (root / "shared").mkdir()
    (root / "shared" / "out").symlink_to(root.parent)
    with pytest.raises(LocationRefused, match="promote.registry"):
        check_locations(
            changed(trusted, {"promote": {"registry": "shared/out/reg"}}), trusted, root
        )


def test_place_normalises_urls_and_paths(tmp_path: Path) -> None:
    assert place("S3://team/a/../b/", tmp_path) == "s3://team/b"
    assert place("http://Host:9000/", tmp_path) == "http://host:9000"
    assert place("file:///data/x/", tmp_path) == str(Path("/data/x").resolve())
    assert place("reg", tmp_path) == str((tmp_path / "reg").resolve())


def test_a_malformed_allow_list_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.squeeze]\nallowed_locations = "s3://b"\n')
    with pytest.raises(LocationRefused, match=r"pyproject\.toml: tool\.squeeze\.allowed_locations"):
        allowed_locations(tmp_path)
