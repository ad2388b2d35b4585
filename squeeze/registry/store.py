"""A tiny object store: one interface for a local folder and for ``s3://bucket/prefix``.

The registry (and anything else that must work both on a laptop and in production) talks to
a :class:`Store`; :func:`open_store` picks the implementation from the URL. Keys are
``/``-separated paths relative to the store's root, e.g. ``"mnist/versions/3/model.onnx"``.

Besides plain get/put the store offers the two conditional writes that atomic publishing
needs: create-if-absent (:meth:`Store.put_if_absent`) and compare-and-swap on a version tag
(:meth:`Store.put_if_match`). Locally they are built from ``os.link`` and an ``fcntl`` lock;
on S3 they are the ``If-None-Match: *`` / ``If-Match: <etag>`` conditional writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["LocalStore", "NotFound", "S3Store", "Store", "StoreError", "Unavailable", "open_store"]

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

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Return whether ``key`` exists."""

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

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def _redact(url: str | None) -> str:
    """Drop any ``user:password@`` part from an endpoint URL before it goes into a message."""
    if not url:
        return "the default AWS endpoint"
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# S3 error codes that mean "your credentials or permissions are wrong".
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "403",
}
# Conditional-write refusals: 412 when the condition is false; 409 when S3 saw a concurrent
# conditional write on the same key (AWS asks callers to re-read and retry).
_CONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
# Throttling and server-side failures: the request was fine, S3 could not serve it now (the codes
# botocore's "standard" retry mode retries as transient or throttling; any 5xx status counts too).
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
    "BandwidthLimitExceeded", "429",
}  # fmt: skip


class S3Store(Store):
    """A store rooted at ``s3://bucket/prefix`` on AWS S3 or any S3-compatible endpoint.

    Args:
        bucket: bucket name.
        prefix: key prefix inside the bucket ("" for the bucket root).
        endpoint_url: e.g. ``http://127.0.0.1:9000`` for MinIO or moto; None for AWS.
        max_attempts: total attempts per request (botocore "standard" retry mode).
        connect_timeout: seconds to wait for a TCP connection; kept short so a dead endpoint
            fails within seconds instead of hanging a pipeline run.
        read_timeout: seconds to wait for each socket read.
        client: a ready boto3 S3 client (tests); built from the arguments when omitted.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        max_attempts: int = 3,
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
        client: Any | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client or self._make_client(max_attempts, connect_timeout, read_timeout)

    def _make_client(self, max_attempts: int, connect_timeout: float, read_timeout: float) -> Any:
        """Build the boto3 client; credentials come from the standard AWS chain."""
        import boto3  # imported here so that importing squeeze stays cheap
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
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
        if isinstance(err, HTTPClientError | BotoConnectionError | IncompleteReadError):
            return Unavailable(
                f"cannot reach S3 endpoint {endpoint} for {where} while trying to {action} "
                f"({type(err).__name__}): check endpoint_url / network"
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

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        """put_object with an S3 precondition; False when the precondition does not hold.

        A refused write whose current content is exactly ``data`` counts as ours: botocore
        retries a request whose response was lost, and the retry then sees our own write.
        """
        from botocore.exceptions import ClientError

        try:
            with self._translated("write", key):
                try:
                    self._client.put_object(
                        Bucket=self.bucket, Key=self._key(key), Body=data, **condition
                    )
                    return True
                except ClientError as err:
                    code = str(err.response.get("Error", {}).get("Code", ""))
                    # If-Match on a missing key answers 404: the key moved (was deleted).
                    if code not in _CONDITION_CODES | _MISSING_CODES:
                        raise
            return self.get(key) == data
        except NotFound:
            return False

    def get(self, key: str) -> bytes:
        return self.get_with_tag(key)[0]

    def put(self, key: str, data: bytes) -> None:
        with self._translated("write", key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> bool:
        if etag is None:
            return self.put_if_absent(key, data)
        return self._conditional_put(key, data, IfMatch=etag)

    def get_with_tag(self, key: str) -> tuple[bytes, str]:
        with self._translated("read", key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), response["ETag"]

    def list(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        with self._translated("list", prefix or None):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                # A zero-length "folder marker" object would map to the empty key; skip it.
                keys.extend(o["Key"][strip:] for o in page.get("Contents", []) if o["Key"][strip:])
        return sorted(keys)

    def exists(self, key: str) -> bool:
        try:
            with self._translated("check", key):
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except NotFound:
            return False


def open_store(url: str, endpoint_url: str | None = None) -> Store:
    """Open the store at ``url``: ``s3://bucket[/prefix]`` or a local path / ``file://`` URL.

    ``endpoint_url`` selects an S3-compatible endpoint (MinIO, moto) and is ignored for local
    stores. Opening does not touch the network or the disk; the first operation does.
    """
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StoreError(f"invalid store URL {url!r}: expected s3://bucket/prefix")
        return S3Store(parts.netloc, parts.path, endpoint_url=endpoint_url)
    if parts.scheme == "file":
        return LocalStore(parts.path)
    if parts.scheme and len(parts.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise StoreError(f"unsupported store URL {url!r}: use a local path or s3://bucket/prefix")
    return LocalStore(url)
