"""Upload the workspace's DVC-tracked outputs (data, models, exports, metrics) to the DVC remote.

Called after a successful flow run, so that another machine (or a fresh clone) can `dvc pull`
exactly what the run produced. The remote is whatever `dvc remote` configured as default: a
local folder, or s3://bucket/prefix (with `dvc remote modify NAME endpointurl URL` for MinIO or
moto); credentials come from the environment or the AWS chain, as everywhere else.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from flows.dvcstate import open_repo


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


def retry_on_unavailable(task_: object, task_run: object, state: object) -> bool:
    """Retry only an incomplete upload; a missing or misconfigured remote stays failed."""
    return isinstance(state.result(raise_on_failure=False), RemoteUnavailable)  # type: ignore[attr-defined]


push_remote = task(
    push,
    name="push",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_condition_fn=retry_on_unavailable,
    timeout_seconds=3600,
)


if __name__ == "__main__":
    print(f"pushed {push(Path('.'))} files")
