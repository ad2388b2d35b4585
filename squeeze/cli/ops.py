"""Operations on the model registry from the command line: status, promote, rollback, pull,
clean-registry.

The registry is the one params.promote names (registry, endpoint_url, family) in the workspace's
params.yaml. Every failure (no such version, unreachable endpoint, refused credentials, a corrupt
object, a damaged production.json) ends the command with exit status 1 and one line on stderr
saying what failed and what to do; messages come from squeeze.registry.store, which never
includes credentials. A silent S3 endpoint fails within the store's retry budget (at most 15 s,
squeeze.registry.store.MAX_ATTEMPTS).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from squeeze.config.files import load_params
from squeeze.config.workspace import Workspace, read_json
from squeeze.registry.card import chain_text
from squeeze.registry.package import DAMAGED, MODEL, SHIPPED, shipped_name, unpacked
from squeeze.registry.registry import (
    HALF_VERSION_GRACE_S,
    Damaged,
    Registry,
    RegistryError,
    registry_of,
)
from squeeze.registry.store import LocalStore, StoreError

EXIT_FAILED = 1
# Decision files, newest stage first: promote.json holds the final decision, gate.json the gates'.
DECISIONS = ("promote", "gate")
CARD = "card.json"


def registry_for(workspace: Path) -> Registry:
    """The registry named by the workspace's params.yaml (relative paths are inside it)."""
    return registry_of(workspace, load_params(workspace))


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


def production_status(registry: Registry, pointer: dict[str, Any]) -> dict[str, Any]:
    """The production version's card, metrics and lineage, and whether its files are intact.

    Every file is checked against checksums.json and against the sha256s the pointer recorded
    at promotion. A damaged version is reported, not raised: ``damaged`` names the object.
    """
    version = pointer["version"]
    try:
        registry.verify(version, pointer.get("sha256"))
        damaged = None
    except Damaged as err:  # show what is there, and say loudly that it is damaged
        damaged = err
    try:
        card = registry.card(version)
    except Damaged:  # the card itself is what is damaged (or its checksums): shown as unknown
        card = {}
    return {
        "version": version,
        "verified": damaged is None,
        "problem": str(damaged) if damaged else None,
        "damaged": damaged.key if damaged else None,
        "promoted_at": pointer.get("promoted_at"),
        "previous": pointer.get("previous", []),
        "history": pointer.get("history", [])[-5:],
        "model": card.get("model"),
        "metrics": card.get("metrics"),
        "lineage": card.get("lineage"),
        "decision": card.get("decision"),
        "url": registry.url(version, shipped_name(pointer.get("sha256") or {}) or SHIPPED),
    }


def damaged_pointer_status(err: Damaged) -> dict[str, Any]:
    """production_status's fields for a production.json that is not a valid pointer."""
    return {
        "version": None, "verified": False, "problem": str(err), "damaged": err.key,
        "promoted_at": None, "previous": [], "history": [], "model": None, "metrics": None,
        "lineage": None, "decision": None, "url": None,
    }  # fmt: skip


def status(workspace: Path) -> dict[str, Any]:
    """What is in production: version, metrics, lineage, history; the versions; the
    half-versions (published in part, never listed as versions); the decision."""
    registry = registry_for(workspace)
    try:
        pointer = registry.production()
        production = production_status(registry, pointer) if pointer else None
    except Damaged as err:  # production.json itself: say so, and still list the versions
        production = damaged_pointer_status(err)
    return {
        "registry": registry.store.url,
        "family": registry.family,
        "production": production,
        "versions": registry.versions(),
        "incomplete": registry.incomplete(),
        "last_decision": last_decision(workspace),
    }


def status_text(info: dict[str, Any]) -> str:
    """`squeeze status` for humans."""
    lines = [f"registry: {info['registry']} (family {info['family']})"]
    prod = info["production"]
    if prod is None:
        lines.append("production: nothing promoted yet")
    elif prod["version"] is None:
        lines.append(f"production: DAMAGED: {prod['problem']}")
    else:
        m, lineage = prod["metrics"] or {}, prod["lineage"] or {}
        name = (prod["model"] or {}).get("name", "card unreadable")
        lines += [
            f"production: version {prod['version']} ({name}), promoted {prod['promoted_at']}",
            f"  test accuracy {m.get('test_accuracy')} (95% CI {m.get('test_accuracy_ci')}), "
            f"validation {m.get('val_accuracy')}, {m.get('shipped_bytes')} bytes shipped "
            f"({m.get('size_bytes')} unpacked), latency p50 {m.get('latency_ms_p50')} ms "
            f"p95 {m.get('latency_ms_p95')} ms",
            f"  lineage: {chain_text({'lineage': lineage})}",
            f"  git {lineage.get('git_revision')}, data {lineage.get('data_fingerprint')}",
            f"  previous versions (rollback order): {prod['previous'] or 'none'}",
            f"  model: {prod['url']}",
            "  checksums: " + ("verified" if prod["verified"] else f"FAILED: {prod['problem']}"),
        ]
        if prod["damaged"]:
            lines.append(
                f"  DAMAGED: {prod['damaged']}: promote treats version {prod['version']} as "
                "failing its gates; squeeze rollback or squeeze promote VERSION to replace it now"
            )
    lines.append(f"versions: {', '.join(map(str, info['versions'])) or 'none'}")
    if info["incomplete"]:
        halves = ", ".join(
            f"{half['version']} (claimed {half['claimed_at'] or 'at an unknown time'}, "
            f"{len(half['objects'])} objects)"
            for half in info["incomplete"]
        )
        lines.append(
            f"half-published (no checksums.json; not versions): {halves}; squeeze clean-registry "
            f"removes those claimed over {HALF_VERSION_GRACE_S / 60:g} min ago"
        )
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
    try:
        before: Any = (registry.production() or {}).get("version")
    except Damaged:  # an operator's promote is how a damaged pointer is replaced
        before = "a damaged production.json"
    registry.promote(args.version, replace_damaged=True)
    print(f"production of {registry.family!r}: version {args.version} (was {before})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Point production back at the previous production version."""
    registry = registry_for(Path(args.workspace))
    before = (registry.production() or {}).get("version")
    version = registry.rollback()
    print(f"production of {registry.family!r}: version {version} (rolled back from {before})")
    return 0


def pull(registry: Registry, dest: Path) -> tuple[int, list[Path]]:
    """Write the production model (unpacked model.onnx) and its card.json into ``dest``.

    Every file is verified (against checksums.json and the pointer) and the model unpacked
    before anything is written. ``dest`` is created if missing; both files are written to temp
    files in ``dest`` first and only then renamed over their namesakes, and on any failure
    (``dest/card.json`` is a folder, a full disk) neither changes (LocalStore.put_all). Nothing
    else in ``dest`` is touched, so ``dest`` may be ``.`` or a folder holding the user's own
    files.

    Returns:
        the production version and the paths written.
    """
    pointer = registry.production()
    if pointer is None:
        raise RegistryError(
            f"nothing is in production for {registry.family!r} in {registry.store.url}: "
            "promote a version first (squeeze promote VERSION)"
        )
    version = pointer["version"]
    files = registry.fetch(version, pointer.get("sha256"))
    shipped = shipped_name(files)
    if shipped is not None:
        try:
            model = unpacked(files[shipped], shipped)
        except DAMAGED as err:
            raise RegistryError(
                f"{registry.url(version, shipped)} does not decompress ({err}), though it matches "
                "its checksum: it was published broken; promote or roll back to another version"
            ) from err
    elif MODEL in files:  # published before models shipped compressed
        model = files[MODEL]
    else:
        raise RegistryError(
            f"version {version} of {registry.family!r} holds no {SHIPPED} "
            f"(files: {', '.join(sorted(files))}): it is not a squeeze model"
        )
    out = LocalStore(dest)
    out.put_all({MODEL: model, CARD: files[CARD]})
    return version, [out.root / MODEL, out.root / CARD]


def cmd_pull(args: argparse.Namespace) -> int:
    """Write the production model (unpacked) and card into DIR (verified); other files in DIR
    stay."""
    registry = registry_for(Path(args.workspace))
    version, written = pull(registry, Path(args.dir))
    names = ", ".join(p.name for p in written)
    print(f"version {version} of {registry.family!r} -> {written[0].parent} ({names}; verified)")
    return 0


def cmd_clean_registry(args: argparse.Namespace) -> int:
    """Remove half-versions (published in part: no checksums.json) claimed more than --grace
    minutes ago; younger ones may be a publish still uploading."""
    registry = registry_for(Path(args.workspace))
    halves = registry.incomplete()
    if args.dry_run:
        print(f"half-published versions of {registry.family!r}: "
              + (", ".join(str(half["version"]) for half in halves) or "none"))  # fmt: skip
        return 0
    removed = registry.clean(args.grace * 60)
    kept = [half["version"] for half in halves if half["version"] not in removed]
    print(
        f"removed half-published versions of {registry.family!r}: "
        f"{', '.join(map(str, removed)) or 'none'}"
        + (f"; kept {', '.join(map(str, kept))} (claimed under {args.grace:g} min ago)"
           if kept else "")
    )  # fmt: skip
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
    """Register status, promote, rollback, pull-production and clean-registry on the CLI's
    subparsers."""
    status_p = sub.add_parser("status", help="show the production model, its metrics and lineage")
    status_p.add_argument("--json", action="store_true", help="machine-readable output")
    status_p.set_defaults(func=guarded(cmd_status))
    promote_p = sub.add_parser("promote", help="point production at VERSION (verified)")
    promote_p.add_argument("version", type=int, metavar="VERSION")
    promote_p.set_defaults(func=guarded(cmd_promote))
    rollback_p = sub.add_parser("rollback", help="point production back at the previous version")
    rollback_p.set_defaults(func=guarded(cmd_rollback))
    pull_p = sub.add_parser(
        "pull-production",
        help="write the production model.onnx and card.json into DIR (verified; other files stay)",
    )
    pull_p.add_argument("dir", metavar="DIR")
    pull_p.set_defaults(func=guarded(cmd_pull))
    clean_p = sub.add_parser(
        "clean-registry",
        help="remove half-published versions (a publisher killed mid-upload) older than --grace",
    )
    clean_p.add_argument(
        "--grace", type=float, default=HALF_VERSION_GRACE_S / 60, metavar="MINUTES",
        help="keep half-versions claimed less than this long ago: they may be a publish still "
        "uploading (default: %(default)g)",
    )  # fmt: skip
    clean_p.add_argument("--dry-run", action="store_true", help="only list them")
    clean_p.set_defaults(func=guarded(cmd_clean_registry))
