"""The HTTP machinery the fake LLM provider servers share: real sockets, recording, scripted replies.

A provider fake subclasses ``FakeHTTPServer`` and supplies only what differs: its routes
(``_direct_answer``, ``_streams``), its JSON shapes (``_completion``), its event stream
(``_events``) and its error shape (its own ``reply_error`` and ``_error_payload``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Self

__all__ = [
    "EchoReply",
    "Events",
    "FakeHTTPServer",
    "HTTPListener",
    "RawReply",
    "RecordedRequest",
    "RequestHandler",
    "StreamReply",
    "TextReply",
    "message_text",
    "sse",
    "word_chunks",
    "words",
]


@dataclass
class RecordedRequest:
    """One request as the fake server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    #: When it arrived (time.monotonic): which requests were under way together.
    received_at: float = field(default_factory=time.monotonic, compare=False)


# Replies are keyword-only so that providers can add their own fields in subclasses.


@dataclass(kw_only=True)
class RawReply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(kw_only=True)
class TextReply:
    text: str | None  # None: the default "Fake answer to: ..." text
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # A JSON answer (not a stream) led by this many spaces, sent one at a time this many
    # seconds apart: see FakeHTTPServer.trickle().
    trickle_bytes: int = 0
    trickle_every: float = 0.0


@dataclass(kw_only=True)
class StreamReply:
    chunks: list[str]
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cut_after: int | None = None
    delay_between: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # Events that say nothing (FakeHTTPServer.keepalive_event), sent before the answer's.
    keepalives: int = 0


@dataclass(kw_only=True)
class EchoReply:
    """An error whose message echoes the request back: its URL, every header, and Basic auth decoded.

    Some proxies and gateways do this; a client must not let what it sent reach its own errors.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(kw_only=True)
class RecordedReply:
    """A response recorded from a real provider: its status, its headers and nothing else, its body.

    A streamed body (``text/event-stream``) is sent chunked, one recorded event per chunk,
    as the provider sent it; any other body whole, with a Content-Length.
    """

    status: int
    headers: dict[str, str]
    body: bytes
    delay: float = 0.0


class Events(NamedTuple):
    """A stream's encoded events; ``pieces`` carry the answer, and a cut stream never sends ``tail``."""

    head: list[bytes]
    pieces: list[bytes]
    tail: list[bytes]


def words(text: str) -> int:
    """Count whitespace-split words, at least 1, as the fake's token count."""
    return max(1, len(text.split()))


def word_chunks(text: str) -> list[str]:
    """Split text into word pieces that concatenate back to the exact text."""
    return re.findall(r"\S+\s*|\s+", text)


def message_text(content: Any) -> str:
    """Return the text of a chat message content, plain or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def sse(data: Any, *, event: str | None = None, newline: str = "\n") -> bytes:
    """Encode one Server-Sent Event carrying a JSON payload (or a raw string)."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}{newline}" if event is not None else ""
    return f"{head}data: {text}{newline}{newline}".encode()


class RequestHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so the SDK's pooled keep-alive connections and chunked streams work.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate sends: without this, Nagle holds each reply
    # on a keep-alive connection for ~40 ms.
    disable_nagle_algorithm = True
    server: HTTPListener

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests should not print access logs."""

    def setup(self) -> None:
        """Track the connection so stop() can close it."""
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        """Untrack the connection."""
        self.server.fake._track(self.connection, add=False)
        with contextlib.suppress(OSError):  # the client (or stop()) already closed it
            super().finish()

    def do_GET(self) -> None:
        """Route a GET request."""
        self._handle()

    def do_POST(self) -> None:
        """Route a POST request."""
        self._handle()

    do_PUT = do_PATCH = do_DELETE = do_POST

    def _handle(self) -> None:
        """Record the request and answer it, ignoring clients that went away."""
        try:
            self.server.fake._serve(self)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
            self.server.fake._hung_up()

    def read_body(self) -> dict[str, Any] | None:
        """Read the request body as a JSON object, or None."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def send_head(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """Send the status line and these headers, in order."""
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def send_bytes(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        """Send a complete response with a Content-Length."""
        self.send_head(
            status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers.items()]
        )
        self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status: int, payload: Any, content_type: str, headers: dict[str, str]) -> None:
        """Send a complete JSON response."""
        self.send_bytes(status, json.dumps(payload).encode(), content_type, headers)

    def send_chunk(self, data: bytes) -> None:
        """Send one chunk of a chunked response and flush it."""
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def hangs_up_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the client to close its end; return whether it did."""
        readable, _, _ = select.select([self.connection], [], [], seconds)
        if not readable:
            return False
        try:
            # Readable with nothing to read: the client's end is closed (no request comes mid-reply).
            return not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def cut(self) -> None:
        """Drop the connection mid-response, without the terminating chunk."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _echo(handler: RequestHandler, headers: dict[str, str]) -> str:
    """Describe the request as an echoing server would: URL, headers, and the Basic credentials."""
    echoed: dict[str, Any] = {
        "url": f"http://{headers.get('host', '')}{handler.path}",
        "method": handler.command,
        "headers": headers,
    }
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            echoed["basic_credentials"] = base64.b64decode(value).decode()
    return f"rejected {json.dumps(echoed)}"


class HTTPListener(ThreadingHTTPServer):
    daemon_threads = True
    # Don't join handler threads on close: a hanging reply must not delay stop().
    block_on_close = False
    # Batch tests open dozens of connections at once; socketserver's backlog is 5.
    request_queue_size = 128
    fake: FakeHTTPServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hung up; print anything else, since it is a bug in the fake."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeHTTPServer:
    """Serve scripted replies on 127.0.0.1 over real sockets; a subclass speaks one provider's API."""

    thread_name = "fake-http-server"
    url_path = ""  # appended to http://host:port to make base_url
    request_id_header: str | None = None
    json_content_type = "application/json"
    stream_headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    # What a stream's keep-alive says: an SSE comment, which a client skips.
    keepalive_event = b": keep-alive\n\n"
    default_finish_reason: str | None = None
    # Providers with extra reply fields name their subclasses here, for the default
    # reply and for a text reply streamed word by word.
    text_reply_type: type[TextReply] = TextReply
    stream_reply_type: type[StreamReply] = StreamReply

    def __init__(self) -> None:
        self.base_url: str | None = None
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._replies: deque[RawReply | TextReply | StreamReply | EchoReply | RecordedReply] = deque()
        self._counter = 0
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._hangup = threading.Event()
        self._httpd: HTTPListener | None = None
        self._thread: threading.Thread | None = None
        #: What an unscripted request is answered: a function of its last user message.
        self.answer_with: Callable[[str], str] | None = None
        #: Or a function of the request body's model and its last user message.
        self.answer_for_model: Callable[[str, str], str] | None = None
        #: Seconds an unscripted request waits for its answer.
        self.answer_delay = 0.0

    # Lifecycle

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        self._stopping.clear()
        self._httpd = HTTPListener(("127.0.0.1", 0), RequestHandler)
        self._httpd.fake = self
        host, port = self._httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}{self.url_path}"
        self._thread = threading.Thread(
            # A short poll interval keeps shutdown() (and so stop()) quick.
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging replies and close open connections."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return a snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget recorded requests, queued replies and hang-ups."""
        with self._lock:
            self._requests.clear()
            self._replies.clear()
        self._hangup.clear()

    def wait_for_hangup(self, timeout: float) -> bool:
        """Wait until a client closes its connection in the middle of a reply; return whether one did.

        A stream with ``delay_between`` notices at once, while it waits between two events.
        """
        return self._hangup.wait(timeout)

    # Scripting replies (FIFO; the default reply is used when the queue is empty)

    def reply_raw(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue a response with exactly this status and body, e.g. malformed JSON."""
        self._enqueue(
            RawReply(
                status=status, body=body, content_type=content_type, headers=dict(headers or {}), delay=delay
            )
        )

    def reply_recorded(self, status: int, headers: dict[str, str], body: str) -> None:
        """Queue a real provider's recorded response, served as recorded (see RecordedReply)."""
        self._enqueue(RecordedReply(status=status, headers=dict(headers), body=body.encode()))

    def reply_echo(self, status: int = 401, *, headers: dict[str, str] | None = None) -> None:
        """Queue an error, in this provider's error shape, whose message echoes the request."""
        self._enqueue(EchoReply(status=status, headers=dict(headers or {})))

    def hang(self, seconds: float) -> None:
        """Queue a default reply that is sent only after sleeping (woken early by stop())."""
        self._enqueue(self._default_reply(delay=seconds))

    def trickle(self, spaces: int, *, every: float) -> None:
        """Queue a default answer whose body trickles in: ``spaces`` spaces, ``every`` seconds apart.

        JSON may start with whitespace, so the answer is valid once whole; meanwhile the
        connection is never idle for long, and no read timeout fires. A client that hangs
        up mid-body is noted (``wait_for_hangup``). For answers that are not streamed.
        """
        reply = self._default_reply()
        reply.trickle_bytes, reply.trickle_every = spaces, every
        self._enqueue(reply)

    def _enqueue(self, reply: RawReply | TextReply | StreamReply | EchoReply | RecordedReply) -> None:
        with self._lock:
            self._replies.append(reply)

    def _enqueue_json(self, status: int, payload: Any, headers: dict[str, str] | None, delay: float) -> None:
        """Queue a JSON response, such as a provider's error."""
        body = json.dumps(payload).encode()
        self.reply_raw(status, body, content_type=self.json_content_type, headers=headers, delay=delay)

    def _default_reply(self, delay: float = 0.0) -> TextReply:
        return self.text_reply_type(text=None, finish_reason=self.default_finish_reason, delay=delay)

    # Provider hooks

    def _record(
        self, method: str, path: str, query: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> RecordedRequest:
        """Build the record of one request."""
        return RecordedRequest(method, path, headers, body)

    def _direct_answer(self, request: RecordedRequest) -> tuple[int, Any] | None:
        """Return (status, JSON) for a request the reply queue does not answer, e.g. a 404."""
        return None

    def _streams(self, request: RecordedRequest, body: dict[str, Any]) -> bool:
        """Return whether the request asks for an event stream."""
        return bool(body.get("stream"))

    def _last_user_text(self, body: dict[str, Any]) -> str:
        """Return the text of the last user message of a chat ``messages`` list."""
        messages = body.get("messages") or []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        return message_text(users[-1].get("content")) if users else ""

    def _completion(
        self, reply: TextReply, request: RecordedRequest, body: dict[str, Any], n: int
    ) -> dict[str, Any]:
        """Build the JSON answer to request number n."""
        raise NotImplementedError

    def _error_payload(self, status: int, message: str) -> Any:
        """Return this provider's JSON error body for ``status`` with ``message``."""
        raise NotImplementedError

    def _events(self, reply: StreamReply, request: RecordedRequest, body: dict[str, Any], n: int) -> Events:
        """Encode the event stream answering request number n."""
        raise NotImplementedError

    # Request handling (runs in handler threads)

    def _hung_up(self) -> None:
        """Note that a client closed its connection mid-reply (stop() closing it does not count)."""
        if not self._stopping.is_set():
            self._hangup.set()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        """Add or remove an open client connection."""
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _serve(self, handler: RequestHandler) -> None:
        """Record one request and send the matching reply."""
        path, _, query = handler.path.partition("?")
        body = handler.read_body()
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            request = self._record(handler.command, path, query, headers, body)
            self._requests.append(request)
            self._counter += 1
            n = self._counter

        direct = self._direct_answer(request)
        if direct is not None:
            status, payload = direct
            handler.send_json(status, payload, self.json_content_type, self._headers(n))
            return

        with self._lock:
            reply = self._replies.popleft() if self._replies else self._default_reply(self.answer_delay)
        if not self._pause_between(handler, reply.delay):
            handler.cut()  # stop() was called, or the client hung up, while a reply was held back
            return

        if isinstance(reply, RecordedReply):
            self._send_recorded(handler, reply)
            return
        body = body or {}
        headers = self._headers(n, reply.headers)
        if isinstance(reply, RawReply):
            handler.send_bytes(reply.status, reply.body, reply.content_type, headers)
            return
        if isinstance(reply, EchoReply):
            payload = self._error_payload(reply.status, _echo(handler, request.headers))
            handler.send_json(reply.status, payload, self.json_content_type, headers)
            return
        if isinstance(reply, TextReply):
            if not self._streams(request, body):
                completion = self._completion(reply, request, body, n)
                if reply.trickle_bytes:
                    self._send_trickled(handler, reply, json.dumps(completion).encode(), headers)
                    return
                handler.send_json(200, completion, self.json_content_type, headers)
                return
            reply = self.stream_reply_type(
                chunks=word_chunks(self._text(reply, body)),
                finish_reason=reply.finish_reason,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                headers=reply.headers,
            )
        self._send_stream(handler, reply, self._events(reply, request, body, n), headers)

    def _headers(self, n: int, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Return the response headers for request number n: its request id, then the reply's own."""
        extra = extra or {}
        if self.request_id_header is None:
            return dict(extra)
        # Lower-cased so a test's own request id replaces the default one.
        return {self.request_id_header: f"req_fake_{n}", **{k.lower(): v for k, v in extra.items()}}

    def _pause_between(self, handler: RequestHandler, seconds: float) -> bool:
        """Pause before a reply, or between two events, unless the server stops or the client
        hangs up first (noted: ``wait_for_hangup``).

        Return whether to go on.
        """
        if seconds > 0 and handler.hangs_up_within(seconds):
            self._hung_up()
            return False
        return not self._stopping.is_set()

    def _text(self, reply: TextReply, body: dict[str, Any]) -> str:
        """Return the reply text, or the default answer echoing the last user message."""
        if reply.text is not None:
            return reply.text
        if self.answer_with is not None:
            return self.answer_with(self._last_user_text(body))
        if self.answer_for_model is not None:
            return self.answer_for_model(body.get("model"), self._last_user_text(body))
        return f"Fake answer to: {self._last_user_text(body)}"

    def _send_trickled(
        self, handler: RequestHandler, reply: TextReply, body: bytes, headers: dict[str, str]
    ) -> None:
        """Send ``body`` after its leading spaces, one at a time; stop if the client hangs up."""
        length = reply.trickle_bytes + len(body)
        handler.send_head(
            200,
            [("Content-Type", self.json_content_type), ("Content-Length", str(length)), *headers.items()],
        )
        for i in range(reply.trickle_bytes):
            if i and not self._pause_between(handler, reply.trickle_every):
                handler.cut()
                return
            handler.wfile.write(b" ")
            handler.wfile.flush()
        handler.wfile.write(body)
        handler.wfile.flush()

    def _send_recorded(self, handler: RequestHandler, reply: RecordedReply) -> None:
        headers = [(name, value) for name, value in reply.headers.items() if name.lower() != "content-length"]
        content_type = reply.headers.get("content-type", reply.headers.get("Content-Type", ""))
        if not content_type.startswith("text/event-stream"):
            handler.send_head(reply.status, [*headers, ("Content-Length", str(len(reply.body)))])
            handler.wfile.write(reply.body)
            handler.wfile.flush()
            return
        handler.send_head(reply.status, [*headers, ("Transfer-Encoding", "chunked")])
        # One chunk per event, each with the separator it was recorded with.
        for event in re.findall(rb".*?(?:\r\n\r\n|\n\n|$)", reply.body, flags=re.DOTALL):
            if event:
                handler.send_chunk(event)
        handler.send_chunk(b"")

    def _send_stream(
        self, handler: RequestHandler, reply: StreamReply, events: Events, headers: dict[str, str]
    ) -> None:
        """Send the events chunked, pausing between pieces, or cut them after `cut_after` pieces."""
        # Chunked encoding lets a cut stream look like a truncated body to the client,
        # unlike Connection: close, where an early close is a normal end of body.
        handler.send_head(
            200, [*self.stream_headers.items(), ("Transfer-Encoding", "chunked"), *headers.items()]
        )
        for event in events.head:
            handler.send_chunk(event)
        pieces = events.pieces if reply.cut_after is None else events.pieces[: reply.cut_after]
        pieces = [self.keepalive_event] * reply.keepalives + pieces
        for i, event in enumerate(pieces):
            if i and not self._pause_between(handler, reply.delay_between):
                handler.cut()  # stop() was called, or the client hung up, mid-stream
                return
            handler.send_chunk(event)
        if reply.cut_after is not None:
            handler.cut()
            return
        for event in events.tail:
            handler.send_chunk(event)
        handler.send_chunk(b"")  # the zero-length chunk ends the body cleanly
