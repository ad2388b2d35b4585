"""The `squeeze` command line.

Exit statuses (one line on stderr says why):
    0  done (for `run`: a model is in production or was kept)
    1  a failure: a stage failed, the registry or a store could not be used
    2  invalid parameters (params.yaml, a profile, the command line)
    3  the workspace is busy: another squeeze run holds it
    4  the data was refused (source or ingest: unreadable, corrupt, failing its checks)
    5  `run` finished but the gates refused every candidate: nothing was promoted
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from squeeze.cli.ops import add_ops_commands
from squeeze.config import dvcyaml
from squeeze.config.errors import ParamsError
from squeeze.config.files import apply_profile, load_params
from squeeze.config.workspace import Workspace, read_json
from squeeze.data.spec import DataError
from squeeze.errors import StageRefused
from squeeze.registry.registry import RegistryError
from squeeze.registry.store import StoreError

INVALID_PARAMS, WORKSPACE_BUSY, DATA_REFUSED, GATE_REFUSED = 2, 3, 4, 5


def cmd_run(args: argparse.Namespace) -> int:
    """Run the retrain_and_compress flow on the workspace (ephemeral Prefect API unless
    PREFECT_API_URL points at a server)."""
    root = Path(args.workspace)
    # the ephemeral API server's telemetry logs "database is locked" noise on SQLite
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from dvc.exceptions import DvcException

    from flows.compress import StageFailed, WorkspaceBusy, retrain_and_compress, workspace_lock

    try:
        # held across the whole run (the flow finds it held), and refused before a flow run is
        # even created, so a second run neither starts nor raises an alert
        with workspace_lock(root.resolve()):
            params = apply_profile(root, args.profile) if args.profile else load_params(root)
            start = time.perf_counter()
            result = retrain_and_compress(params=params, workspace=str(root))
    except WorkspaceBusy as err:
        print(f"squeeze: {err}; wait for it to finish or use another workspace", file=sys.stderr)
        return WORKSPACE_BUSY
    except StageFailed as err:  # the run log has its whole output
        print(f"squeeze: {err.stage} failed: {err.last_line}", file=sys.stderr)
        return 1
    except DvcException as err:  # the DVC remote, or DVC's view of the workspace
        print(f"squeeze: DVC failed: {one_line(err)}; `dvc status` and `dvc remote list` show "
              "the workspace and its remote", file=sys.stderr)  # fmt: skip
        return 1
    print(stage_table(result, time.perf_counter() - start))
    print(f"candidates: {root / 'metrics' / 'candidates.json'}; exports: {root / 'exports'}/")
    decision = read_json(Workspace(root).metrics("promote"))
    when = "this run" if "promote" in result["ran"] else "unchanged since the last run"
    print(decision_line(decision, when))
    if decision["outcome"] == "nothing_passed":
        print("squeeze: the gates refused every candidate; see metrics/gate.json", file=sys.stderr)
        return GATE_REFUSED
    return 0


def decision_line(decision: dict, when: str) -> str:
    """The run's last line: promote's outcome (metrics/promote.json), the challenger it names
    ("promoted NAME"; otherwise the challenger is not what production holds, so it is named as
    such) and where the production model is."""
    challenger = (decision.get("challenger") or {}).get("name")
    named = ("" if not challenger else f" {challenger}" if decision["outcome"] == "promoted"
             else f" (challenger {challenger})")  # fmt: skip
    return (f"decision ({when}): {decision['outcome']}{named}; production model: "
            f"{decision['registry']['model']}")  # fmt: skip


def stage_table(result: dict, wall_s: float) -> str:
    """The run's stages, one row each: name, ran or skipped (unchanged), wall seconds; then the
    run's own wall time (less than the sum: candidates build side by side).

    Args:
        result: the flow's return value; "seconds" maps every stage, in run order, to its wall
            time in seconds (a skipped stage's is DVC's staleness check), "skipped" lists the
            stages DVC found current. `source` and `production` stamp the data and the registry on
            every run: they show as ran.
        wall_s: the whole run's wall time, in seconds.
    """
    seconds = result["seconds"]
    ran = [stage for stage in seconds if stage not in result["skipped"]]
    rows = [(stage, "ran" if stage in ran else "skipped", took) for stage, took in seconds.items()]
    rows.append((f"total: {len(ran)} of {len(seconds)} ran", "wall", wall_s))
    width = max(len(row[0]) for row in rows)
    lines = [f"{'stage':<{width}}  {'':<7}  {'seconds':>8}"]
    lines += [f"{stage:<{width}}  {done:<7}  {took:>8.1f}" for stage, done, took in rows]
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the scheduled and the manual deployment of the flow until interrupted."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.serve import serve  # Prefect is slow to import

    serve(Path(args.workspace), cron=args.cron)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Merge profiles/NAME.yaml into params.yaml (and its merge stages into dvc.yaml)."""
    root = Path(args.workspace)
    dvcyaml.sync(root, apply_profile(root, args.name))
    print(f"params.yaml now uses profile {args.name!r} (git checkout params.yaml to undo)")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Regenerate dvc.yaml's merge stages from params.yaml (after editing params.yaml by hand)."""
    root = Path(args.workspace)
    changed = dvcyaml.sync(root, load_params(root))
    print(f"{root / dvcyaml.DVC_FILE}: " + ("generated parts rewritten" if changed else "in sync"))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="squeeze", description=__doc__)
    p.add_argument("-w", "--workspace", default=".", help="the DVC repo to work in (default: .)")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline as a Prefect flow")
    run.add_argument("--profile", help="apply profiles/PROFILE.yaml to params.yaml first")
    run.set_defaults(func=cmd_run)
    srv = sub.add_parser(
        "serve", help="serve a scheduled and a manual deployment of the flow (Prefect)"
    )
    srv.add_argument("--cron", help="schedule of the scheduled deployment (default: flow.cron)")
    srv.set_defaults(func=cmd_serve)
    prof = sub.add_parser("profile", help="apply profiles/NAME.yaml to params.yaml")
    prof.add_argument("name")
    prof.set_defaults(func=cmd_profile)
    sync = sub.add_parser("sync", help="regenerate dvc.yaml's generated parts from params.yaml")
    sync.set_defaults(func=cmd_sync)
    add_ops_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ParamsError as err:
        print(f"squeeze: invalid parameters\n{err}", file=sys.stderr)
        return INVALID_PARAMS
    except DataError as err:
        print(f"squeeze: data refused: {err}", file=sys.stderr)
        return DATA_REFUSED
    except (StageRefused, RegistryError) as err:  # their messages say what to do
        print(f"squeeze: {one_line(err)}", file=sys.stderr)
        return 1
    except StoreError as err:
        print(f"squeeze: a store could not be used: {one_line(err)}", file=sys.stderr)
        return 1


def one_line(err: BaseException) -> str:
    """An error's message on one line (a wrapped library message may span several)."""
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
