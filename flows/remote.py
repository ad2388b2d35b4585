"""The DVC remote: push the workspace's DVC-tracked outputs (data, models, exports, metrics),
pull them back, and describe the remote to a worker.

A flow run pushes at its end, so that another machine (or a fresh clone) can `dvc pull` exactly
what the run produced; on Dask the candidate builds move through the remote too (flows.builds).
The remote is whatever `dvc remote` configured as default: a local folder, or s3://bucket/prefix
(with `dvc remote modify NAME endpointurl URL` for MinIO or moto); credentials come from the
environment or the AWS chain, as everywhere else, and never leave the machine that has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flows.dvcstate import open_repo
from flows.retrying import io_task


class RemoteError(RuntimeError):
    """dvc push failed; the message says why and what to do."""


class RemoteUnavailable(RemoteError):
    """Some files did not upload (network, endpoint, throttling): worth retrying."""


# The settings of a DVC remote (dvc/config_schema.py: the common ones, S3's and GCS's) that a
# worker needs to reach it as this machine does: where it is and how to talk to it. Nothing else
# travels: no credential, nor a setting that names where credentials are (credentialpath,
# profile, configpath); a worker uses its own environment. An allow-list, so that a setting DVC
# adds later stays home until someone decides it is safe to send.
WORKER_KEYS = frozenset({
    "url", "endpointurl", "region", "projectname", "jobs", "checksum_jobs", "worktree",
    "version_aware", "verify", "use_ssl", "ssl_verify", "allow_anonymous_login", "listobjects",
    "read_timeout", "connect_timeout", "cache_regions", "sse", "sse_kms_key_id",
    "sse_customer_algorithm", "acl", "grant_read", "grant_read_acp", "grant_write_acp",
    "grant_full_control",
})  # fmt: skip


def push(
    root: Path, remote: str | None = None, jobs: int | None = None, targets: list[str] | None = None
) -> int:
    """`dvc push` every output of the workspace's pipeline (or of targets: stages or paths);
    return how many files were sent.

    Files the remote already holds are skipped by DVC, so a second push sends nothing.

    Args:
        root: the DVC repo.
        remote: a remote name; None uses the default remote (`dvc remote add -d`).
        jobs: parallel uploads; None lets DVC choose.
        targets: DVC stage names or tracked paths; None pushes everything.
    """
    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException, UploadError

    try:
        with open_repo(root) as repo:
            return int(repo.push(targets=targets, remote=remote, jobs=jobs))
    except NoRemoteError:
        raise RemoteError(
            f"{root}: no default DVC remote: run `dvc remote add -d NAME URL` "
            "(a folder or s3://bucket/prefix), or pass a remote name"
        ) from None
    except UploadError as err:
        raise RemoteUnavailable(
            f"{root}: dvc push could not upload everything ({err}); check the remote's "
            "endpoint, network and credentials, then push again"
        ) from err
    except DvcException as err:
        raise RemoteError(f"{root}: dvc push failed: {err}") from err


def pull(root: Path, targets: list[str], force: bool = False) -> None:
    """`dvc pull` targets (stage names, or tracked paths: a file inside a tracked folder
    too) from the default remote; force overwrites what the workspace holds there."""
    from dvc.exceptions import DownloadError, DvcException

    try:
        with open_repo(root) as repo:
            repo.pull(targets=targets, force=force)
    except DownloadError as err:
        raise RemoteUnavailable(
            f"{root}: dvc pull of {', '.join(targets)} could not download everything ({err}); "
            "check the remote's endpoint, network and credentials"
        ) from err
    except DvcException as err:
        raise RemoteError(f"{root}: dvc pull of {', '.join(targets)} failed: {err}") from err


def shared_remote(root: Path) -> tuple[str, dict[str, Any]]:
    """The default remote's name and settings, without credentials, for a worker that shares no
    disk with the workspace. DVC already made a local path absolute; it must be one every worker
    can reach (a shared mount), like s3://... is."""
    name = default_remote(root)
    if name is None:
        raise RemoteError(
            f"{root}: flow.task_runner is dask, and its workers see no disk of this workspace: "
            "candidate builds move through the default DVC remote, and there is none. Run "
            "`dvc remote add -d NAME URL` (s3://bucket/prefix, or a folder every worker can reach)"
        )
    with open_repo(root) as repo:
        settings = dict(repo.config["remote"][name])
    return name, worker_settings(name, settings)


def worker_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings in WORKER_KEYS; RemoteError, naming the key but not its value, for one that
    is a URL carrying credentials (scheme://user:token@host): they would travel with it."""
    shared = {key: value for key, value in settings.items() if key in WORKER_KEYS}
    for key, value in shared.items():
        if isinstance(value, str) and "@" in urlsplit(value).netloc:
            raise RemoteError(
                f"DVC remote {name!r}: its {key} holds a user name or password (user:pass@ in "
                "the URL), which would travel to every Dask worker: remove it from the URL "
                f"(`dvc remote modify {name} {key} URL`) and give the credentials to the "
                "workers through their environment"
            )
    return shared


def default_remote(root: Path) -> str | None:
    """The name of the workspace's default DVC remote, if one is configured."""
    with open_repo(root) as repo:
        return repo.config["core"].get("remote")


push_remote = io_task(
    # only an incomplete upload is retried; a missing or misconfigured remote stays failed
    push,
    "push",
    lambda err: isinstance(err, RemoteUnavailable),
    timeout_seconds=3600,
)


if __name__ == "__main__":
    print(f"pushed {push(Path('.'))} files")
