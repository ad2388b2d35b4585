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

from flows.dvcstate import open_repo
from flows.retrying import io_task


class RemoteError(RuntimeError):
    """dvc push failed; the message says why and what to do."""


class RemoteUnavailable(RemoteError):
    """Some files did not upload (network, endpoint, throttling): worth retrying."""


# Settings of a DVC remote that hold or point at credentials (dvc/config_schema.py): a worker
# gets the remote's url, endpoint and options, never these; it uses its own environment.
SECRET_KEYS = frozenset({
    "access_key_id", "secret_access_key", "session_token", "sse_customer_key", "credentialpath",
    "password", "ask_password", "passphrase", "ask_passphrase", "keyfile", "token",
    "bearer_token_command", "connection_string", "sas_token", "account_key", "client_secret",
    "oss_key_id", "oss_key_secret", "gdrive_client_secret", "gdrive_user_credentials_file",
    "gdrive_service_account_json_file_path", "key_path", "cert_path", "kerb_ticket",
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
    return name, {key: value for key, value in settings.items() if key not in SECRET_KEYS}


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
