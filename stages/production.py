"""Stage `production`: stamp whether the production model in the registry is intact, so that a
damaged one makes promote run again, and replace it, even when nothing else changed.

DVC cannot look into the registry, so this stage is `always_changed`, like `source`: `dvc repro`
and the flow run it every time. It writes data/production.json: {"damaged": null} while
production is intact or nothing is promoted yet, {"damaged": "<key>"} when the pointer or a file
of the production version fails its checksums (squeeze.registry.registry.Registry.
damaged_production). promote depends on the stamp. It holds no version number on purpose: a
promotion by this run must not make the next run promote again; only damage, and its repair,
change it.

Cost per run: reading production.json and the production version's files (the shipped model,
its card and metrics: tens of kB to a few MB) and hashing them.
"""

from __future__ import annotations

from pathlib import Path

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, write_json
from squeeze.registry.registry import registry_of
from squeeze.registry.store import Unavailable
from stages.candidate import stamp_main


def run(root: Path, params: Params) -> None:
    """Write whether production is damaged (and where) to data/production.json."""
    damaged = registry_of(root, params).damaged_production()
    if damaged:
        print(f"production is damaged: {damaged}; promote runs to replace it", flush=True)
    write_json(Workspace(root).production, {"damaged": damaged})


def main() -> None:
    """`dvc repro`'s entry; a registry that cannot be read now keeps the last stamp
    (stamp_main)."""
    stamp_main(run, Unavailable, Workspace(Path(".")).production,
               "damage to production is seen once the registry can be read again")  # fmt: skip


if __name__ == "__main__":
    main()
