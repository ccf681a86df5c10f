"""A fake Anthropic Messages API server on 127.0.0.1 for tests that use the real SDK.

It speaks the wire format of ``POST /v1/messages``: a ``message`` object, a
``request-id`` header, ``{"type": "error", "error": {...}}`` error bodies, and
Server-Sent Events with an ``event:`` line on every event (the SDK skips events
without one).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

# The HTTP plumbing (keep-alive, chunked streams, cutting a connection) is the OpenAI fake's.
from tests.fakes.openai_server import RecordedRequest, _Handler, _HTTPServer, _text_of, _word_chunks, _words

__all__ = ["FakeAnthropicServer", "RecordedRequest", "fake_anthropic"]

MESSAGES_PATH = "/v1/messages"


@dataclass
class _TextReply:
    text: str | None  # None: the default "Fake answer to: ..." text
    stop_reason: str = "end_turn"
    input_tokens: int | None = None
    output_tokens: int | None = None
    delay: float = 0.0


@dataclass
class _StreamReply:
    chunks: list[str]
    stop_reason: str = "end_turn"
    cut_after: int | None = None
    error_type: str | None = None
    delay_between: float = 0.0
    delay: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass
class _RawReply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


_Reply = _TextReply | _StreamReply | _RawReply


def _error_type(status: int) -> str:
    """Return the error type Anthropic sends for a status."""
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        504: "timeout_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


class FakeAnthropicServer:
    """Serve scripted Anthropic messages on 127.0.0.1 over real sockets."""

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

    def start(self) -> FakeAnthropicServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        self._stopping.clear()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        host, port = self._httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}"  # the SDK adds /v1/messages
        self._thread = threading.Thread(
            # A short poll interval keeps shutdown() (and so stop()) quick.
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-anthropic-server",
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

    def __enter__(self) -> FakeAnthropicServer:
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
        stop_reason: str = "end_turn",
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue a normal message (streamed word by word if the request streams)."""
        self._enqueue(_TextReply(text, stop_reason, input_tokens, output_tokens, delay))

    def reply_error(
        self,
        status: int,
        message: str = "Fake error from FakeAnthropicServer",
        *,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue an error in Anthropic's JSON error shape."""
        body = json.dumps(_error_body(error_type or _error_type(status), message)).encode()
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
        stop_reason: str = "end_turn",
        cut_after: int | None = None,
        error_type: str | None = None,
        delay_between: float = 0.0,
        delay: float = 0.0,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Queue a message event stream.

        ``cut_after=N`` drops the connection after N text deltas; ``error_type`` (e.g.
        ``"overloaded_error"``) sends an ``error`` event after the chunks instead of ending.
        """
        self._enqueue(
            _StreamReply(
                list(chunks),
                stop_reason,
                cut_after,
                error_type,
                delay_between,
                delay,
                input_tokens,
                output_tokens,
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
        path = handler.path.split("?", 1)[0]
        body = handler.read_body()
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self._requests.append(RecordedRequest(handler.command, path, headers, body))
            self._counter += 1
            n = self._counter
        request_id = {"request-id": f"req_fake_{n}"}

        if handler.command != "POST" or path != MESSAGES_PATH:
            error = _error_body("not_found_error", f"Not found: {handler.command} {path}")
            handler.send_json(404, error, request_id)
            return

        with self._lock:
            reply = self._replies.popleft() if self._replies else _TextReply(None)
        if not self._pause(reply.delay):
            handler.cut()  # stop() was called while a reply was hanging
            return

        body = body or {}
        if isinstance(reply, _RawReply):
            # Lower-cased so a test's own Request-Id replaces the default one.
            headers = {**request_id, **{k.lower(): v for k, v in reply.headers.items()}}
            handler.send_bytes(reply.status, reply.body, reply.content_type, headers)
        elif isinstance(reply, _StreamReply):
            self._send_stream(handler, reply, body, n, request_id)
        elif body.get("stream"):
            text = self._text(reply, body)
            stream = _StreamReply(
                _word_chunks(text),
                reply.stop_reason,
                input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens,
            )
            self._send_stream(handler, stream, body, n, request_id)
        else:
            handler.send_json(200, self._message(reply, body, n), request_id)

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
    def _input_tokens(body: dict[str, Any], fixed: int | None) -> int:
        """Count the system prompt and messages in words unless the reply fixed the number."""
        if fixed is not None:
            return fixed
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        texts = [_text_of(body.get("system")), *(_text_of(m.get("content")) for m in messages)]
        return _words(" ".join(texts))

    def _message(self, reply: _TextReply, body: dict[str, Any], n: int) -> dict[str, Any]:
        """Build a message object."""
        text = self._text(reply, body)
        return {
            "id": f"msg_fake_{n}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "fake-model"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self._input_tokens(body, reply.input_tokens),
                "output_tokens": _words(text) if reply.output_tokens is None else reply.output_tokens,
            },
        }

    def _send_stream(
        self,
        handler: _Handler,
        reply: _StreamReply,
        body: dict[str, Any],
        n: int,
        headers: dict[str, str],
    ) -> None:
        """Send a message event stream, or cut it after `cut_after` text deltas."""

        def event(payload: dict[str, Any]) -> None:
            handler.send_chunk(f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode())

        message = {
            "id": f"msg_fake_{n}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "fake-model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens(body, reply.input_tokens), "output_tokens": 1},
        }
        handler.start_chunked(headers)
        event({"type": "message_start", "message": message})
        event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        event({"type": "ping"})
        pieces = reply.chunks if reply.cut_after is None else reply.chunks[: reply.cut_after]
        for i, piece in enumerate(pieces):
            if i and not self._pause(reply.delay_between):
                handler.cut()  # stop() was called mid-stream
                return
            delta = {"type": "text_delta", "text": piece}
            event({"type": "content_block_delta", "index": 0, "delta": delta})
        if reply.cut_after is not None:
            handler.cut()
            return
        if reply.error_type is not None:
            event(_error_body(reply.error_type, f"Fake {reply.error_type} mid-stream"))
            handler.send_chunk(b"")
            return
        text = "".join(reply.chunks)
        output_tokens = _words(text) if reply.output_tokens is None else reply.output_tokens
        event({"type": "content_block_stop", "index": 0})
        event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            }
        )
        event({"type": "message_stop"})
        handler.send_chunk(b"")  # the zero-length chunk ends the body cleanly


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropicServer]:
    """Yield a started fake Anthropic server and stop it afterwards."""
    with FakeAnthropicServer() as server:
        yield server
