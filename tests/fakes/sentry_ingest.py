"""A fake Sentry ingest on 127.0.0.1 that records the envelopes the real SDK sends it."""

from __future__ import annotations

import gzip
import io
import json
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

__all__ = [
    "ReceivedEnvelope",
    "ReceivedItem",
    "SentryIngest",
    "parse_envelope",
    "sentry_ingests",
]

_PATH = re.compile(r"^/api/(?P<project_id>\d+)/(?P<endpoint>envelope|store)/$")


@dataclass
class ReceivedItem:
    """One envelope item: its headers and its payload, parsed as JSON when it is JSON."""

    headers: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str | None:
        return self.headers.get("type")

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.payload)
        except ValueError:
            return None


@dataclass
class ReceivedEnvelope:
    """One request as the ingest received it: ``raw`` as sent, ``body`` decompressed."""

    project_id: int
    endpoint: str
    request_headers: dict[str, str]
    raw: bytes
    body: bytes
    headers: dict[str, Any]
    items: list[ReceivedItem]

    @property
    def item_types(self) -> list[str | None]:
        return [item.type for item in self.items]


def parse_envelope(body: bytes) -> tuple[dict[str, Any], list[ReceivedItem]]:
    """Parse Sentry's envelope format: a header line, then item headers each followed by a payload.

    An item's payload is ``length`` bytes when its headers say so, else the rest of its line.
    """
    stream = io.BytesIO(body)
    headers = json.loads(stream.readline() or b"{}")
    items = []
    while True:
        line = stream.readline()
        if not line:
            break
        if not line.strip():
            continue
        item_headers = json.loads(line)
        length = item_headers.get("length")
        if length is None:
            payload = stream.readline().rstrip(b"\n")
        else:
            payload = stream.read(length)
            if stream.read(1) not in (b"\n", b""):
                stream.seek(-1, io.SEEK_CUR)
        items.append(ReceivedItem(item_headers, payload))
    return headers, items


def _decompress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        try:
            return zlib.decompress(data)
        except zlib.error:  # raw deflate, without the zlib wrapper
            return zlib.decompress(data, -zlib.MAX_WBITS)
    if encoding == "br":
        import brotli  # only when the SDK found it installed, which is when it uses br

        return brotli.decompress(data)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class SentryIngest:
    """A Sentry ingest on a free port; use as a context manager, or start() and stop().

    Accepts POST ``/api/<project_id>/envelope/`` (and the legacy ``/store/``) and
    records every request as a :class:`ReceivedEnvelope` in :attr:`envelopes`.
    """

    def __init__(self, project_id: int = 1, public_key: str = "publickey") -> None:
        self.project_id = project_id
        self.public_key = public_key
        self.envelopes: list[ReceivedEnvelope] = []
        self.retry_after: int | None = None  # see rate_limit()
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the ingest is not started"
        return self._server.server_address[1]

    @property
    def dsn(self) -> str:
        return f"http://{self.public_key}@127.0.0.1:{self.port}/{self.project_id}"

    @property
    def items(self) -> list[ReceivedItem]:
        with self._changed:
            return [item for envelope in self.envelopes for item in envelope.items]

    @property
    def item_types(self) -> list[str | None]:
        return [item.type for item in self.items]

    def items_of_type(self, item_type: str) -> list[ReceivedItem]:
        return [item for item in self.items if item.type == item_type]

    @property
    def received_bytes(self) -> list[bytes]:
        """Every request body, both as it came over the wire and decompressed."""
        with self._changed:
            return [data for envelope in self.envelopes for data in (envelope.raw, envelope.body)]

    def wait_for(self, predicate: Callable[[SentryIngest], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` is true; return whether it became true in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def rate_limit(self, retry_after: int | None = 60) -> None:
        """Answer from now on with 429 and ``Retry-After`` (``None``: accept again).

        Requests are still recorded.
        """
        self.retry_after = retry_after

    def clear(self) -> None:
        with self._changed:
            self.envelopes.clear()

    def start(self) -> SentryIngest:
        handler = type("Handler", (_IngestHandler,), {"ingest": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SentryIngest:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, envelope: ReceivedEnvelope) -> None:
        with self._changed:
            self.envelopes.append(envelope)
            self._changed.notify_all()


class _IngestHandler(BaseHTTPRequestHandler):
    ingest: SentryIngest

    def do_POST(self) -> None:
        match = _PATH.match(urlsplit(self.path).path)
        if match is None:
            self._reply(404, {"detail": "not found"})
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = _decompress(raw, self.headers.get("Content-Encoding", ""))
            if match["endpoint"] == "store":
                headers, items = {}, [ReceivedItem({"type": "event"}, body)]
            else:
                headers, items = parse_envelope(body)
        except (ValueError, OSError, zlib.error, ImportError) as e:
            self._reply(400, {"detail": f"{type(e).__name__}: {e}"})
            return
        # Recorded before replying, so the SDK's flush() returning means it is recorded.
        self.ingest._record(
            ReceivedEnvelope(
                project_id=int(match["project_id"]),
                endpoint=match["endpoint"],
                request_headers=dict(self.headers.items()),
                raw=raw,
                body=body,
                headers=headers,
                items=items,
            )
        )
        retry_after = self.ingest.retry_after
        if retry_after is not None:
            self._reply(429, {"detail": "rate limited"}, {"Retry-After": str(retry_after)})
        else:
            self._reply(200, {"id": headers.get("event_id")})

    def _reply(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


@pytest.fixture
def sentry_ingests() -> Iterator[Callable[..., SentryIngest]]:
    """Yield a factory that starts a :class:`SentryIngest`; all are stopped afterwards.

    ``upstream, relay = sentry_ingests(), sentry_ingests(project_id=2)``
    """
    started: list[SentryIngest] = []

    def start(project_id: int = 1, public_key: str = "publickey") -> SentryIngest:
        ingest = SentryIngest(project_id, public_key).start()
        started.append(ingest)
        return ingest

    yield start
    for ingest in started:
        ingest.stop()
