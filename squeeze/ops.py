"""Operations on the model registry from the command line: status, promote, rollback, pull.

The registry is the one params.promote names (registry, endpoint_url, family) in the workspace's
params.yaml. Every failure (no such version, unreachable endpoint, refused credentials, a corrupt
object) ends the command with exit status 1 and one line on stderr saying what failed and what
to do; messages come from squeeze.storage, which never includes credentials.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from squeeze.card import chain_text
from squeeze.package import SHIPPED, unpack
from squeeze.params import load_params
from squeeze.registry import Registry, RegistryError, open_registry
from squeeze.storage import StoreError
from squeeze.workspace import Workspace, read_json

EXIT_FAILED = 1
# Decision files, newest stage first: promote.json holds the final decision, gate.json the gates'.
DECISIONS = ("promote", "gate")


def registry_for(workspace: Path) -> Registry:
    """The registry named by the workspace's params.yaml (relative paths are inside it)."""
    cfg = load_params(workspace).promote
    return open_registry(cfg.registry, cfg.family, cfg.endpoint_url, base=workspace)


def last_decision(workspace: Path) -> dict[str, Any] | None:
    """The workspace's last recorded decision: metrics/promote.json, else metrics/gate.json."""
    ws = Workspace(workspace)
    for stage in DECISIONS:
        path = ws.metrics(stage)
        if path.exists():
            doc = read_json(path)
            return {
                "source": str(path.relative_to(workspace)),
                "outcome": doc.get("outcome"),
                "challenger": doc.get("challenger"),
                "reasons": doc.get("reasons", []),
            }
    return None


def status(workspace: Path) -> dict[str, Any]:
    """What is in production: version, metrics, lineage, history; the versions; the decision."""
    registry = registry_for(workspace)
    pointer = registry.production()
    production = None
    if pointer:
        card = registry.card(pointer["version"])
        try:
            registry.verify(pointer["version"])
            problem = None
        except RegistryError as err:  # show what is there, and say loudly that it is damaged
            problem = str(err)
        production = {
            "version": pointer["version"],
            "verified": problem is None,
            "problem": problem,
            "promoted_at": pointer.get("promoted_at"),
            "previous": pointer.get("previous", []),
            "history": pointer.get("history", [])[-5:],
            "model": card.get("model"),
            "metrics": card.get("metrics"),
            "lineage": card.get("lineage"),
            "decision": card.get("decision"),
            "url": registry.url(pointer["version"], SHIPPED),
        }
    return {
        "registry": registry.store.url,
        "family": registry.family,
        "production": production,
        "versions": registry.versions(),
        "last_decision": last_decision(workspace),
    }


def status_text(info: dict[str, Any]) -> str:
    """`squeeze status` for humans."""
    lines = [f"registry: {info['registry']} (family {info['family']})"]
    prod = info["production"]
    if prod is None:
        lines.append("production: nothing promoted yet")
    else:
        m, lineage = prod["metrics"] or {}, prod["lineage"] or {}
        lines += [
            f"production: version {prod['version']} ({prod['model']['name']}), "
            f"promoted {prod['promoted_at']}",
            f"  accuracy {m.get('accuracy')}, {m.get('gzip_bytes')} bytes shipped "
            f"({m.get('size_bytes')} unpacked), latency p50 {m.get('latency_ms_p50')} ms "
            f"p95 {m.get('latency_ms_p95')} ms",
            f"  lineage: {chain_text({'lineage': lineage})}",
            f"  git {lineage.get('git_revision')}, data {lineage.get('data_fingerprint')}",
            f"  previous versions (rollback order): {prod['previous'] or 'none'}",
            f"  model: {prod['url']}",
            "  checksums: " + ("verified" if prod["verified"] else f"FAILED: {prod['problem']}"),
        ]
    lines.append(f"versions: {', '.join(map(str, info['versions'])) or 'none'}")
    decision = info["last_decision"]
    if decision:
        lines.append(f"last decision ({decision['source']}): {decision['outcome']}")
        lines += [f"  - {r}" for r in decision["reasons"]]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """Print what is in production; exit 1 when its files fail their checksums."""
    info = status(Path(args.workspace))
    print(json.dumps(info, indent=2) if args.json else status_text(info))
    damaged = info["production"] is not None and not info["production"]["verified"]
    return EXIT_FAILED if damaged else 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Point production at VERSION (checksums verified; no gate: an operator's decision)."""
    registry = registry_for(Path(args.workspace))
    versions = registry.versions()
    if args.version not in versions:
        raise RegistryError(
            f"no version {args.version} of {registry.family!r} in {registry.store.url} "
            f"(versions: {', '.join(map(str, versions)) or 'none'}); see squeeze status"
        )
    before = (registry.production() or {}).get("version")
    registry.promote(args.version)
    print(f"production of {registry.family!r}: version {args.version} (was {before})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Point production back at the previous production version."""
    registry = registry_for(Path(args.workspace))
    before = (registry.production() or {}).get("version")
    version = registry.rollback()
    print(f"production of {registry.family!r}: version {version} (rolled back from {before})")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """Download the production model (shipped gzipped, unpacked), card and checksums into DIR
    (verified)."""
    registry = registry_for(Path(args.workspace))
    pointer = registry.production()
    if pointer is None:
        raise RegistryError(
            f"nothing is in production for {registry.family!r} in {registry.store.url}: "
            "promote a version first (squeeze promote VERSION)"
        )
    dest = registry.download(pointer["version"], Path(args.dir))
    unpack(dest)  # the shipped model.onnx.gz -> model.onnx, ready for onnxruntime
    files = ", ".join(sorted(p.name for p in dest.iterdir()))
    print(f"version {pointer['version']} of {registry.family!r} -> {dest} ({files}; verified)")
    return 0


def guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a registry or store failure into one line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (RegistryError, StoreError) as err:
            message = " ".join(str(err).split())  # one line, whatever the server said
            print(f"squeeze {args.command}: {message}", file=sys.stderr)
            return EXIT_FAILED

    run.__doc__ = command.__doc__
    return run


def add_ops_commands(sub: Any) -> None:
    """Register status, promote, rollback and pull-production on the CLI's subparsers."""
    status_p = sub.add_parser("status", help="show the production model, its metrics and lineage")
    status_p.add_argument("--json", action="store_true", help="machine-readable output")
    status_p.set_defaults(func=guarded(cmd_status))
    promote_p = sub.add_parser("promote", help="point production at VERSION (verified)")
    promote_p.add_argument("version", type=int, metavar="VERSION")
    promote_p.set_defaults(func=guarded(cmd_promote))
    rollback_p = sub.add_parser("rollback", help="point production back at the previous version")
    rollback_p.set_defaults(func=guarded(cmd_rollback))
    pull_p = sub.add_parser("pull-production", help="download the production model into DIR")
    pull_p.add_argument("dir", metavar="DIR")
    pull_p.set_defaults(func=guarded(cmd_pull))
