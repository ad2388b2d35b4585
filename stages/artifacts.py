"""Prefect artifacts and log lines from stage code that also runs outside Prefect.

A stage module runs both as a Prefect task (the flow) and as plain `python -m stages.<stage>`
(dvc repro). Outside a flow or task run, Prefect 3.9's create_*_artifact warns that this is
deprecated, starts a temporary API server (about 10 s) and files an artifact that belongs to
no run. So artifacts are created only inside a run, and a failure to create one is logged,
never raised: a report must not fail the stage that it reports on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

_log = logging.getLogger("squeeze")


def in_run() -> bool:
    """Whether the caller is inside a Prefect flow or task run."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def say(message: str) -> None:
    """Log to the Prefect run log inside a run; print (dvc repro shows stdout) outside."""
    if in_run():
        from prefect.logging import get_run_logger

        get_run_logger().info(message)
    else:
        print(message, flush=True)


def link_for(location: str) -> str:
    """A link the Prefect UI can render: s3:// as is, a local path as a file:// URL."""
    return location if "://" in location else Path(location).resolve().as_uri()


def publish(kind: str, **kwargs: Any) -> str | None:
    """Create one artifact (kind: "table", "markdown" or "link") when inside a run.

    Returns the artifact id, or None when outside a run or when the API refused it.
    """
    if not in_run():
        return None
    from prefect import artifacts

    create = {
        "table": artifacts.create_table_artifact,
        "markdown": artifacts.create_markdown_artifact,
        "link": artifacts.create_link_artifact,
    }[kind]
    try:
        return str(create(**kwargs))
    except Exception as err:  # the API is down or refused it: the stage's work still stands
        _log.warning("could not create the %s artifact %r: %s", kind, kwargs.get("key"), err)
        return None
