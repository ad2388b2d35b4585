"""Alerting on failed runs of retrain_and_compress: the `alert` on_failure hook.

The hook logs one error line on the run (which stage failed, why, and the run's page in the
Prefect UI) and, when the environment variable SQUEEZE_ALERT_WEBHOOK holds a URL, POSTs the same
facts as JSON to it. The body's `text` field makes it a valid Slack or Mattermost incoming
webhook; other receivers read the structured fields. The webhook URL usually embeds a token, so
it is never logged. An alert that cannot be delivered is logged and otherwise ignored: alerting
must not change the run's outcome.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.logging.loggers import flow_run_logger
from prefect.utilities.urls import url_for

from flows.stagenames import STAGES
from squeeze.config.dvcyaml import parse_stage

WEBHOOK_ENV = "SQUEEZE_ALERT_WEBHOOK"
WEBHOOK_TIMEOUT_S = 10.0


def failed_stages(flow_run: FlowRun) -> list[str]:
    """The DVC stages (`ingest`, `distill@kd_small`, `merge-x`...) whose task runs failed in a run.

    Stage task runs are named after their DVC stage (flows.compress.build); nested task runs
    (the stage's own task, flows.in_process) carry generated names and are left out.
    """
    failed = TaskRunFilter(
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.FAILED]))
    )
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])),
            task_run_filter=failed,
        )
    return sorted({run.name for run in runs if stage_of_run(run.name) in STAGES})


def stage_of_run(run_name: str) -> str | None:
    """The stage a task run's name belongs to, or None for a nested task run ("evaluate-0a1")."""
    try:
        return parse_stage(run_name)[0]
    except ValueError:
        return None


def alert_payload(flow: Flow, flow_run: FlowRun, state: State, stages: list[str]) -> dict:
    """What an alert says: a one-line `text` plus the facts it is made of."""
    url = url_for(flow_run) or f"flow run {flow_run.id}"
    where = ", ".join(stages) if stages else "before any stage ran"
    reason = (state.message or state.name or "failed").strip()
    reason = reason.removeprefix("Flow run encountered an exception: ")
    return {
        "text": f"{flow.name} run {flow_run.name!r} failed at {where}: {reason} ({url})",
        "flow": flow.name,
        "flow_run": flow_run.name,
        "flow_run_id": str(flow_run.id),
        "deployment_id": str(flow_run.deployment_id) if flow_run.deployment_id else None,
        "stages": stages,
        "state": state.name,
        "message": state.message,
        "url": url,
    }


def post_webhook(url: str, payload: dict[str, Any], timeout_s: float = WEBHOOK_TIMEOUT_S) -> None:
    """POST payload as JSON to url; raise OSError (URLError, HTTPError) when it is refused."""
    if not url.startswith(("http://", "https://")):
        raise ValueError("not an http(s) URL")
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()


def alert(flow: Flow, flow_run: FlowRun, state: State) -> None:
    """on_failure hook: log which stage failed and where to look, and notify the webhook."""
    logger = flow_run_logger(flow_run, flow)
    try:
        stages = failed_stages(flow_run)
    except Exception as err:  # noqa: BLE001 - an unreachable API must not hide the alert
        logger.warning("alert: could not read the failed task runs (%s)", err)
        stages = []
    payload = alert_payload(flow, flow_run, state, stages)
    logger.error("ALERT %s", payload["text"])
    webhook = os.environ.get(WEBHOOK_ENV)
    if not webhook:
        return
    try:
        post_webhook(webhook, payload)
    except (OSError, ValueError) as err:  # URLError/HTTPError/timeouts; ValueError: bad URL
        # neither the URL nor urllib's messages about it are logged: webhook URLs carry tokens
        reason = err if isinstance(err, OSError) else "not an http(s) URL"
        logger.warning("alert: could not notify %s: %s", WEBHOOK_ENV, reason)
