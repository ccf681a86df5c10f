"""A fake Gemini HTTP server on 127.0.0.1 for tests that use the real google-genai SDK.

It speaks the REST wire format the SDK sends and parses: the Gemini Developer API
(``/v1beta/models/{model}:generateContent``) and Vertex AI
(``/v1beta1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent``,
or without the project and location in Vertex AI express mode), each also as
``:streamGenerateContent?alt=sse``. Errors come in Google's JSON error shape.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

__all__ = ["FakeGeminiServer", "RecordedRequest", "fake_gemini"]

_ROUTE = re.compile(
    r"^/(?P<version>v1(?:alpha|beta1?)?)/"
    r"(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?"
    r"(?:publishers/(?P<publisher>[^/]+)/)?"
    r"models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)
# The google.rpc status names Google's APIs send with each HTTP status.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass
class RecordedRequest:
    """One request as the fake server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any] | None
    #: The parts of a known path: version, project, location, publisher, model, method.
    route: dict[str, str | None] = field(default_factory=dict)


@dataclass
class _TextReply:
    text: str | None  # None: the default "Fake answer to: ..." text
    finish_reason: str = "STOP"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    thoughts_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class _StreamReply:
    chunks: list[str]
    finish_reason: str | None = "STOP"
    cut_after: int | None = None
    delay_between: float = 0.0
    delay: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _RawReply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


_Reply = _TextReply | _StreamReply | _RawReply


def _words(text: str) -> int:
    """Count whitespace-split words, at least 1, as the fake's token count."""
    return max(1, len(text.split()))


def _text_of(content: Any) -> str:
    """Return the text of a Content object ({"role", "parts": [{"text"}]}) or a bare string."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        parts = content.get("parts") or []
        return " ".join(p.get("text", "") for p in parts if isinstance(p, dict))
    return ""


def _word_chunks(text: str) -> list[str]:
    """Split text into word pieces that concatenate back to the exact text."""
    return re.findall(r"\S+\s*|\s+", text)


def error_body(status: int, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Return Google's JSON error shape for an HTTP status."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so the SDK's pooled keep-alive connections and chunked streams work.
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

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

    def read_body(self) -> dict[str, Any] | None:
        """Read the request body as a JSON object, or None."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def send_json(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        """Send a complete JSON response."""
        self.send_bytes(status, json.dumps(payload).encode(), "application/json; charset=UTF-8", headers)

    def send_bytes(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        """Send a complete response with a Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def start_chunked(self, headers: dict[str, str]) -> None:
        """Start a chunked text/event-stream response."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        # Chunked encoding lets a cut stream look like a truncated body to the client,
        # unlike Connection: close, where an early close is a normal end of body.
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def send_chunk(self, data: bytes) -> None:
        """Send one chunk of a chunked response and flush it."""
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def send_event(self, payload: Any) -> None:
        """Send one Server-Sent Event carrying a JSON payload, as Gemini does (CRLF-separated)."""
        self.send_chunk(f"data: {json.dumps(payload)}\r\n\r\n".encode())

    def cut(self) -> None:
        """Drop the connection mid-response, without the terminating chunk."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Don't join handler threads on close: a hanging reply must not delay stop().
    block_on_close = False
    fake: FakeGeminiServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hung up; print anything else, since it is a bug in the fake."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeGeminiServer:
    """Serve scripted Gemini generateContent answers on 127.0.0.1 over real sockets.

    ``base_url`` has no version in it: the SDK appends ``/v1beta/...`` (Developer API)
    or ``/v1beta1/...`` (Vertex AI) itself.
    """

    def __init__(self) -> None:
        self.base_url: str | None = None
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._replies: deque[_Reply] = deque()
        self._counter = 0
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle

    def start(self) -> FakeGeminiServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        self._stopping.clear()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        host, port = self._httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            # A short poll interval keeps shutdown() (and so stop()) quick.
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-gemini-server",
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

    def __enter__(self) -> FakeGeminiServer:
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
        """Forget recorded requests and queued replies."""
        with self._lock:
            self._requests.clear()
            self._replies.clear()

    # Scripting replies (FIFO; the default reply is used when the queue is empty)

    def reply(
        self,
        text: str,
        *,
        finish_reason: str = "STOP",
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        thoughts_tokens: int | None = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue a normal answer (streamed word by word if the request streams)."""
        self._enqueue(
            _TextReply(
                text,
                finish_reason,
                prompt_tokens,
                completion_tokens,
                thoughts_tokens,
                dict(headers or {}),
                delay,
            )
        )

    def reply_error(
        self,
        status: int,
        message: str = "Fake error from FakeGeminiServer",
        *,
        retry_delay: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue an error in Google's JSON shape; ``retry_delay`` (e.g. "7s") adds a RetryInfo detail."""
        details = list(details or [])
        if retry_delay is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
        body = json.dumps(error_body(status, message, details)).encode()
        self._enqueue(_RawReply(status, body, "application/json; charset=UTF-8", dict(headers or {}), delay))

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
        self._enqueue(_RawReply(status, body, content_type, dict(headers or {}), delay))

    def reply_stream(
        self,
        chunks: list[str],
        *,
        finish_reason: str | None = "STOP",
        cut_after: int | None = None,
        delay_between: float = 0.0,
        delay: float = 0.0,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue a Server-Sent Events stream of GenerateContentResponse chunks.

        ``cut_after=n`` drops the connection after n chunks; ``finish_reason=None`` ends
        the stream cleanly but without a finish reason.
        """
        self._enqueue(
            _StreamReply(
                list(chunks),
                finish_reason,
                cut_after,
                delay_between,
                delay,
                prompt_tokens,
                completion_tokens,
                dict(headers or {}),
            )
        )

    def hang(self, seconds: float) -> None:
        """Queue a default reply that is sent only after sleeping (woken early by stop())."""
        self._enqueue(_TextReply(None, delay=seconds))

    # Request handling (runs in handler threads)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        """Add or remove an open client connection."""
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _serve(self, handler: _Handler) -> None:
        """Record one request and send the matching reply."""
        url = urlsplit(handler.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        body = handler.read_body()
        headers = {name.lower(): value for name, value in handler.headers.items()}
        match = _ROUTE.match(url.path)
        route = match.groupdict() if match else {}
        with self._lock:
            self._requests.append(RecordedRequest(handler.command, url.path, query, headers, body, route))
            self._counter += 1
            n = self._counter

        if handler.command != "POST" or not match:
            message = f"Invalid URL ({handler.command} {url.path})"
            handler.send_json(404, error_body(404, message), {})
            return

        with self._lock:
            reply = self._replies.popleft() if self._replies else _TextReply(None)
        if not self._pause(reply.delay):
            handler.cut()  # stop() was called while a reply was hanging
            return

        body = body or {}
        model = route["model"]
        streaming = route["method"] == "streamGenerateContent"
        if isinstance(reply, _RawReply):
            handler.send_bytes(reply.status, reply.body, reply.content_type, reply.headers)
        elif isinstance(reply, _StreamReply):
            self._send_stream(handler, reply, body, model, n)
        elif streaming:
            text = self._text(reply, body)
            stream = _StreamReply(
                _word_chunks(text),
                reply.finish_reason,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                headers=reply.headers,
            )
            self._send_stream(handler, stream, body, model, n)
        else:
            handler.send_json(200, self._response(reply, body, model, n), reply.headers)

    def _enqueue(self, reply: _Reply) -> None:
        with self._lock:
            self._replies.append(reply)

    def _pause(self, seconds: float) -> bool:
        """Sleep unless the server stops first; return whether it is still running."""
        if seconds > 0:
            return not self._stopping.wait(seconds)
        return not self._stopping.is_set()

    @staticmethod
    def _text(reply: _TextReply, body: dict[str, Any]) -> str:
        """Return the reply text, or the default answer echoing the last user content."""
        if reply.text is not None:
            return reply.text
        contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
        users = [c for c in contents if c.get("role", "user") == "user"]
        last = _text_of(users[-1]) if users else ""
        return f"Fake answer to: {last}"

    @staticmethod
    def _usage(
        body: dict[str, Any],
        text: str,
        prompt: int | None,
        completion: int | None,
        thoughts: int | None = None,
    ) -> dict[str, int]:
        """Count usage in words unless the reply fixed the numbers."""
        if prompt is None:
            parts = [_text_of(body.get("systemInstruction"))]
            parts += [_text_of(c) for c in body.get("contents") or []]
            prompt = _words(" ".join(parts))
        if completion is None:
            completion = _words(text)
        usage = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": completion,
            "totalTokenCount": prompt + completion + (thoughts or 0),
        }
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        return usage

    @staticmethod
    def _candidate(text: str, finish_reason: str | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if finish_reason is not None:
            candidate["finishReason"] = finish_reason
        return candidate

    def _response(self, reply: _TextReply, body: dict[str, Any], model: str, n: int) -> dict[str, Any]:
        """Build a GenerateContentResponse object."""
        text = self._text(reply, body)
        return {
            "candidates": [self._candidate(text, reply.finish_reason)],
            "usageMetadata": self._usage(
                body, text, reply.prompt_tokens, reply.completion_tokens, reply.thoughts_tokens
            ),
            "modelVersion": model,
            "responseId": f"fake-response-{n}",
        }

    def _send_stream(
        self, handler: _Handler, reply: _StreamReply, body: dict[str, Any], model: str, n: int
    ) -> None:
        """Send GenerateContentResponse chunks as SSE, or cut them after `cut_after` chunks.

        Like Gemini, every chunk carries the prompt's usage; the last one also carries
        the finish reason and the answer's token count.
        """
        text = "".join(reply.chunks)
        usage = self._usage(body, text, reply.prompt_tokens, reply.completion_tokens)
        base = {"modelVersion": model, "responseId": f"fake-response-{n}"}
        pieces = reply.chunks or [""]

        handler.start_chunked(reply.headers)
        for i, piece in enumerate(pieces):
            if reply.cut_after is not None and i >= reply.cut_after:
                handler.cut()
                return
            if i and not self._pause(reply.delay_between):
                handler.cut()  # stop() was called mid-stream
                return
            last = i == len(pieces) - 1
            chunk_usage = usage if last else {"promptTokenCount": usage["promptTokenCount"]}
            candidate = self._candidate(piece, reply.finish_reason if last else None)
            handler.send_event({"candidates": [candidate], "usageMetadata": chunk_usage, **base})
        if reply.cut_after is not None:
            handler.cut()
            return
        handler.send_chunk(b"")  # the zero-length chunk ends the body cleanly


@pytest.fixture
def fake_gemini() -> Iterator[FakeGeminiServer]:
    """Yield a started fake Gemini server and stop it afterwards."""
    with FakeGeminiServer() as server:
        yield server
