"""A model-building stage of the flow runs as its own process (flows.compress.run_process):
dvc.yaml's command, this interpreter, the workspace as cwd, its output in the run's log, failures
named."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from flows import compress
from flows.compress import StageFailed, run_process

LOGGER = "squeeze.test.stage"


@pytest.fixture(autouse=True)
def plain_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain logger in place of the Prefect run logger (no run context in a unit test)."""
    monkeypatch.setattr(compress, "get_run_logger", lambda: logging.getLogger(LOGGER))


def test_the_command_runs_on_this_interpreter_in_the_workspace_and_logs_its_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cmd = 'python -c "import os, sys; print(sys.executable); print(); print(os.getcwd())"'
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_process("prune@x", cmd, tmp_path, timeout_s=60)
    assert [r.getMessage() for r in caplog.records] == [sys.executable, os.fspath(tmp_path)]


def test_a_failing_stage_raises_with_its_name_and_last_output(tmp_path: Path) -> None:
    cmd = "python -c \"import sys; print('loading'); sys.exit('params.yaml: no candidate x')\""
    with pytest.raises(StageFailed) as err:
        run_process("prune@x", cmd, tmp_path, timeout_s=60)
    message = str(err.value)
    assert message.startswith(f"prune@x: `{cmd}` (in {tmp_path}) exited with 1")
    assert message.endswith("loading\nparams.yaml: no candidate x")


def test_a_stage_past_its_time_is_killed(tmp_path: Path) -> None:
    with pytest.raises(StageFailed, match=r"distill@x: .* ran out of its 1 s"):
        run_process("distill@x", 'python -c "import time; time.sleep(60)"', tmp_path, 1)
