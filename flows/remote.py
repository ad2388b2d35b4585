"""Upload the workspace's DVC-tracked outputs (data, models, exports, metrics) to the DVC remote.

Called after a successful flow run, so that another machine (or a fresh clone) can `dvc pull`
exactly what the run produced. The remote is whatever `dvc remote` configured as default: a
local folder, or s3://bucket/prefix (with `dvc remote modify NAME endpointurl URL` for MinIO or
moto); credentials come from the environment or the AWS chain, as everywhere else.
"""

from __future__ import annotations

from pathlib import Path

from flows.dvcstate import open_repo
from tasks.retrying import io_task


class RemoteError(RuntimeError):
    """dvc push failed; the message says why and what to do."""


class RemoteUnavailable(RemoteError):
    """Some files did not upload (network, endpoint, throttling): worth retrying."""


def push(root: Path, remote: str | None = None, jobs: int | None = None) -> int:
    """`dvc push` every output of the workspace's pipeline; return how many files were sent.

    Files the remote already holds are skipped by DVC, so a second push sends nothing.

    Args:
        root: the DVC repo.
        remote: a remote name; None uses the default remote (`dvc remote add -d`).
        jobs: parallel uploads; None lets DVC choose.
    """
    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException, UploadError

    try:
        with open_repo(root) as repo:
            return int(repo.push(remote=remote, jobs=jobs))
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
