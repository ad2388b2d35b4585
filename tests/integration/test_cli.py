"""`squeeze run` refusals: one clear line on stderr and a distinct exit status for each kind
(a failed stage 1, invalid params 2, busy workspace 3, data refused 4; a gate refusal, 5, is checked
at the end of the pipeline test, where the pipeline has already run)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from squeeze.cli import main as cli
from tests.conftest import params_yaml, run, set_param


def test_invalid_params_exit_2_naming_the_key(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_param(workspace, "ingest", "val_fraction", 0.9)
    assert cli.main(["-w", str(workspace), "run"]) == cli.INVALID_PARAMS
    err = capsys.readouterr().err
    assert err.startswith("squeeze: invalid parameters\n") and "ingest.val_fraction" in err
    assert "Traceback" not in err


HOLD_LOCK = """
import fcntl, sys, time
from pathlib import Path
from squeeze.config.workspace import Workspace
path = Workspace(Path(sys.argv[1])).state("flow.lock")
path.parent.mkdir(parents=True, exist_ok=True)
handle = path.open("w")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_busy_workspace_exits_3_in_one_line(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process (another `squeeze run`) holds the workspace's lock."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(workspace.resolve())],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli.main(["-w", str(workspace), "run"]) == cli.WORKSPACE_BUSY
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use by another squeeze run" in err


def squeeze_run(workspace: Path) -> tuple[int, str]:
    """`squeeze run` as a user runs it (its own process, the ephemeral Prefect API): the exit
    status and squeeze's own lines on stderr (Prefect's log lines there are left out)."""
    proc = run(["squeeze", "-w", str(workspace), "run"], workspace, check=False)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("squeeze: ")]
    return proc.returncode, "\n".join(ours)


def test_data_refused_exits_4_naming_the_file(workspace: Path, fmnist_dir: Path) -> None:
    source = workspace.parent / "source"
    shutil.copytree(fmnist_dir, source)
    labels = source / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:1000]))  # truncated
    set_param(workspace, "ingest", "source", str(source))
    status, ours = squeeze_run(workspace)
    assert status == cli.DATA_REFUSED and ours.count("\n") == 0
    assert ours.startswith("squeeze: data refused: ") and labels.name in ours
    assert not (workspace / "models").exists()  # stopped before any training


def test_a_failed_stage_exits_1_with_its_reason_in_one_line(workspace: Path) -> None:
    """A teacher whose loss turns NaN (lr × weight decay > 2 makes SGD's weights grow without
    bound) stops at train_teacher; squeeze's line gives its reason, naming the lr."""
    with params_yaml(workspace) as data:
        data["train_teacher"]["fit"] |= {"lr": 10.0, "weight_decay": 0.5}
    status, ours = squeeze_run(workspace)
    assert status == 1 and ours.count("\n") == 0
    assert ours.startswith("squeeze: train_teacher failed: ") and "lr" in ours
    assert not (workspace / "models" / "teacher").exists()


@pytest.mark.parametrize(
    ("error", "says"),
    [
        ("store", "squeeze: a store could not be used: s3://bucket/registry: unreachable"),
        ("registry", "squeeze: production of 'fmnist' moved (now version 3)"),
        ("damaged", "squeeze: production of 'fmnist' at registry is damaged"),
        ("dvc", "squeeze: DVC failed: failed to push data to the cloud"),
    ],
)
def test_a_registry_store_or_remote_error_during_a_run_is_one_line_exit_1(
    workspace: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: str,
    says: str,
) -> None:
    from dvc.exceptions import DvcException

    import flows.compress
    from squeeze.registry.registry import RegistryError
    from squeeze.registry.store import Unavailable
    from stages.promote import ProductionDamaged

    raised = {
        "store": Unavailable("s3://bucket/registry: unreachable\n(after 3 attempts)"),
        "registry": RegistryError("production of 'fmnist' moved (now version 3)"),
        "damaged": ProductionDamaged("production of 'fmnist' at registry is damaged (x)"),
        "dvc": DvcException("failed to push data to the cloud"),
    }[error]

    def failing(**_: object) -> None:
        raise raised

    # the flow raises what failed inside it (a stage task, the push to the remote) as it is
    monkeypatch.setattr(flows.compress, "retrain_and_compress", failing)
    assert cli.main(["-w", str(workspace), "run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(says) and err.count("\n") == 1 and "Traceback" not in err, err
