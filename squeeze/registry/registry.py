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

A version without ``checksums.json`` (a publisher crashed or was killed mid-upload) is a
half-version: never listed by :meth:`Registry.versions`, never promotable; :meth:`Registry.
incomplete` lists them with the time of their claim and :meth:`Registry.clean` removes those
claimed longer ago than a grace period (``squeeze status`` / ``squeeze clean-registry``).
Publishing is idempotent by content: files whose sha256s equal an intact version's are that
version, so a publish retried after a network fault never leaves a second copy; a publish ends
by checking that the version holds exactly the bytes it uploaded. ``checksums.json`` also
records, for a shipped (compressed) model, the sha256 of its ONNX bytes (``onnx_sha256``), so
"the same model" does not depend on the compressor's version (:meth:`Registry.onnx_sha256`).

A version whose file is missing or fails its checksum raises :class:`Damaged`, which names the
damaged object; so does a ``production.json`` that is not a valid pointer. ``production.json``
only moves by compare-and-swap to a version whose every checksum was just verified, so a crash
or a dead endpoint at any moment leaves it on a complete version; the mover then reads it back
and checks that its own move (``promotion_id``) is there. It keeps the last ``HISTORY_LIMIT``
moves in ``history`` and as many versions in ``previous`` (older versions stay in the registry;
``squeeze promote VERSION`` reaches any of them). Consumers need no project code: read
``production.json``, then fetch ``<family>/<path>/model.onnx.xz``, compare it with
``sha256["model.onnx.xz"]`` and ``xz -d`` it (versions published before squeeze shipped xz hold
``model.onnx.gz``: gunzip it).
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
from urllib.parse import urlsplit

from squeeze.config.locations import check_location
from squeeze.config.params import Params
from squeeze.registry.package import DAMAGED, MODEL, SHIPPED_FORMATS, shipped_name, unpacked
from squeeze.registry.store import NotFound, Store, StoreError, open_store

__all__ = [
    "CURRENT",
    "HALF_VERSION_GRACE_S",
    "HISTORY_LIMIT",
    "Damaged",
    "Registry",
    "RegistryError",
    "open_registry",
    "registry_of",
]

# Names the registry writes itself; a published file may not take them.
_RESERVED = {"claim.json", "card.json", "metrics.json", "checksums.json"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Upper bound on version numbers tried per publish; each refusal means another publisher
# took that number, so this is only reached with that many publishers racing at once.
_MAX_CLAIM_ATTEMPTS = 100
# production.json is read by every status, pull and promote and rewritten by every move; a
# daily run would grow an unbounded history by ~150 bytes a day, for ever. It keeps the last
# HISTORY_LIMIT moves (three months of daily promotions) and as deep a rollback stack; versions
# that fall off both are still in the registry (squeeze promote VERSION).
HISTORY_LIMIT = 100
# A half-version (claimed, no checksums.json) younger than this may be a publish still
# uploading; clean() leaves it. An upload of a model takes seconds to minutes, never an hour.
HALF_VERSION_GRACE_S = 3600.0


class RegistryError(RuntimeError):
    """A registry operation was refused or found inconsistent data; the message says why."""


class Damaged(RegistryError):
    """A version must not be used: one of its files is missing or fails its sha256, or its
    ``checksums.json`` is missing or unreadable.

    Also raised for a ``production.json`` that is not a valid pointer (``version`` None then).

    Attributes:
        key: where the damaged object lives, as the message names it: the ``s3://...`` URL or
            the local path of the file (``checksums.json`` when the table itself is broken,
            ``production.json`` for the pointer).
        version: the damaged version's number; None when the pointer itself is damaged.
    """

    def __init__(self, message: str, key: str, version: int | None) -> None:
        super().__init__(message)
        self.key = key
        self.version = version

    def __reduce__(self) -> tuple[type[Damaged], tuple[str, str, int | None]]:
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


def _is_number(value: Any) -> bool:
    """A version number: a positive int (JSON's true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _pointer_problem(pointer: Any) -> str | None:
    """What makes ``pointer`` (parsed production.json) unusable, naming the key; None if it is
    a valid pointer. Only what readers rely on is checked; other keys may be added freely."""
    if not isinstance(pointer, dict):
        return f"it holds a JSON {type(pointer).__name__}, not an object"
    if "version" not in pointer:
        return "key 'version' is missing"
    if not _is_number(pointer["version"]):
        return f"key 'version' is {pointer['version']!r}, not a version number"
    sha = pointer.get("sha256")
    if not (isinstance(sha, dict) and sha and all(isinstance(v, str) for v in sha.values())):
        return (
            f"key 'sha256' is {'missing' if sha is None else repr(sha)}, not a file -> sha256 table"
        )
    previous = pointer.get("previous", [])
    if not (isinstance(previous, list) and all(_is_number(v) for v in previous)):
        return f"key 'previous' is {previous!r}, not a list of version numbers"
    if not isinstance(pointer.get("history", []), list):
        return "key 'history' is not a list"
    return None


def _parse_time(value: Any) -> datetime | None:
    """A timestamp written by :func:`_now`, or None when ``value`` is not one."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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
        leaves an invisible half-version (see :meth:`incomplete`); the retry claims a fresh one.

        Once written, the version is read back in full: every file must have the sha256 this
        call uploaded. A store that ignored the create-if-absent on the claim would let two
        publishers share a number; the check makes that fail loudly instead of returning a
        version that holds another run's model.

        A shipped model (``model.onnx.xz``, see squeeze.registry.package) must decompress; its
        ONNX bytes' sha256 is recorded in ``checksums.json`` as ``onnx_sha256``.

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
        # Serialise (and unpack) before claiming, so bad input does not burn a version number.
        metrics_json = _dumps(metrics, "metrics")
        _dumps(card, "card")
        onnx = self._onnx_digests(files)
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
        uploaded = {name: hashlib.sha256(data).hexdigest() for name, data in documents.items()}
        checksums = {
            "files": {
                name: {"sha256": uploaded[name], "bytes": len(data)}
                | ({"onnx_sha256": onnx[name]} if name in onnx else {})
                for name, data in sorted(documents.items())
            }
        }
        if not self.store.put_if_absent(
            self._key(version, "checksums.json"), _dumps(checksums, "checksums")
        ):
            raise RegistryError(
                f"{self._where(self._key(version, 'checksums.json'))} already exists, written by "
                f"another publisher: version {version} is not this publish's; publish again"
            )
        self._check_holds(version, uploaded)
        return version

    def _onnx_digests(self, files: dict[str, bytes]) -> dict[str, str]:
        """The sha256 of the ONNX bytes of every shipped (compressed) model in ``files``.

        Raises:
            RegistryError: a shipped file does not decompress (nothing is published then).
        """
        digests = {}
        for name in SHIPPED_FORMATS:
            if name in files:
                try:
                    digests[name] = hashlib.sha256(unpacked(files[name], name)).hexdigest()
                except DAMAGED as err:
                    raise RegistryError(
                        f"{name} does not decompress ({err}): not publishing a broken model "
                        f"to {self.family!r}"
                    ) from err
        return digests

    def _check_holds(self, version: int, uploaded: dict[str, str]) -> None:
        """Raise :class:`RegistryError` unless ``version`` is intact and its files are exactly
        ``uploaded`` (name -> sha256): what this publish wrote, not another publisher's."""
        where = f"version {version} of {self.family!r} in {self.store.url}"
        advice = (
            "another publisher wrote the same version number, which a store that enforces "
            "If-None-Match prevents: check the store, and do not use this version (squeeze "
            "status); publish again"
        )
        try:
            table, _ = self._fetch_all(version)
        except Damaged as err:
            raise RegistryError(
                f"{where} is damaged right after this publish wrote it ({err}); {advice}"
            ) from err
        held = {name: entry.get("sha256") for name, entry in table.items()}
        differ = sorted(n for n in held.keys() | uploaded.keys() if held.get(n) != uploaded.get(n))
        if differ:
            raise RegistryError(
                f"{where} does not hold what this publish uploaded ({', '.join(differ)} "
                f"differ); {advice}"
            )

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

    def _objects(self) -> dict[int, list[str]]:
        """Every version number that holds any object -> the names of its objects, sorted."""
        found: dict[int, list[str]] = {}
        for key in self.store.list(f"{self.family}/versions/"):
            _, _, number, *rest = key.split("/")
            if number.isdigit() and rest:
                found.setdefault(int(number), []).append("/".join(rest))
        return {number: sorted(names) for number, names in sorted(found.items())}

    def versions(self) -> list[int]:
        """Complete versions (those with ``checksums.json``), ascending."""
        return [n for n, names in self._objects().items() if "checksums.json" in names]

    def incomplete(self) -> list[dict[str, Any]]:
        """Half-versions: numbers that hold objects but no ``checksums.json``, ascending.

        A publisher that crashed or was killed mid-upload leaves one (so does a publish still
        uploading). They are never listed by :meth:`versions` nor promotable, and they keep
        their number taken until :meth:`clean` removes them.

        Returns:
            one dict per half-version: ``version``, ``claimed_at`` (the claim's ISO time, None
            when claim.json is missing or unreadable) and ``objects`` (the names it holds).
        """
        return [
            {"version": n, "claimed_at": self._claimed_at(n) if "claim.json" in names else None,
             "objects": names}
            for n, names in self._objects().items() if "checksums.json" not in names
        ]  # fmt: skip

    def _claimed_at(self, version: int) -> str | None:
        """The time in ``claim.json`` of ``version``; None when it is gone or unreadable (a
        store that cannot answer raises: its half-versions are then left alone)."""
        try:
            claim = json.loads(self.store.get(self._key(version, "claim.json")))
        except (NotFound, UnicodeDecodeError, json.JSONDecodeError):
            return None
        at = claim.get("claimed_at") if isinstance(claim, dict) else None
        return at if _parse_time(at) is not None else None

    def clean(
        self, grace_s: float = HALF_VERSION_GRACE_S, now: datetime | None = None
    ) -> list[int]:
        """Remove the half-versions claimed more than ``grace_s`` seconds ago; return them.

        A younger one may be a publish still uploading and is kept; one whose claim is missing
        or unreadable has no age and is removed. Each is re-checked just before removal (a
        publish that completed meanwhile is a version: kept), its claim goes last (so the number
        stays taken until the rest is gone), and index entries naming it are dropped. A removed
        number may be claimed again by the next publish.

        Args:
            grace_s: age in seconds (by the claim's time) below which a half-version is kept.
            now: the current time (tests); the clock of this machine by default.
        """
        now = now or datetime.now(UTC)
        removed = []
        for half in self.incomplete():
            version, claimed = half["version"], _parse_time(half["claimed_at"])
            if claimed is not None and (now - claimed).total_seconds() < grace_s:
                continue
            if self.store.exists(self._key(version, "checksums.json")):
                continue  # completed since it was listed
            names = sorted(half["objects"], key=lambda name: name == "claim.json")
            for name in names:
                self.store.delete(self._key(version, name))
            removed.append(version)
        if removed:
            self._drop_index_entries(removed)
        return removed

    def _drop_index_entries(self, versions: list[int]) -> None:
        """Delete the content-index entries (publish's hints) that name one of ``versions``."""
        for key in self.store.list(f"{self.family}/content/"):
            try:
                entry = json.loads(self.store.get(key))
            except (NotFound, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(entry, dict) and entry.get("version") in versions:
                self.store.delete(key)

    def onnx_sha256(self, version: int) -> str | None:
        """The sha256 of the ONNX bytes ``version`` ships (its model unpacked), or None when it
        holds no model: what "the same model" means, whatever compressor version packed it.

        Read from ``checksums.json`` (``onnx_sha256``, recorded at publish); a version published
        before that was recorded is downloaded (verified) and unpacked.

        Raises:
            Damaged: the version is incomplete, its model fails its checksum or does not
                decompress.
        """
        table, _ = self._checksums(version)
        name = shipped_name(table)
        if name is None:
            return table[MODEL].get("sha256") if MODEL in table else None
        recorded = table[name].get("onnx_sha256")
        if isinstance(recorded, str):
            return recorded
        data = self._fetch(version, name, table[name])
        try:
            return hashlib.sha256(unpacked(data, name)).hexdigest()
        except DAMAGED as err:
            raise self._damaged(
                version,
                name,
                f"{{where}} does not decompress ({err}); version {version} is damaged",
            ) from err

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

    def download(self, version: int, dest: Path, sha256: dict[str, str] | None = None) -> Path:
        """Download every file of ``version`` into ``dest`` after verifying all checksums.

        Files land in a temp folder next to ``dest`` that is renamed into place, so ``dest``
        never holds a partial or unverified model. An existing ``dest`` is replaced, so give
        it a folder of its own (pull-production writes into a user's folder with
        :meth:`fetch` instead). To download production use :meth:`download_production`.

        Args:
            version: a complete version of this family.
            dest: the folder to create (or replace).
            sha256: name -> sha256 the files must also have (see :meth:`fetch`).

        Raises:
            Damaged: ``version`` is missing a file, fails a checksum or is incomplete; nothing
                is written then.
        """
        dest = Path(dest)
        _, fetched = self._fetch_all(version, sha256)
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

    def download_production(self, dest: Path, pointer: dict | None = None) -> Path:
        """Download the production version into ``dest`` (see :meth:`download`), every file
        verified against ``checksums.json`` and against the sha256s the pointer recorded at
        promotion, so a file rewritten together with its checksum afterwards is caught too.

        Args:
            dest: the folder to create (or replace).
            pointer: the pointer as read earlier by the caller (:meth:`production`), so that
                what is downloaded is the version the caller decided on; read now by default.

        Raises:
            Damaged: a file is missing or fails either checksum, or the pointer is damaged.
            RegistryError: nothing is in production.
        """
        if pointer is None:
            pointer = self.production()
            if pointer is None:
                raise RegistryError(
                    f"nothing is in production for {self.family!r} in {self.store.url}: "
                    "promote a version first (squeeze promote VERSION)"
                )
        self._check_pointer(pointer)
        return self.download(pointer["version"], dest, pointer["sha256"])

    # -- the production pointer ---------------------------------------------------------

    def _check_pointer(self, pointer: Any) -> dict:
        """``pointer`` if it is a valid pointer document, else :class:`Damaged` naming the key."""
        problem = _pointer_problem(pointer)
        if problem is not None:
            raise self._damaged_pointer(problem)
        return pointer

    def _damaged_pointer(self, problem: str) -> Damaged:
        """A :class:`Damaged` for production.json, saying ``problem`` and how to recover."""
        where = self._where(self._pointer_key)
        return Damaged(
            f"{where} is damaged: {problem}. Production cannot be read; squeeze promote VERSION "
            "replaces the pointer (squeeze status lists the versions)",
            where,
            None,
        )

    def _pointer(self, damaged_ok: bool = False) -> tuple[dict | None, str | None]:
        """The current pointer and its version tag, or (None, None) if nothing is promoted.

        A pointer that is not valid JSON or not a valid pointer raises :class:`Damaged`, or with
        ``damaged_ok`` gives (None, its tag), so that it can be replaced by compare-and-swap.
        """
        try:
            data, tag = self.store.get_with_tag(self._pointer_key)
        except NotFound:
            return None, None
        try:
            return self._check_pointer(json.loads(data)), tag
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if damaged_ok:
                return None, tag
            raise self._damaged_pointer(f"it is not valid JSON ({err})") from err
        except Damaged:
            if damaged_ok:
                return None, tag
            raise

    def production(self) -> dict | None:
        """The production pointer (see :meth:`promote`), or None if nothing was promoted.

        Raises:
            Damaged: production.json exists but is not a valid pointer (it names the key).
        """
        return self._pointer()[0]

    def damaged_production(self) -> str | None:
        """Where production is damaged, or None when it is intact (or nothing is promoted):
        the pointer is read, then every file of its version checked against checksums.json and
        the sha256s the pointer recorded (the shipped model is read whole: tens of kB to a few
        MB).

        Returns:
            the damaged object's key (Damaged.key: the production.json or file URL), or None.
        Raises:
            StoreError: the store could not be read (Unavailable: worth retrying).
        """
        try:
            pointer = self.production()
            if pointer is not None:
                self._check_pointer(pointer)
                self.verify(pointer["version"], pointer["sha256"])
        except Damaged as err:
            return err.key
        return None

    def _move(self, pointer: dict, tag: str | None, action: str) -> None:
        """Compare-and-swap the pointer, then read it back.

        Refuses (RegistryError) if the pointer changed since it was read, saying where it is
        now; and if, read back, the pointer holds neither this move's ``promotion_id`` nor a
        later move that records it in its history: the store lost the update.
        """
        version = pointer["version"]
        try:
            moved = self.store.put_if_match(self._pointer_key, _dumps(pointer, "pointer"), tag)
        except StoreError as err:
            raise RegistryError(
                f"could not move production of {self.family!r} to version {version} while "
                f"{action}: {err}. Production is unchanged unless that write reached the store; "
                "check it (squeeze status) before retrying"
            ) from err
        if not moved:
            now = self._pointer(damaged_ok=True)[0]
            raise RegistryError(
                f"production of {self.family!r} moved (now version "
                f"{now['version'] if now else None}) while {action} version {version}; "
                "nothing was changed: check and retry"
            )
        try:
            now = self.production()
        except StoreError as err:
            raise RegistryError(
                f"production of {self.family!r} was moved to version {version} while {action}, "
                f"but reading it back failed: {err}; check squeeze status"
            ) from err
        ours = pointer["promotion_id"]
        kept = [now, *now.get("history", [])] if now else []
        if not any(isinstance(move, dict) and move.get("promotion_id") == ours for move in kept):
            raise RegistryError(
                f"production of {self.family!r} lost this move to version {version} while "
                f"{action}: read back, {self._where(self._pointer_key)} holds version "
                f"{now['version'] if now else None} and no record of promotion {ours}, so "
                "another writer overwrote it although the write was conditional. The store "
                "does not enforce If-Match: use one that does; check squeeze status"
            )

    def promote(
        self,
        version: int,
        expected: int | None | _Current = CURRENT,
        *,
        replace_damaged: bool = False,
    ) -> None:
        """Point production at ``version`` after verifying every file of it.

        The pointer records the version, its path and checksums, a ``previous`` stack (most
        recent first) that :meth:`rollback` pops, and a ``history`` of moves (both keep the
        last HISTORY_LIMIT).
        The write is a compare-and-swap against the pointer read here, so of two concurrent
        promotions exactly one wins; the other raises :class:`RegistryError`. Promoting the
        version already in production changes nothing.

        Args:
            version: a complete version of this family.
            expected: the version that must be in production now (None: nothing promoted);
                by default whatever is current when promote reads the pointer.
            replace_damaged: a damaged pointer (see :meth:`production`) counts as nothing
                promoted and is replaced (an operator's ``squeeze promote VERSION``); its
                history and rollback stack are lost. By default it raises :class:`Damaged`.
        """
        table, _ = self._fetch_all(version)
        pointer, tag = self._pointer(damaged_ok=replace_damaged)
        current = pointer["version"] if pointer else None
        if expected is not CURRENT and current != expected:
            raise RegistryError(
                f"production of {self.family!r} is version {current}, not the expected "
                f"{expected}; someone else promoted: check and retry"
            )
        if current == version:
            return
        previous = [current, *pointer.get("previous", [])] if pointer else []
        new = self._new_pointer(version, table, previous, pointer, "promote")
        if pointer is None and tag is not None:  # production.json was there, and damaged
            new["history"][-1]["replaced_damaged_pointer"] = True
        self._move(new, tag, "promoting")

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
        """Build the pointer document for ``version``; a fresh id makes every move unique.

        ``history`` keeps the last HISTORY_LIMIT moves (``history_dropped`` counts the ones
        let go) and ``previous`` as many versions; each move records its ``promotion_id`` so
        that :meth:`_move` can find it again.
        """
        at, promotion_id = _now(), uuid.uuid4().hex
        old = old or {}
        history = [
            *old.get("history", []),
            {"action": action, "version": version, "at": at, "promotion_id": promotion_id},
        ]
        dropped = max(0, len(history) - HISTORY_LIMIT)
        return {
            "family": self.family,
            "version": version,
            "path": f"versions/{version}",
            "sha256": {name: entry["sha256"] for name, entry in table.items()},
            "promoted_at": at,
            "promotion_id": promotion_id,
            "previous": previous[:HISTORY_LIMIT],
            "history": history[dropped:],
            "history_dropped": old.get("history_dropped", 0) + dropped,
        }


def open_registry(
    url: str, family: str, endpoint_url: str | None = None, base: Path | None = None
) -> Registry:
    """The registry of ``family`` at ``url`` (params.promote: registry, family, endpoint_url).

    A relative local path is taken relative to ``base`` (the workspace), not to the current
    directory, so `squeeze -w DIR status` and the pipeline find the same registry.

    Raises:
        StoreError: ``url`` looks like a URL but is not a valid one (``s3:/bucket``), or the
            endpoint is not an http(s) URL; see squeeze.registry.store.check_location.
    """
    try:
        check_location(url)  # before a typo such as s3:/bucket is joined to base as a folder
    except ValueError as err:
        raise StoreError(f"invalid registry location (promote.registry): {err}") from None
    local = urlsplit(url).scheme not in ("s3", "file")
    if base is not None and local and not Path(url).expanduser().is_absolute():
        url = str(Path(base) / url)
    return Registry(open_store(url, endpoint_url), family)


def registry_of(root: Path, params: Params) -> Registry:
    """The registry params.promote names (registry, family, endpoint_url); a relative local
    path is inside the workspace root."""
    cfg = params.promote
    return open_registry(cfg.registry, cfg.family, cfg.endpoint_url, base=root)
