"""Integration fixtures: a real S3 HTTP endpoint (moto's threaded server) on 127.0.0.1.

``s3_endpoint`` is started once per session with fake credentials and one bucket; tests get
a fresh key prefix from ``s3_prefix`` so they never see each other's objects. The endpoint
can be stopped and restarted on the same port (moto keeps its data in-process, so objects
survive a restart), can switch on credential checking for one block, and can answer chosen
requests with an S3 error (throttling, a refusal) for one block.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from squeeze.registry.store import S3Store

BUCKET = "squeeze-test"


class _Http10Handler(MotoRequestHandler):
    """Close the connection after every response.

    With HTTP/1.1 keep-alive, connections that boto3 holds open keep being served by their
    handler threads after the server shuts down, so "stopping" moto would not cut off a
    client that already talked to it. HTTP/1.0 makes a stopped endpoint really unreachable.
    """

    protocol_version = "HTTP/1.0"


class _AtomicConditionalPuts:
    """WSGI wrapper that serialises conditional PUTs (If-Match / If-None-Match).

    moto 5.2.5 evaluates those headers and then writes without holding a lock, so two
    concurrent conditional PUTs to one key can in principle both pass; AWS S3 and MinIO
    evaluate the condition atomically with the write. Serialising conditional PUTs makes
    moto behave like them, so the concurrency tests exercise our code, not moto's race.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
        if environ.get("REQUEST_METHOD") == "PUT" and conditional:
            with self.lock:  # moto mutates its backend before returning the response
                return self.app(environ, start_response)
        return self.app(environ, start_response)


class _Faults:
    """WSGI wrapper that, while a rule is set, answers requests matching it with an S3 error
    instead of passing them to moto (a given number of times) and logs each as "METHOD /path"."""

    def __init__(self) -> None:
        self.app: Callable[..., Iterable[bytes]] | None = None
        self.lock = threading.Lock()
        self.rule: tuple[int, str, int, str] | None = None  # status, code, times left, match
        self.seen: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}"
        with self.lock:
            if self.rule is not None:
                self.seen.append(request)
            status, code, left, match = self.rule or (0, "", 0, "")
            fail = left > 0 and match in request
            if fail:
                self.rule = (status, code, left - 1, match)
        if not fail:
            return self.app(environ, start_response)
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                f"<Message>injected by the test</Message></Error>").encode()  # fmt: skip
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]


class _MotoServer(ThreadedMotoServer):
    """ThreadedMotoServer with the adaptations above and a stop that frees the port."""

    faults: _Faults

    def _server_entry(self) -> None:
        # Mirrors ThreadedMotoServer._server_entry (moto 5.2.5) with our app and handler.
        self.faults.app = _AtomicConditionalPuts(DomainDispatcherApplication(create_backend_app))
        app = self.faults
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=_Http10Handler
        )
        self._server_ready_event.set()
        self._server.serve_forever(poll_interval=0.05)  # so stop() returns quickly

    def stop(self) -> None:
        super().stop()
        if self._server is not None:
            self._server.server_close()  # release the listening socket: refuse connections


@dataclass
class S3Endpoint:
    """A running moto S3 endpoint: ``url``, ``bucket`` and controls for fault injection."""

    host: str = "127.0.0.1"
    port: int = 0
    bucket: str = BUCKET
    _server: _MotoServer | None = field(default=None, repr=False)
    _faults: _Faults = field(default_factory=_Faults, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Start (or restart) the server; a restart reuses the port, so URLs stay valid."""
        if self._server is None:
            self._server = _MotoServer(ip_address=self.host, port=self.port, verbose=False)
            self._server.faults = self._faults
            self._server.start()
            self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        """Stop the server: every request now fails with "connection refused"."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        """A plain boto3 client on this endpoint (for setup and for tampering with objects)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url)

    def store(self, prefix: str, **kwargs: Any) -> S3Store:
        """An S3Store on ``prefix`` that gives up quickly, so fault tests stay fast."""
        options = {"max_attempts": 2, "connect_timeout": 1.0, "read_timeout": 5.0, **kwargs}
        return S3Store(self.bucket, prefix, endpoint_url=self.url, **options)

    def _set_auth_after(self, count: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            # moto reads the raw body; a form content type would make Flask consume it.
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    @contextlib.contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """Inside the block moto verifies signatures against its IAM users, of which there
        are none, so any credentials are refused (moto accepts anything by default)."""
        self._set_auth_after("0")
        try:
            yield
        finally:
            self._set_auth_after("inf")

    @contextlib.contextmanager
    def failing(self, status: int, code: str, times: int, match: str = "") -> Iterator[list[str]]:
        """Inside the block the next ``times`` requests whose "METHOD /path" contains ``match``
        get S3 error ``code`` with HTTP ``status`` (503 SlowDown, 403 AccessDenied, ...). Yields
        the list of requests the endpoint receives in the block, answered or refused."""
        with self._faults.lock:
            self._faults.rule, self._faults.seen = (status, code, times, match), []
        try:
            yield self._faults.seen
        finally:
            with self._faults.lock:
                self._faults.rule = None


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """A moto S3 server on 127.0.0.1 with fake credentials and the bucket ``squeeze-test``."""
    with pytest.MonkeyPatch.context() as mp:
        # Fake credentials, and keep the developer's real AWS config out of the tests.
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        endpoint = S3Endpoint()
        endpoint.start()
        try:
            endpoint.client().create_bucket(Bucket=endpoint.bucket)
            yield endpoint
        finally:
            endpoint.stop()


@pytest.fixture
def s3_prefix(s3_endpoint: S3Endpoint) -> str:
    """A fresh key prefix in the test bucket; also restarts the endpoint if a previous test
    stopped it and failed before starting it again."""
    s3_endpoint.start()
    return f"test-{uuid.uuid4().hex[:12]}"


class StopBeforePointerMove:
    """Store proxy that stops the endpoint right before production.json is written."""

    def __init__(self, store: S3Store, endpoint: S3Endpoint) -> None:
        self._store, self._endpoint = store, endpoint

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> bool:
        self._endpoint.stop()
        return self._store.put_if_match(key, data, etag)


def artifacts_of(flow_run_id: Any) -> dict[str, Any]:
    """The artifacts a flow run filed with the API server, by key."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    only_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        return {a.key: a for a in client.read_artifacts(artifact_filter=only_run)}
