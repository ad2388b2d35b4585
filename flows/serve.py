"""`squeeze serve`: two deployments of retrain_and_compress, served from this process.

- `retrain_and_compress/scheduled` runs on params.flow.cron in params.flow.timezone (or --cron).
  Its runs read the workspace's params.yaml when they start, so a params change that lands in
  the workspace (git pull, `dvc exp apply`) is what the next scheduled run uses; with no new
  data, code or params, DVC reports every stage current and the run re-runs nothing.
- `retrain_and_compress/manual` has no schedule: press Run in the UI, whose form is prefilled
  with params.yaml as it was when serve started, or `prefect deployment run`.

Both deployments take the flow's own parameters, so the UI form is the pydantic Params schema
(titles, descriptions, defaults, ranges, choices) and the API refuses a run whose parameters
break it. They are bound to the served workspace: serve puts it in $SQUEEZE_WORKSPACE of its
own environment, which its runs inherit and no API call can change, and the flow refuses a run
whose `workspace` names another folder (flows.compress.bound_workspace); a run's params may
point the registry, data source, endpoints and Dask scheduler only where params.yaml does or
where the workspace allows (squeeze.config.allowlist.check_locations).

The candidate fan-out runs on the task runner the run's params.flow names (threads or Dask).
Runs execute one at a time, in a subprocess of this one; the workspace lock would refuse a
second run on the same workspace anyway.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType
from prefect.runner import Runner
from prefect.schedules import Cron, Schedule
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from pydantic import ValidationError

from flows.compress import WORKSPACE_ENV, retrain_and_compress
from squeeze.config.errors import ParamsError
from squeeze.config.files import PARAMS_FILE, load_params
from squeeze.config.params import Params

SCHEDULED = "scheduled"
MANUAL = "manual"
TAGS = ["squeeze"]


def cron_schedule(cron: str, timezone: str, origin: str) -> Schedule:
    """A Prefect cron schedule; a bad expression or time zone fails naming where it came from."""
    try:
        CronSchedule(cron=cron, timezone=timezone)  # validates the expression and the zone
    except ValidationError as err:
        reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise ParamsError(f"{origin}: {reason}") from None
    return Cron(cron, timezone=timezone)


def deployment_options(params: Params, root: Path, cron: str | None = None) -> dict[str, dict]:
    """The two deployments, as `Runner.add_flow` keyword arguments keyed by deployment name.

    Args:
        params: the workspace's params (schedule, and the manual form's defaults).
        root: the workspace, absolute: runs start in serve's cwd, not necessarily there.
        cron: overrides params.flow.cron (the time zone stays params.flow.timezone).
    """
    origin = f"{root / PARAMS_FILE}: flow" + (" (cron from --cron)" if cron else "")
    schedule = cron_schedule(cron or params.flow.cron, params.flow.timezone, origin)
    workspace = str(root)
    return {
        SCHEDULED: {
            "schedules": [schedule],
            "parameters": {"workspace": workspace},  # params: None = params.yaml at run time
            "description": f"Retrain and recompress on the cron {schedule.cron!r} "
            f"({schedule.timezone}); stages whose code, params and data are unchanged are "
            "skipped. Runs read params.yaml in the workspace.",
            "tags": TAGS,
        },
        MANUAL: {
            "parameters": {"params": params.model_dump(mode="json"), "workspace": workspace},
            "description": "Retrain and recompress on demand; the form starts from the "
            "workspace's params.yaml, and the run writes the parameters it was given there.",
            "tags": TAGS,
        },
    }


def print_start(root: Path, names: list[str], cron: str) -> None:
    """Say what is served and how to start a run."""
    flow = retrain_and_compress.name
    print(f"serving {', '.join(f'{flow}/{n}' for n in names)} for workspace {root}")
    print(f"  {flow}/{SCHEDULED}: cron {cron!r}")
    print(f"  run one now: prefect deployment run '{flow}/{MANUAL}'")
    if PREFECT_UI_URL.value():
        print(f"  or from the UI: {PREFECT_UI_URL.value()}/deployments")
    if not PREFECT_API_URL.value():
        print("  note: PREFECT_API_URL is not set, so this uses a temporary API server that dies")
        print("  with it; start `prefect server start` and export PREFECT_API_URL to keep runs")


def serve(root: Path, cron: str | None = None, **runner_options: Any) -> None:
    """Register both deployments with the Prefect API and run their flow runs until stopped.

    Args:
        root: the workspace (DVC repo) the runs work in.
        cron: overrides params.flow.cron for the scheduled deployment.
        runner_options: passed to prefect.runner.Runner (e.g. query_seconds).
    """
    root = root.resolve()
    params = load_params(root)
    options = deployment_options(params, root, cron)
    # the served flow's runs are subprocesses of this one (their parameters come from the API,
    # their environment from here): bind them to this workspace
    os.environ[WORKSPACE_ENV] = str(root)
    runner = Runner(name="squeeze", limit=1, **runner_options)
    for name, kwargs in options.items():
        runner.add_flow(
            retrain_and_compress, name=name, entrypoint_type=EntrypointType.MODULE_PATH, **kwargs
        )
    print_start(root, list(options), options[SCHEDULED]["schedules"][0].cron)
    # `docker stop`, systemd and Kubernetes send SIGTERM: shut down as cleanly as on Ctrl-C
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        print("stopped serving; the scheduled deployment is paused until serve starts again")


if __name__ == "__main__":
    serve(Path("."))
