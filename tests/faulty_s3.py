"""A fault-injecting HTTP proxy in front of an S3 endpoint (moto's server), for tests.

:class:`FaultyS3` listens on 127.0.0.1 and forwards every request, bytes unchanged, to the
upstream endpoint, except those a rule matches ("METHOD /path" containing a string):

- :meth:`FaultyS3.answer`: reply with an S3 error instead of forwarding, a number of times
  (``409 ConditionalRequestConflict``, as AWS answers racing conditional writes);
- :meth:`FaultyS3.strip_conditions`: forward without ``If-Match`` / ``If-None-Match``, so the
  endpoint behaves like a store that ignores them (older MinIO and moto);
- :meth:`FaultyS3.hold`: keep a request unanswered until released, then drop it unforwarded
  (to kill a client in the middle of an upload).

The store under test talks to the proxy as its ``endpoint_url``; moto keeps the real objects.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from squeeze.registry.store import S3Store

CONDITIONS = ("if-match", "if-none-match")
# Headers that belong to one connection, not to the request (RFC 9110 section 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
              "upgrade", "content-length"}  # fmt: skip


@dataclass
class _Answer:
    """Answer matching requests with an S3 error, ``times`` more times."""

    method: str
    match: str
    status: int
    code: str
    times: int


@dataclass
class Held:
    """A request kept unanswered: ``arrived`` is set when it comes; :meth:`release` drops it."""

    method: str
    match: str
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


class FaultyS3:
    """The proxy; use as a context manager (``with FaultyS3(upstream) as proxy:``)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.lock = threading.Lock()
        self.answers: list[_Answer] = []
        self.held: list[Held] = []
        self.stripping = False
        self.seen: list[str] = []  # "METHOD /path [If-Match] [If-None-Match]", in arrival order
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def store(self, prefix: str, bucket: str = "squeeze-test", **kwargs: Any) -> S3Store:
        """An S3Store on ``prefix`` through the proxy that gives up quickly (as S3Endpoint's)."""
        options = {"max_attempts": 2, "connect_timeout": 1.0, "read_timeout": 5.0, **kwargs}
        return S3Store(bucket, prefix, endpoint_url=self.url, **options)

    # -- rules ----------------------------------------------------------------------------

    def answer(
        self, status: int, code: str, match: str, times: int = 1, method: str = "PUT"
    ) -> None:
        """The next ``times`` requests ``method`` whose path contains ``match`` get S3 error
        ``code`` with HTTP ``status``, without reaching the endpoint."""
        with self.lock:
            self.answers.append(_Answer(method, match, status, code, times))

    def strip_conditions(self, on: bool = True) -> None:
        """Forward every request without If-Match / If-None-Match (while ``on``)."""
        with self.lock:
            self.stripping = on

    def hold(self, match: str, method: str = "PUT") -> Held:
        """Keep the next request ``method`` whose path contains ``match`` unanswered until
        released; it is then dropped (never forwarded) and its connection closed."""
        held = Held(method, match)
        with self.lock:
            self.held.append(held)
        return held

    def clear(self) -> None:
        """Drop every rule (held requests are released)."""
        with self.lock:
            for held in self.held:
                held.release()
            self.answers, self.held, self.stripping = [], [], False

    # -- serving --------------------------------------------------------------------------

    def __enter__(self) -> FaultyS3:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # so that "Expect: 100-continue" is answered

            def log_message(self, *args: Any) -> None:  # one line per request otherwise
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        """Forward one request, or apply the first rule that matches it."""
        method, path = request.command, request.path
        body = _read_body(request)
        conditions = [h for h in CONDITIONS if h in request.headers]
        with self.lock:
            self.seen.append(" ".join([method, path, *conditions]))
            answers = [a for a in self.answers if a.method == method and a.match in path]
            answer = next((a for a in answers if a.times > 0), None)
            if answer is not None:
                answer.times -= 1
            held = next((h for h in self.held if not h.arrived.is_set()
                         and h.method == method and h.match in path), None)  # fmt: skip
            strip = self.stripping
        request.close_connection = True
        if held is not None:
            held.arrived.set()
            held.released.wait(timeout=120)
            return  # dropped: the connection closes without an answer
        if answer is not None:
            error = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{answer.code}</Code>"
                     "<Message>injected by the test proxy</Message></Error>").encode()  # fmt: skip
            _reply(request, answer.status, HTTPStatus(answer.status).phrase,
                   [("Content-Type", "application/xml")], error)  # fmt: skip
            return
        dropped = HOP_BY_HOP | (set(CONDITIONS) if strip else set())
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in dropped]
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            # a HEAD answer says how long the object is, though it has no body
            length = response.getheader("Content-Length") if method == "HEAD" else None
            _reply(request, response.status, response.reason, kept, data, length)
        finally:
            conn.close()


def _read_body(request: BaseHTTPRequestHandler) -> bytes:
    """The request's body: Content-Length bytes, or the chunks of a chunked transfer joined."""
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(request.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while request.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(request.rfile.read(size))
            request.rfile.readline()
    return request.rfile.read(int(request.headers.get("Content-Length") or 0))


def _reply(
    request: BaseHTTPRequestHandler,
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    body: bytes,
    length: str | None = None,
) -> None:
    """Send a whole response on ``request``'s connection and mark it to be closed."""
    request.send_response_only(status, reason)
    for name, value in headers:
        request.send_header(name, value)
    request.send_header("Content-Length", length or str(len(body)))
    request.send_header("Connection", "close")
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(body)
