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
from pathlib import Path

from squeeze import dvcyaml
from squeeze.data import DataError
from squeeze.ops import add_ops_commands
from squeeze.params import ParamsError, apply_profile, load_params
from squeeze.workspace import Workspace, read_json

INVALID_PARAMS, WORKSPACE_BUSY, DATA_REFUSED, GATE_REFUSED = 2, 3, 4, 5


def cmd_run(args: argparse.Namespace) -> int:
    """Run the retrain_and_compress flow on the workspace (ephemeral Prefect API unless
    PREFECT_API_URL points at a server)."""
    root = Path(args.workspace)
    # the ephemeral API server's telemetry logs "database is locked" noise on SQLite
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.compress import StageFailed, WorkspaceBusy, retrain_and_compress, workspace_lock

    try:
        # held across the whole run (the flow finds it held), and refused before a flow run is
        # even created, so a second run neither starts nor raises an alert
        with workspace_lock(root.resolve()):
            params = apply_profile(root, args.profile) if args.profile else load_params(root)
            result = retrain_and_compress(params=params, workspace=str(root))
    except WorkspaceBusy as err:
        print(f"squeeze: {err}; wait for it to finish or use another workspace", file=sys.stderr)
        return WORKSPACE_BUSY
    except StageFailed as err:  # the run log has its whole output
        print(f"squeeze: {err.stage} failed: {err.last_line}", file=sys.stderr)
        return 1
    print(f"ran: {', '.join(result['ran']) or 'nothing'}; "
          f"skipped (unchanged): {', '.join(result['skipped']) or 'nothing'}")  # fmt: skip
    print(f"candidates: {root / 'metrics' / 'candidates.json'}; exports: {root / 'exports'}/")
    decision = read_json(Workspace(root).metrics("promote"))
    when = "this run" if "promote" in result["ran"] else "unchanged since the last run"
    print(f"decision ({when}): {decision['outcome']}; production model: "
          f"{decision['registry']['model']}")  # fmt: skip
    if decision["outcome"] == "nothing_passed":
        print("squeeze: the gates refused every candidate; see metrics/gate.json", file=sys.stderr)
        return GATE_REFUSED
    return 0


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
    print(f"{root / dvcyaml.DVC_FILE}: " + ("merge stages rewritten" if changed else "in sync"))
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
    sync = sub.add_parser("sync", help="regenerate dvc.yaml's merge stages from params.yaml")
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


if __name__ == "__main__":
    sys.exit(main())
