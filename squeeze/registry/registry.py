"""The model registry: immutable, checksummed versions plus an atomically moved pointer.

Layout under a store root (a local folder or ``s3://bucket/prefix``, see
``squeeze.registry.store``)::

    <family>/versions/<n>/claim.json        written first: reserves number n (create-if-absent)
    <family>/versions/<n>/model.onnx.xz ... the published files (squeeze.registry.package)
    <family>/versions/<n>/card.json         the model card (plus a "registry" section)
    <family>/versions/<n>/metrics.json
    <family>/versions/<n>/checksums.json    written last: its presence marks n as complete
    <family>/content/<sha256>.json          which version holds these files (publish's index)
    <family>/production.json                the pointer: which version serves, and the history

A version without ``checksums.json`` (a publisher crashed mid-upload) is invisible: never
listed, never promotable. Publishing is idempotent by content: files whose sha256s equal an
intact version's are that version, so a publish retried after a network fault never leaves a
second copy. A version whose file is missing or fails its checksum raises :class:`Damaged`,
which names the damaged object. ``production.json`` only moves by compare-and-swap to a version
whose every checksum was just verified, so a crash or a dead endpoint at any moment leaves it
on a complete version. Consumers need no project code: read ``production.json``, then fetch
``<family>/<path>/model.onnx.xz``, compare it with ``sha256["model.onnx.xz"]`` and ``xz -d`` it
(versions published before squeeze shipped xz hold ``model.onnx.gz``: gunzip it).
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from squeeze.registry.store import NotFound, Store, StoreError, open_store

__all__ = ["CURRENT", "Damaged", "Registry", "RegistryError", "open_registry"]

# Names the registry writes itself; a published file may not take them.
_RESERVED = {"claim.json", "card.json", "metrics.json", "checksums.json"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Upper bound on version numbers tried per publish; each refusal means another publisher
# took that number, so this is only reached with that many publishers racing at once.
_MAX_CLAIM_ATTEMPTS = 100


class RegistryError(RuntimeError):
    """A registry operation was refused or found inconsistent data; the message says why."""


class Damaged(RegistryError):
    """A version must not be used: one of its files is missing or fails its sha256, or its
    ``checksums.json`` is missing or unreadable.

    Attributes:
        key: where the damaged object lives, as the message names it: the ``s3://...`` URL or
            the local path of the file (``checksums.json`` when the table itself is broken).
        version: the damaged version's number.
    """

    def __init__(self, message: str, key: str, version: int) -> None:
        super().__init__(message)
        self.key = key
        self.version = version

    def __reduce__(self) -> tuple[type[Damaged], tuple[str, str, int]]:
        # Exceptions pickle as cls(*args); ours has more than the message (Prefect pickles
        # a failed task's exception).
        return type(self), (str(self), self.key, self.version)


class _Current(enum.Enum):
    """Sentinel type for ``promote(expected=CURRENT)``: "whatever is in production now"."""

    TOKEN = "current"


CURRENT = _Current.TOKEN


def _now() -> str:
    """UTC timestamp for cards and the pointer history."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _dumps(obj: Any, what: str) -> bytes:
    """Serialise ``obj`` as stable, human-readable JSON or say which document was not JSON."""
    try:
        return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    except (TypeError, ValueError) as err:
        raise RegistryError(f"{what} is not JSON-serialisable: {err}") from err


def _loads(data: bytes, where: str) -> Any:
    """Parse JSON read from the store, naming the key if it is damaged."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RegistryError(f"{where} is not valid JSON ({err}); the registry is damaged") from err


def _check_name(name: str, what: str) -> str:
    """Return ``name`` if it is a plain file or family name (no folders, no dot-files)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-'")
    return name


class Registry:
    """Versions and the production pointer of one model family in a :class:`Store`."""

    def __init__(self, store: Store, family: str) -> None:
        self.store = store
        self.family = _check_name(family, "model family")

    def __repr__(self) -> str:
        return f"Registry({self.store.url!r}, {self.family!r})"

    # -- keys ---------------------------------------------------------------------------

    def _key(self, version: int, name: str) -> str:
        return f"{self.family}/versions/{version}/{name}"

    @property
    def _pointer_key(self) -> str:
        return f"{self.family}/production.json"

    def _where(self, key: str) -> str:
        return f"{self.store.url.rstrip('/')}/{key}"

    def url(self, version: int, name: str) -> str:
        """Where a file of a version lives (s3://... or a local path), for links and messages."""
        return self._where(self._key(version, _check_name(name, "file name")))

    # -- publishing ---------------------------------------------------------------------

    def _claimed(self) -> list[int]:
        """Version numbers that have any object, complete or not (they are taken)."""
        numbers = set()
        for key in self.store.list(f"{self.family}/versions/"):
            segment = key.split("/")[2]
            if segment.isdigit():
                numbers.add(int(segment))
        return sorted(numbers)

    def _claim(self) -> int:
        """Reserve the next free version number with create-if-absent on its claim key.

        Two publishers that pick the same number race on ``claim.json``; the loser moves on
        to the next number, so concurrent publishers always get distinct versions.
        """
        claimed = self._claimed()
        version = claimed[-1] + 1 if claimed else 1
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            # The token makes the claim unique, so a retried write is recognised as ours.
            claim = _dumps({"claimed_at": _now(), "token": uuid.uuid4().hex}, "claim")
            if self.store.put_if_absent(self._key(version, "claim.json"), claim):
                return version
            version += 1
        raise RegistryError(
            f"could not reserve a version number for {self.family!r} in {self.store.url} "
            f"after {_MAX_CLAIM_ATTEMPTS} attempts: too many concurrent publishers?"
        )

    def publish(self, files: dict[str, bytes], card: dict, metrics: dict) -> int:
        """Upload a new version and return its number once every checksum reads back right.

        Order matters for crash safety: claim the number, upload ``files``, ``card.json`` and
        ``metrics.json``, index the version under its content hash, then write
        ``checksums.json`` last (which makes the version visible), then re-download everything
        and verify it. The card gains a ``"registry"`` section with the family, version and
        publication time so a downloaded model says what it is.

        Publishing is idempotent by content: if an intact version already holds exactly these
        ``files`` (same names, same sha256s), that version is returned and nothing is written;
        the card and metrics do not count, since the card's publication time differs on every
        call. So a publish retried after a fault at any step (before or after
        ``checksums.json``) leaves one complete version. A crash before ``checksums.json``
        leaves an invisible, incomplete number; the retry claims a fresh one.

        Args:
            files: file name -> content, e.g. ``{"model.onnx.xz": shipped_bytes}``.
            card: the model card (lineage, params, gate results); JSON-serialisable.
            metrics: the measured metrics; JSON-serialisable.
        """
        if not files:
            raise RegistryError(f"nothing to publish to {self.family!r}: no files given")
        for name in files:
            if _check_name(name, "file name") in _RESERVED:
                raise RegistryError(f"file name {name!r} is reserved by the registry")
        # Serialise before claiming, so bad input does not burn a version number.
        metrics_json = _dumps(metrics, "metrics")
        _dumps(card, "card")
        content = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        index_key = self._content_key(content)
        existing = self._holding(content, index_key)
        if existing is not None:
            return existing
        version = self._claim()
        card = {
            **card,
            "registry": {"family": self.family, "version": version, "published_at": _now()},
        }
        documents = {
            **files,
            "card.json": _dumps(card, "card"),
            "metrics.json": metrics_json,
        }
        for name, data in documents.items():
            self.store.put(self._key(version, name), data)
        # Before checksums.json: once the version is visible, a retry must be able to find it.
        self.store.put(index_key, _dumps({"version": version, "sha256": content}, "index"))
        checksums = {
            "files": {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                for name, data in sorted(documents.items())
            }
        }
        if not self.store.put_if_absent(
            self._key(version, "checksums.json"), _dumps(checksums, "checksums")
        ):
            raise RegistryError(
                f"{self._where(self._key(version, 'checksums.json'))} already exists"
            )
        self.verify(version)
        return version

    def _content_key(self, content: dict[str, str]) -> str:
        """The index key of a set of files: the sha256 of their names and sha256s."""
        digest = hashlib.sha256(_dumps(content, "content")).hexdigest()
        return f"{self.family}/content/{digest}.json"

    def _holding(self, content: dict[str, str], index_key: str) -> int | None:
        """The intact version whose published files are exactly ``content`` (name -> sha256),
        or None. The index is only a hint: the version it names is verified in full, and a
        stale, unreadable or damaged entry is a miss (publish then writes a fresh version)."""
        try:
            version = json.loads(self.store.get(index_key))["version"]
        except NotFound:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(version, int) or isinstance(version, bool):
            return None
        try:
            table, _ = self._fetch_all(version)
        except Damaged:
            return None
        published = {n: e.get("sha256") for n, e in table.items() if n not in _RESERVED}
        return version if published == content else None

    # -- reading and verifying ----------------------------------------------------------

    def _damaged(self, version: int, name: str, problem: str) -> Damaged:
        """A :class:`Damaged` naming file ``name`` of ``version``; "{where}" in ``problem``
        becomes the file's URL."""
        where = self._where(self._key(version, name))
        return Damaged(problem.replace("{where}", where), where, version)

    def _checksums(self, version: int) -> tuple[dict[str, dict[str, Any]], bytes]:
        """The ``files`` table of a complete version and the raw ``checksums.json``; raise
        :class:`Damaged` if the version is incomplete or its table is unreadable."""
        name = "checksums.json"
        try:
            data = self.store.get(self._key(version, name))
        except NotFound:
            raise self._damaged(
                version,
                name,
                f"version {version} of {self.family!r} is missing or incomplete "
                "({where} does not exist); publish it again",
            ) from None
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._damaged(
                version, name, f"{{where}} is not valid JSON ({err}); version {version} is damaged"
            ) from err
        table = document.get("files") if isinstance(document, dict) else None
        if not isinstance(table, dict) or not table:
            raise self._damaged(
                version, name, f"{{where}} lists no files; version {version} is damaged"
            )
        for file, entry in table.items():  # a bad name could write outside a download's dest
            if not (isinstance(file, str) and _NAME.match(file) and isinstance(entry, dict)):
                raise self._damaged(
                    version, name, f"{{where}}: bad entry {file!r}; version {version} is damaged"
                )
        return table, data

    def _fetch(self, version: int, name: str, expected: dict[str, Any]) -> bytes:
        """Download one file of ``version`` and check it against its checksum entry."""
        try:
            data = self.store.get(self._key(version, name))
        except NotFound:
            raise self._damaged(
                version, name, f"{{where}} is missing: version {version} is damaged, do not use it"
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected.get("sha256"):
            raise self._damaged(
                version,
                name,
                f"checksum mismatch for {{where}}: expected sha256 {expected.get('sha256')}, "
                f"got {actual}; version {version} is corrupt",
            )
        return data

    def _fetch_all(
        self, version: int, sha256: dict[str, str] | None = None
    ) -> tuple[dict[str, dict[str, Any]], dict[str, bytes]]:
        """Download and verify every file of ``version``; return its checksum table and the
        files (``checksums.json`` included, so a download is self-describing).

        ``sha256`` (name -> digest, e.g. the production pointer's) must agree with the table:
        a file rewritten together with its checksum after promotion is damaged too.
        """
        table, raw = self._checksums(version)
        for name, digest in (sha256 or {}).items():
            recorded = table.get(name, {}).get("sha256")
            if recorded != digest:
                raise self._damaged(
                    version,
                    name,
                    f"{{where}} changed after it was promoted: checksums.json says sha256 "
                    f"{recorded}, the production pointer {digest}; version {version} is damaged",
                )
        fetched = {name: self._fetch(version, name, entry) for name, entry in table.items()}
        fetched["checksums.json"] = raw
        return table, fetched

    def fetch(self, version: int, sha256: dict[str, str] | None = None) -> dict[str, bytes]:
        """Every file of ``version`` (``checksums.json`` not included), all verified first.

        Args:
            version: a complete version of this family.
            sha256: name -> sha256 the files must also have, e.g. the production pointer's.

        Raises:
            Damaged: a file is missing or fails its checksum, or checksums.json is broken.
        """
        _, fetched = self._fetch_all(version, sha256)
        del fetched["checksums.json"]
        return fetched

    def verify(self, version: int, sha256: dict[str, str] | None = None) -> None:
        """Raise :class:`Damaged` naming the file if any file of ``version`` is missing or does
        not match its recorded sha256 (or ``sha256``, see :meth:`fetch`), or if the version is
        incomplete."""
        self._fetch_all(version, sha256)

    def versions(self) -> list[int]:
        """Complete versions (those with ``checksums.json``), ascending."""
        found = set()
        for key in self.store.list(f"{self.family}/versions/"):
            _, _, number, *rest = key.split("/")
            if number.isdigit() and rest == ["checksums.json"]:
                found.add(int(number))
        return sorted(found)

    def card(self, version: int) -> dict:
        """The verified model card of a complete version; :class:`Damaged` if it is not."""
        table, _ = self._checksums(version)
        if "card.json" not in table:
            raise self._damaged(
                version,
                "checksums.json",
                f"{{where}} lists no card.json; version {version} is damaged",
            )
        data = self._fetch(version, "card.json", table["card.json"])
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._damaged(
                version, "card.json", f"{{where}} is not valid JSON ({err}); damaged"
            ) from err

    def download(self, version: int, dest: Path) -> Path:
        """Download every file of ``version`` into ``dest`` after verifying all checksums.

        Files land in a temp folder next to ``dest`` that is renamed into place, so ``dest``
        never holds a partial or unverified model. An existing ``dest`` is replaced, so give
        it a folder of its own (pull-production writes into a user's folder with
        :meth:`fetch` instead).

        Raises:
            Damaged: ``version`` is missing a file, fails a checksum or is incomplete; nothing
                is written then.
        """
        dest = Path(dest)
        _, fetched = self._fetch_all(version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
        try:
            for name, data in fetched.items():
                (tmp / name).write_bytes(data)
            if dest.exists():
                # A folder cannot be atomically replaced by another non-empty one: move the
                # old one aside first, so dest is either old, new or (briefly) absent.
                old = Path(
                    tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old")
                )
                os.replace(dest, old / dest.name)
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    # -- the production pointer ---------------------------------------------------------

    def _pointer(self) -> tuple[dict | None, str | None]:
        """The current pointer and its version tag, or (None, None) if nothing is promoted."""
        try:
            data, tag = self.store.get_with_tag(self._pointer_key)
        except NotFound:
            return None, None
        return _loads(data, self._where(self._pointer_key)), tag

    def production(self) -> dict | None:
        """The production pointer (see :meth:`promote`), or None if nothing was promoted."""
        return self._pointer()[0]

    def _move(self, pointer: dict, tag: str | None, action: str) -> None:
        """Compare-and-swap the pointer; refuse if it changed since it was read."""
        try:
            moved = self.store.put_if_match(self._pointer_key, _dumps(pointer, "pointer"), tag)
        except StoreError as err:
            raise RegistryError(
                f"could not move production of {self.family!r} to version {pointer['version']} "
                f"while {action}: {err}. Production is unchanged unless that write reached the "
                "store; check it (squeeze status) before retrying"
            ) from err
        if not moved:
            current = (self.production() or {}).get("version")
            raise RegistryError(
                f"production of {self.family!r} moved (now version {current}) while {action} "
                f"version {pointer['version']}; nothing was changed: check and retry"
            )

    def promote(self, version: int, expected: int | None | _Current = CURRENT) -> None:
        """Point production at ``version`` after verifying every file of it.

        The pointer records the version, its path and checksums, a ``previous`` stack (most
        recent first) that :meth:`rollback` pops, and an append-only ``history`` of moves.
        The write is a compare-and-swap against the pointer read here, so of two concurrent
        promotions exactly one wins; the other raises :class:`RegistryError`. Promoting the
        version already in production changes nothing.

        Args:
            version: a complete version of this family.
            expected: the version that must be in production now (None: nothing promoted);
                by default whatever is current when promote reads the pointer.
        """
        table, _ = self._fetch_all(version)
        pointer, tag = self._pointer()
        current = pointer["version"] if pointer else None
        if expected is not CURRENT and current != expected:
            raise RegistryError(
                f"production of {self.family!r} is version {current}, not the expected "
                f"{expected}; someone else promoted: check and retry"
            )
        if current == version:
            return
        previous = [current, *pointer.get("previous", [])] if pointer else []
        self._move(
            self._new_pointer(version, table, previous, pointer, "promote"), tag, "promoting"
        )

    def rollback(self) -> int:
        """Point production back at the previous production version (verified); return it."""
        pointer, tag = self._pointer()
        if not pointer or not pointer.get("previous"):
            raise RegistryError(
                f"cannot roll back {self.family!r} in {self.store.url}: "
                + ("nothing is in production" if not pointer else "there is no previous version")
            )
        target, *rest = pointer["previous"]
        table, _ = self._fetch_all(target)
        self._move(
            self._new_pointer(target, table, rest, pointer, "rollback"), tag, "rolling back to"
        )
        return target

    def _new_pointer(
        self,
        version: int,
        table: dict[str, dict[str, Any]],
        previous: list[int],
        old: dict | None,
        action: str,
    ) -> dict:
        """Build the pointer document for ``version``; a fresh id makes every move unique."""
        at = _now()
        history = [
            *(old or {}).get("history", []),
            {"action": action, "version": version, "at": at},
        ]
        return {
            "family": self.family,
            "version": version,
            "path": f"versions/{version}",
            "sha256": {name: entry["sha256"] for name, entry in table.items()},
            "promoted_at": at,
            "promotion_id": uuid.uuid4().hex,
            "previous": previous,
            "history": history,
        }


def open_registry(
    url: str, family: str, endpoint_url: str | None = None, base: Path | None = None
) -> Registry:
    """The registry of ``family`` at ``url`` (params.promote: registry, family, endpoint_url).

    A relative local path is taken relative to ``base`` (the workspace), not to the current
    directory, so `squeeze -w DIR status` and the pipeline find the same registry.
    """
    if base is not None and "://" not in url and not Path(url).expanduser().is_absolute():
        url = str(Path(base) / url)
    return Registry(open_store(url, endpoint_url), family)
