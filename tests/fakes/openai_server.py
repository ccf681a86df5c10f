"""A fake OpenAI-compatible HTTP server on 127.0.0.1 for tests that use the real SDK."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = ["FakeOpenAIServer", "RecordedRequest", "fake_openai"]

MODEL_IDS = ("gpt-4o-mini", "gpt-4o")


@dataclass
class RecordedRequest:
    """One request as the fake server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class _TextReply:
    text: str | None  # None: the default "Fake answer to: ..." text
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay: float = 0.0


@dataclass
class _StreamReply:
    chunks: list[str]
    finish_reason: str = "stop"
    usage: bool = True
    cut_after: int | None = None
    delay_between: float = 0.0
    delay: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


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
    """Return the text of a message content, plain or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _word_chunks(text: str) -> list[str]:
    """Split text into word pieces that concatenate back to the exact text."""
    return re.findall(r"\S+\s*|\s+", text)


def _error_type(status: int) -> str:
    """Return the error type OpenAI usually sends for a status."""
    if status == 429:
        return "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


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
        self.send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

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
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
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
        """Send one Server-Sent Event carrying a JSON payload (or a raw string)."""
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.send_chunk(f"data: {data}\n\n".encode())

    def cut(self) -> None:
        """Drop the connection mid-response, without the terminating chunk."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Don't join handler threads on close: a hanging reply must not delay stop().
    block_on_close = False
    fake: FakeOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hung up; print anything else, since it is a bug in the fake."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeOpenAIServer:
    """Serve scripted OpenAI chat completions on 127.0.0.1 over real sockets."""

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

    def start(self) -> FakeOpenAIServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        self._stopping.clear()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        host, port = self._httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}/v1"
        self._thread = threading.Thread(
            # A short poll interval keeps shutdown() (and so stop()) quick.
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-openai-server",
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

    def __enter__(self) -> FakeOpenAIServer:
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
        finish_reason: str = "stop",
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue a normal completion (streamed word by word if the request streams)."""
        self._enqueue(_TextReply(text, finish_reason, prompt_tokens, completion_tokens, delay))

    def reply_error(
        self,
        status: int,
        message: str = "Fake error from FakeOpenAIServer",
        *,
        error_type: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue an error in OpenAI's JSON error shape."""
        error = {
            "message": message,
            "type": error_type or _error_type(status),
            "param": None,
            "code": code,
        }
        body = json.dumps({"error": error}).encode()
        self._enqueue(_RawReply(status, body, headers=dict(headers or {}), delay=delay))

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
        finish_reason: str = "stop",
        usage: bool = True,
        cut_after: int | None = None,
        delay_between: float = 0.0,
        delay: float = 0.0,
    ) -> None:
        """Queue a Server-Sent Events stream of chat.completion.chunk objects."""
        self._enqueue(_StreamReply(list(chunks), finish_reason, usage, cut_after, delay_between, delay))

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
        path = handler.path.split("?", 1)[0]
        body = handler.read_body()
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self._requests.append(RecordedRequest(handler.command, path, headers, body))
            self._counter += 1
            n = self._counter
        request_id = {"x-request-id": f"req_fake_{n}"}

        if handler.command == "GET" and path in ("/v1/models", "/models"):
            models = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in MODEL_IDS
            ]
            handler.send_json(200, {"object": "list", "data": models}, request_id)
            return
        if handler.command != "POST" or path not in ("/v1/chat/completions", "/chat/completions"):
            error = {
                "message": f"Invalid URL ({handler.command} {path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            handler.send_json(404, {"error": error}, request_id)
            return

        with self._lock:
            reply = self._replies.popleft() if self._replies else _TextReply(None)
        if not self._pause(reply.delay):
            handler.cut()  # stop() was called while a reply was hanging
            return

        body = body or {}
        if isinstance(reply, _RawReply):
            # Lower-cased so a test's own X-Request-Id replaces the default one.
            headers = {**request_id, **{k.lower(): v for k, v in reply.headers.items()}}
            handler.send_bytes(reply.status, reply.body, reply.content_type, headers)
        elif isinstance(reply, _StreamReply):
            self._send_stream(handler, reply, body, n, request_id)
        elif body.get("stream"):
            text = self._text(reply, body)
            stream = _StreamReply(
                _word_chunks(text),
                reply.finish_reason,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
            )
            self._send_stream(handler, stream, body, n, request_id)
        else:
            handler.send_json(200, self._completion(reply, body, n), request_id)

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
        """Return the reply text, or the default answer echoing the last user message."""
        if reply.text is not None:
            return reply.text
        messages = body.get("messages") or []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last = _text_of(users[-1].get("content")) if users else ""
        return f"Fake answer to: {last}"

    @staticmethod
    def _usage(body: dict[str, Any], text: str, prompt: int | None, completion: int | None) -> dict[str, int]:
        """Count usage in words unless the reply fixed the numbers."""
        if prompt is None:
            messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
            prompt = _words(" ".join(_text_of(m.get("content")) for m in messages))
        if completion is None:
            completion = _words(text)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _completion(self, reply: _TextReply, body: dict[str, Any], n: int) -> dict[str, Any]:
        """Build a chat.completion object."""
        text = self._text(reply, body)
        message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        return {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": self._usage(body, text, reply.prompt_tokens, reply.completion_tokens),
            "system_fingerprint": None,
        }

    def _send_stream(
        self,
        handler: _Handler,
        reply: _StreamReply,
        body: dict[str, Any],
        n: int,
        headers: dict[str, str],
    ) -> None:
        """Send a chat.completion.chunk event stream, or cut it after `cut_after` chunks."""
        stream_options = body.get("stream_options") or {}
        include_usage = bool(reply.usage and stream_options.get("include_usage"))
        base = {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "system_fingerprint": None,
        }
        if include_usage:
            base["usage"] = None  # OpenAI sends usage: null on every chunk but the last

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**base, "choices": [choice]}

        handler.start_chunked(headers)
        handler.send_event(chunk({"role": "assistant", "content": ""}))
        pieces = reply.chunks if reply.cut_after is None else reply.chunks[: reply.cut_after]
        for i, piece in enumerate(pieces):
            if i and not self._pause(reply.delay_between):
                handler.cut()  # stop() was called mid-stream
                return
            handler.send_event(chunk({"content": piece}))
        if reply.cut_after is not None:
            handler.cut()
            return
        handler.send_event(chunk({}, reply.finish_reason))
        if include_usage:
            text = "".join(reply.chunks)
            usage = self._usage(body, text, reply.prompt_tokens, reply.completion_tokens)
            handler.send_event({**base, "choices": [], "usage": usage})
        handler.send_event("[DONE]")
        handler.send_chunk(b"")  # the zero-length chunk ends the body cleanly


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """Yield a started fake OpenAI server and stop it afterwards."""
    with FakeOpenAIServer() as server:
        yield server
