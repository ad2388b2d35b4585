"""A tiny object store: one interface for a local folder and for ``s3://bucket/prefix``.

The registry (and anything else that must work both on a laptop and in production) talks to
a :class:`Store`; :func:`open_store` picks the implementation from the URL. Keys are
``/``-separated paths relative to the store's root, e.g. ``"mnist/versions/3/model.onnx"``.

Besides plain get/put the store offers the two conditional writes that atomic publishing
needs: create-if-absent (:meth:`Store.put_if_absent`) and compare-and-swap on a version tag
(:meth:`Store.put_if_match`). Locally they are built from ``os.link`` and an ``fcntl`` lock;
on S3 they are the ``If-None-Match: *`` / ``If-Match: <etag>`` conditional writes. An S3
endpoint that ignores those headers (older MinIO and moto did) would let two publishers or
promoters overwrite each other, so :class:`S3Store` probes it before its first conditional write
and refuses it (:class:`ConditionsIgnored`). S3 answers ``409 ConditionalRequestConflict`` when
another conditional write to the same key is in flight; the write is then retried with bounded
backoff while the key is unchanged (:class:`Conflict` once that budget is spent).

Locations are checked before anything is opened (:func:`check_location`,
:func:`check_endpoint`): a value that looks like a URL but is not a valid one (``s3:/bucket``,
an endpoint without ``http://``) is refused instead of being taken as a local folder name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from squeeze.config.locations import check_endpoint, check_location

__all__ = [
    "ConditionsIgnored",
    "Conflict",
    "LocalStore",
    "NotFound",
    "S3Store",
    "Store",
    "StoreError",
    "Unavailable",
    "open_store",
]

# Key segments starting with "." are reserved for the local store's temp and lock files, so
# that listing never shows a half-written object.
_HIDDEN = "."

FILE_MODE = 0o644  # what open() gives under the usual umask 022


class StoreError(RuntimeError):
    """An object-store operation failed; the message says what, where and what to do."""


class NotFound(StoreError):
    """The requested key does not exist in the store."""


class Unavailable(StoreError):
    """The store could not answer now (unreachable, timed out, throttling, 5xx): the same
    request may succeed later, unlike a missing key or refused credentials."""


class Conflict(Unavailable):
    """S3 kept answering ``409 ConditionalRequestConflict`` to a conditional write: other
    writers raced on the same key, the key did not change, and the write did not land. Unlike
    a refused condition (the key moved on), the same write may succeed if tried again later."""


class ConditionsIgnored(StoreError):
    """The S3 endpoint accepts ``If-None-Match``/``If-Match`` writes but does not enforce them,
    so concurrent publishers and promoters would silently overwrite each other there."""


def _check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise :class:`StoreError`.

    Rejecting ``..``, absolute paths and hidden segments keeps a local store from writing
    outside its root and keeps temp/lock files out of the key space.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key {key!r}: use a relative 'a/b/c' path")
    if any(p.startswith(_HIDDEN) for p in parts):
        raise StoreError(f"invalid store key {key!r}: segments starting with '.' are reserved")
    return key


def _sha256(data: bytes) -> str:
    """Hex sha256 of ``data``; the local store's version tag."""
    return hashlib.sha256(data).hexdigest()


class Stat(NamedTuple):
    """One key of a listing and what tells its content apart without reading it."""

    key: str
    size: int  # bytes
    tag: str  # changes when the content does: S3's ETag, a local file's mtime in ns


class Store(ABC):
    """Minimal object store used by the registry; see the module docstring."""

    url: str

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the content of ``key``; raise :class:`NotFound` if it does not exist."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` unconditionally; readers see the old or the new content, never half."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Atomically create ``key``; return False (and write nothing) if it already exists.

        Callers that rely on exclusivity must write unique content (e.g. include a random
        token): a write whose acknowledgement was lost is recognised by its content.
        """

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str | None) -> bool:
        """Compare-and-swap: write only if the current tag of ``key`` equals ``etag``.

        ``etag=None`` means the key must not exist yet. Returns False when the key has
        moved on since the caller read it; the caller should re-read and decide again.
        """

    @abstractmethod
    def get_with_tag(self, key: str) -> tuple[bytes, str]:
        """Return the content of ``key`` and the version tag to pass to ``put_if_match``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Return all keys that start with ``prefix`` (a plain string prefix), sorted."""

    def list_stats(self, prefix: str = "") -> list[Stat]:
        """The keys of :meth:`list` with their sizes and tags, sorted, so that a caller can
        tell whether anything changed without reading the objects (S3: one listing request per
        1000 keys). This default reads every object (tag: its sha256); stores override it."""
        stats = []
        for key in self.list(prefix):
            data = self.get(key)
            stats.append(Stat(key, len(data), _sha256(data)))
        return stats

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Return whether ``key`` exists."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a key that does not exist is not an error."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class LocalStore(Store):
    """A store rooted at a local folder.

    Writes go to a temp file in the target's folder and are renamed into place, so a crash
    never leaves a partial object under a real key. Compare-and-swap holds an exclusive
    ``fcntl.flock`` on a per-key lock file, which serialises writers across threads and
    processes on one machine (not across NFS clients).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        """Write ``data`` to a fsynced hidden temp file next to ``path`` and return it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_HIDDEN}{path.name}.", suffix=".tmp")
        try:
            # mkstemp makes the file private (0600); a stored model is meant to be read by
            # others (a server running as another user), as a file written with open() would be
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        """Hold an exclusive lock for ``path``; each call opens its own descriptor, so the
        lock excludes other threads of this process as well as other processes."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.parent / f"{_HIDDEN}{path.name}.lock"
        with open(lock, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{key!r} not found in {self.url}") from None
        except OSError as err:
            raise StoreError(f"cannot read {key!r} from {self.url}: {err}") from err

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            os.replace(self._write_temp(path, data), path)
        except OSError as err:
            raise StoreError(
                f"cannot write {key!r} to {self.url}: {err}; check the folder is writable"
            ) from err

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            tmp = self._write_temp(path, data)
            try:
                # link() fails if the name exists and publishes a complete file if not.
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create {key!r} in {self.url}: {err}") from err

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> bool:
        path = self._path(key)
        try:
            with self._locked(path):
                if etag is None:
                    # link() also excludes put_if_absent callers, who do not take the lock.
                    return self.put_if_absent(key, data)
                try:
                    current = _sha256(path.read_bytes())
                except FileNotFoundError:
                    return False
                if current != etag:
                    return False
                self.put(key, data)
                return True
        except OSError as err:
            raise StoreError(f"cannot update {key!r} in {self.url}: {err}") from err

    def get_with_tag(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)
        return data, _sha256(data)

    def list(self, prefix: str = "") -> list[str]:
        # Walk only the deepest folder the prefix pins down, then filter by string prefix.
        folders = prefix.split("/")[:-1]
        if any(p in ("", ".", "..") for p in folders):
            raise StoreError(f"invalid list prefix {prefix!r}: use a relative 'a/b/' path")
        start = self.root.joinpath(*folders)
        if not start.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(_HIDDEN)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if not name.startswith(_HIDDEN) and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def list_stats(self, prefix: str = "") -> list[Stat]:
        stats = []
        for key in self.list(prefix):
            try:
                found = self._path(key).stat()
            except OSError as err:
                raise StoreError(f"cannot stat {key!r} in {self.url}: {err}") from err
            stats.append(Stat(key, found.st_size, str(found.st_mtime_ns)))
        return stats

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise StoreError(f"cannot delete {key!r} from {self.url}: {err}") from err
        # Drop the folders the key leaves empty (a lock file keeps its folder: harmless).
        for folder in path.parents:
            if folder == self.root or not folder.is_relative_to(self.root):
                break
            try:
                folder.rmdir()
            except OSError:
                break

    def put_all(self, files: dict[str, bytes]) -> None:
        """Write several keys so that either every one of them takes its new content or, if
        anything fails, none changes (pull-production writes model.onnx and card.json so).

        Every file is first written to a hidden temp file beside its key; only then are they
        renamed into place, one by one. If a rename fails, the keys already renamed get their
        old content back (kept meanwhile as a hidden hard link) or are removed if they did not
        exist, and folders this call created are removed again. A key that exists as anything
        but a regular file (a folder) is refused before anything is written. Readers may see
        some keys new and some old while the renames run, never a half-written file.

        Raises:
            StoreError: naming the key that could not be written; nothing was changed.
        """
        paths = {key: self._path(key) for key in files}
        for key, path in paths.items():
            if path.exists() and not path.is_file():
                raise StoreError(
                    f"cannot write {key!r} to {self.url}: {path} exists and is not a file "
                    "(a folder?); move it away and retry. Nothing was changed"
                )
        # folders this call would create, removed again if it fails
        parents = {folder for path in paths.values() for folder in (path.parent, *path.parents)}
        created = {folder for folder in parents if not folder.exists()}
        temps: dict[str, Path] = {}
        backups: dict[str, Path] = {}
        renamed: list[str] = []
        key = ""
        try:
            for key, path in paths.items():
                temps[key] = self._write_temp(path, files[key])
            for key, path in paths.items():
                if path.is_file():
                    backups[key] = path.with_name(f"{_HIDDEN}{path.name}.{uuid.uuid4().hex}.old")
                    os.link(path, backups[key])
            for key, path in paths.items():
                os.replace(temps[key], path)
                renamed.append(key)
        except OSError as err:
            for done in reversed(renamed):
                if done in backups:
                    os.replace(backups.pop(done), paths[done])
                else:
                    paths[done].unlink(missing_ok=True)
            for leftover in temps.values():
                leftover.unlink(missing_ok=True)
            for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise StoreError(
                f"cannot write {key!r} to {self.url}: {err}; nothing was changed"
            ) from err
        finally:
            for leftover in (*temps.values(), *backups.values()):
                leftover.unlink(missing_ok=True)


def _redact(url: str | None) -> str:
    """Drop any ``user:password@`` part from an endpoint URL before it goes into a message."""
    if not url:
        return "the default AWS endpoint"
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "403",
}
# A conditional write refused because its condition is false (the key moved on): 412.
_REFUSED_CODES = {"PreconditionFailed", "412"}
# 409: S3 saw another conditional write to the same key at the same moment and did not apply
# ours (AWS: re-read the ETag and retry). OperationAborted is the older name of that answer.
_CONFLICT_CODES = {"ConditionalRequestConflict", "OperationAborted", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
# Throttling and server-side failures: the request was fine, S3 could not serve it now (the codes
# botocore's "standard" retry mode retries as transient or throttling; any 5xx status counts too).
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
    "BandwidthLimitExceeded", "429",
}  # fmt: skip

# Every S3 request: MAX_ATTEMPTS tries in all (botocore "standard" retries, with a random backoff
# of up to 1 s, then 2 s, between them), each waiting CONNECT_TIMEOUT_S for a TCP connection and
# READ_TIMEOUT_S for each read of the answer. So an endpoint that is down gives up within
# 3 x 2 s + 3 s, and one that accepts connections but never answers within 3 x 4 s + 3 s = 15 s
# (about 13 s on average), instead of botocore's 4 x 60 s. S3 answers a request in well under
# a second; a big object streams in many reads, each timed on its own.
MAX_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 4.0
# Waits before re-trying a conditional write that got 409 while the key had not changed, with
# +-50% jitter so racing writers spread out: 5 retries over about 3 s, then Conflict.
CONFLICT_BACKOFF_S = (0.1, 0.2, 0.4, 0.8, 1.6)
# Where S3Store writes (and deletes) its probe objects, under the store's prefix.
PROBE_FOLDER = "_squeeze/probes"
# An ETag no object has: If-Match with it must be refused.
_NO_SUCH_TAG = '"' + "0" * 32 + '"'
# What one conditional PUT came to.
_WRITTEN, _REFUSED, _CONFLICT = "written", "refused", "conflict"


class S3Store(Store):
    """A store rooted at ``s3://bucket/prefix`` on AWS S3 or any S3-compatible endpoint.

    Before its first conditional write the store checks once that the endpoint enforces
    conditional writes (see :meth:`check_conditional_writes`), and refuses it if not. Read-only
    use (status, pull) never writes the probe, so read-only credentials keep working.

    Args:
        bucket: bucket name.
        prefix: key prefix inside the bucket ("" for the bucket root).
        endpoint_url: e.g. ``http://127.0.0.1:9000`` for MinIO or moto; None for AWS.
        max_attempts: total attempts per request (botocore "standard" retry mode).
        connect_timeout: seconds to wait for a TCP connection.
        read_timeout: seconds to wait for each socket read; with ``max_attempts`` it bounds how
            long a silent endpoint can hold a command (see MAX_ATTEMPTS).
        client: a ready boto3 S3 client (tests); built from the arguments when omitted.

    Raises:
        StoreError: ``endpoint_url`` is not an http(s) URL (see :func:`check_endpoint`).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        client: Any | None = None,
    ) -> None:
        try:
            self.endpoint_url = check_endpoint(endpoint_url)
        except ValueError as err:
            raise StoreError(str(err)) from None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.budget = (
            f"{max_attempts} attempts, {connect_timeout:g} s to connect and {read_timeout:g} s "
            "per read each"
        )
        self._client = client or self._make_client(max_attempts, connect_timeout, read_timeout)
        self._probe_lock = threading.Lock()
        self._conditions_checked = False

    def _make_client(self, max_attempts: int, connect_timeout: float, read_timeout: float) -> Any:
        """Build the boto3 client; credentials come from the standard AWS chain."""
        import boto3  # imported here so that importing squeeze stays cheap
        from botocore.config import Config

        config = Config(
            # total_max_attempts counts the first try (botocore's max_attempts does not)
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Custom endpoints (MinIO, moto) rarely have per-bucket DNS names.
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, err: Exception, action: str, key: str | None) -> StoreError:
        """Translate a botocore exception into a :class:`StoreError` that names the bucket,
        key and endpoint and says what to check. Never includes credentials."""
        from botocore.exceptions import (
            ClientError,
            HTTPClientError,
            IncompleteReadError,
            NoCredentialsError,
            ReadTimeoutError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        where = f"{self.url}/{key}" if key else self.url
        endpoint = _redact(self.endpoint_url)
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES and key is not None:
                return NotFound(f"{key!r} not found in {self.url}")
            if code == "NoSuchBucket":
                return StoreError(
                    f"S3 bucket {self.bucket!r} does not exist at {endpoint} ({where}): "
                    "create it or fix the store URL / endpoint_url"
                )
            if code in _AUTH_CODES:
                return StoreError(
                    f"S3 refused the credentials for {where} at {endpoint} ({code}) while "
                    f"trying to {action}: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                    "your AWS profile, and that it may access this bucket"
                )
            message = err.response.get("Error", {}).get("Message", "")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in _CONFLICT_CODES:
                return Conflict(
                    f"S3 at {endpoint} answered 409 {code} to {action} {where}: another "
                    "conditional write to it was in flight; try again"
                )
            if code in _TRANSIENT_CODES or status >= 500:
                return Unavailable(
                    f"S3 at {endpoint} could not {action} {where} now ({code or status} "
                    f"{message}): throttled or unavailable, try again later"
                )
            return StoreError(f"S3 could not {action} {where} at {endpoint}: {code} {message}")
        if isinstance(err, NoCredentialsError):
            return StoreError(
                f"no AWS credentials found for {where}: set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or configure an AWS profile"
            )
        if isinstance(err, ReadTimeoutError):
            return Unavailable(
                f"S3 endpoint {endpoint} accepted the connection but did not answer while "
                f"trying to {action} {where} (gave up after {self.budget}): check that "
                "endpoint_url names a working S3 server"
            )
        if isinstance(err, HTTPClientError | BotoConnectionError | IncompleteReadError):
            return Unavailable(
                f"cannot reach S3 endpoint {endpoint} for {where} while trying to {action} "
                f"({type(err).__name__}; gave up after {self.budget}): check endpoint_url / "
                "network"
            )
        return StoreError(f"S3 could not {action} {where} at {endpoint}: {err}")

    @contextlib.contextmanager
    def _translated(self, action: str, key: str | None = None) -> Iterator[None]:
        """Re-raise any botocore failure inside the block as a :class:`StoreError`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as err:
            raise self._error(err, action, key) from err

    # -- conditional writes -------------------------------------------------------------

    def _put_once(self, key: str, data: bytes, **condition: str) -> str:
        """One conditional put_object: _WRITTEN, _REFUSED (412, or 404 for If-Match on a
        missing key: it moved away) or _CONFLICT (409). Other failures raise StoreError."""
        from botocore.exceptions import ClientError

        with self._translated("write", key):
            try:
                self._client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, **condition
                )
                return _WRITTEN
            except ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                if code in _REFUSED_CODES | _MISSING_CODES:
                    return _REFUSED
                if code in _CONFLICT_CODES:
                    return _CONFLICT
                raise
        raise AssertionError("unreachable")  # pragma: no cover - _translated re-raises

    def _holds(self, key: str, data: bytes) -> bool:
        """Whether ``key`` holds exactly ``data`` now (False when it does not exist)."""
        try:
            return self.get(key) == data
        except NotFound:
            return False

    def _tag(self, key: str) -> str | None:
        """The current ETag of ``key``, None when it does not exist."""
        try:
            with self._translated("check", key):
                return self._client.head_object(Bucket=self.bucket, Key=self._key(key))["ETag"]
        except NotFound:
            return None

    def check_conditional_writes(self) -> None:
        """Refuse an endpoint that does not enforce conditional writes; once per store.

        Writes a probe object under ``PROBE_FOLDER/<random>`` with ``If-None-Match: *`` twice
        (the second must be refused) and once with ``If-Match`` on a tag no object has (must be
        refused), then deletes it: four requests before the first conditional write. Credentials
        that may not delete leave the few-byte probe behind (it is outside every family).

        Raises:
            ConditionsIgnored: naming the endpoint and the header it ignored.
        """
        with self._probe_lock:
            if self._conditions_checked:
                return
            probe = f"{PROBE_FOLDER}/{uuid.uuid4().hex}"
            try:
                self._put_once(probe, b"probe 1", IfNoneMatch="*")
                again = self._put_once(probe, b"probe 2", IfNoneMatch="*")
                stale = self._put_once(probe, b"probe 3", IfMatch=_NO_SUCH_TAG)
            finally:
                with contextlib.suppress(StoreError):
                    self.delete(probe)
            ignored = [header for header, outcome in (("If-None-Match", again), ("If-Match", stale))
                       if outcome == _WRITTEN]  # fmt: skip
            if ignored:
                raise ConditionsIgnored(
                    f"S3 endpoint {_redact(self.endpoint_url)} ignores {' and '.join(ignored)} "
                    f"on conditional writes (a probe under {self.url}/{PROBE_FOLDER}/ that had "
                    "to be refused was written): concurrent publishes and promotions would "
                    "overwrite each other there. Use a store that enforces conditional writes "
                    "(AWS S3, or upgrade MinIO / the S3 server), or a local registry folder"
                )
            self._conditions_checked = True

    def _conditional_put(self, key: str, data: bytes, etag: str | None) -> bool:
        """Write ``key`` only if its tag is ``etag`` (None: only if absent); see put_if_match.

        A refused write (412) whose key now holds exactly ``data`` counts as ours: botocore
        retries a request whose response was lost, and the retry then sees our own write. A 409
        means S3 did not apply the write because another conditional write raced it: the key is
        re-read, and while its tag is still ``etag`` the write is retried after a backoff
        (CONFLICT_BACKOFF_S); once the key has moved, the outcome is decided like a 412.

        Raises:
            Conflict: 409 on every try while the key stayed unchanged.
            ConditionsIgnored: the endpoint does not enforce conditional writes.
        """
        self.check_conditional_writes()
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        for delay in (*CONFLICT_BACKOFF_S, None):
            outcome = self._put_once(key, data, **condition)
            if outcome == _WRITTEN:
                return True
            if outcome == _REFUSED or self._tag(key) != etag:
                return self._holds(key, data)
            if delay is not None:  # 409 and the key unchanged: the same write may land now
                time.sleep(delay * random.uniform(0.5, 1.5))
        raise Conflict(
            f"S3 at {_redact(self.endpoint_url)} answered 409 ConditionalRequestConflict to "
            f"every conditional write of {self.url}/{key} ({len(CONFLICT_BACKOFF_S) + 1} tries "
            "over about 3 s) while the key stayed unchanged: other writers keep racing on it; "
            "nothing was written, try again"
        )

    # -- the Store interface ------------------------------------------------------------

    def get(self, key: str) -> bytes:
        return self.get_with_tag(key)[0]

    def put(self, key: str, data: bytes) -> None:
        with self._translated("write", key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, None)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> bool:
        return self._conditional_put(key, data, etag)

    def get_with_tag(self, key: str) -> tuple[bytes, str]:
        with self._translated("read", key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), response["ETag"]

    def list(self, prefix: str = "") -> list[str]:
        return [stat.key for stat in self.list_stats(prefix)]

    def list_stats(self, prefix: str = "") -> list[Stat]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        stats = []
        with self._translated("list", prefix or None):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                stats.extend(
                    Stat(o["Key"][strip:], int(o["Size"]), o["ETag"])
                    for o in page.get("Contents", [])
                    # a zero-length "folder marker" of the prefix itself maps to the empty key
                    if o["Key"][strip:]
                )
        return sorted(stats)

    def exists(self, key: str) -> bool:
        return self._tag(key) is not None

    def delete(self, key: str) -> None:
        with self._translated("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_store(url: str, endpoint_url: str | None = None) -> Store:
    """Open the store at ``url``: ``s3://bucket[/prefix]`` or a local path / ``file://`` URL.

    ``endpoint_url`` selects an S3-compatible endpoint (MinIO, moto) and is ignored for local
    stores. Opening does not touch the network or the disk; the first operation does.

    Raises:
        StoreError: ``url`` looks like a URL but is not a valid one (:func:`check_location`),
            or ``endpoint_url`` of an S3 store is not an http(s) URL (:func:`check_endpoint`).
    """
    try:
        check_location(url)
    except ValueError as err:
        raise StoreError(f"invalid store location: {err}") from None
    parts = urlsplit(url)
    if parts.scheme == "s3":
        return S3Store(parts.netloc, parts.path, endpoint_url=endpoint_url)
    if parts.scheme == "file":
        return LocalStore(parts.path)
    return LocalStore(url)
