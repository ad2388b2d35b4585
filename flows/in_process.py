"""The stages the flow runs in its own process (flows.stagenames.IN_PROCESS), as Prefect tasks.

Each task is the stage module's plain `run(root, params)` (what `python -m stages.<stage>` runs
under `dvc repro`) with what only the flow adds: a time limit, retries where the stage reads or
writes the outside world (flows.retrying), the stage's printed lines in the run log
(log_prints), and, once it has written its results, the run's artifacts made from them
(flows.artifacts). Importing this module imports the stages and so torch; flows.compress imports
it only when a stage runs (see there).
"""

from __future__ import annotations

from pathlib import Path

from prefect import Task, task

from flows import artifacts
from flows.retrying import io_task
from squeeze.config.params import Params
from squeeze.data.spec import FetchError
from squeeze.registry.store import Unavailable
from stages import evaluate, gate, ingest, production, promote, source


def fetch_failed(err: BaseException) -> bool:
    """A source that could not be read now (network, throttling, 5xx) is worth retrying; bad
    data, a missing file or refused access fails at once."""
    return isinstance(err, FetchError)


def store_unavailable(err: BaseException) -> bool:
    """Transient store failures (unreachable S3, throttling, 5xx) are retried; a missing object,
    refused credentials, a refused gate, a corrupt version or a lost compare-and-swap is a
    decision or a fault that retrying would not change."""
    return isinstance(err, Unavailable)


def evaluate_and_publish(root: Path, params: Params) -> None:
    """Stage evaluate, then its candidates table on the run page."""
    evaluate.run(root, params)
    artifacts.publish_evaluate(root, params)


def gate_and_publish(root: Path, params: Params) -> None:
    """Stage gate, then its verdicts, decision and Pareto plot on the run page."""
    gate.run(root, params)
    artifacts.publish_gate(root)


def promote_and_publish(root: Path, params: Params) -> None:
    """Stage promote, then the comparison, the decision and production's link on the run page."""
    promote.run(root, params)
    artifacts.publish_promote(root, params)


# stage -> its task, called as TASKS[stage](root, params) inside the flow's `build` task
TASKS: dict[str, Task] = {
    "source": io_task(source.run, "source", fetch_failed, timeout_seconds=600, log_prints=True),
    "production": io_task(
        production.run, "production", store_unavailable, timeout_seconds=600, log_prints=True
    ),
    "ingest": io_task(ingest.run, "ingest", fetch_failed, timeout_seconds=1800, log_prints=True),
    "evaluate": task(evaluate_and_publish, name="evaluate", timeout_seconds=3600, log_prints=True),
    "gate": task(gate_and_publish, name="gate", timeout_seconds=600, log_prints=True),
    "promote": io_task(
        promote_and_publish, "promote", store_unavailable, timeout_seconds=1800, log_prints=True
    ),
}
