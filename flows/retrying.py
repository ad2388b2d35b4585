"""Prefect tasks that retry transient I/O failures, and only those.

source's and ingest's fetch, promote's registry writes and the flow's DVC push talk to S3 or a
download mirror: a dropped connection or throttling deserves another try, a bad file, a refused
gate or a lost compare-and-swap does not (retrying would only repeat it, later). The stages
themselves know nothing of this: the flow wraps them (flows.in_process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task

RETRY_DELAYS_S = [5, 30, 120]


def io_task(
    fn: Callable,
    name: str,
    transient: Callable[[BaseException], bool],
    timeout_seconds: int,
    log_prints: bool | None = None,
) -> Any:
    """`fn` as a Prefect task retried while `transient` holds for its exception or a cause;
    log_prints True sends what fn prints to the run log (None: as the flow says)."""

    def retry_if_transient(_task: Any, _run: Any, state: Any) -> bool:
        err = state.result(raise_on_failure=False)
        while isinstance(err, BaseException):
            if transient(err):
                return True
            err = err.__cause__
        return False

    return task(
        fn,
        name=name,
        retries=len(RETRY_DELAYS_S),
        retry_delay_seconds=RETRY_DELAYS_S,
        retry_condition_fn=retry_if_transient,
        timeout_seconds=timeout_seconds,
        log_prints=log_prints,
    )
