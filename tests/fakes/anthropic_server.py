"""A fake Anthropic Messages API server on 127.0.0.1 for tests that use the real SDK.

It speaks the wire format of ``POST /v1/messages``: a ``message`` object, a
``request-id`` header, ``{"type": "error", "error": {...}}`` error bodies, and
Server-Sent Events with an ``event:`` line on every event (the SDK skips events
without one).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes.http import (
    Events,
    FakeHTTPServer,
    RecordedRequest,
    StreamReply,
    TextReply,
    message_text,
    sse,
    words,
)

__all__ = ["FakeAnthropicServer", "RecordedRequest", "fake_anthropic"]

MESSAGES_PATH = "/v1/messages"


@dataclass(kw_only=True)
class _StreamReply(StreamReply):
    error_type: str | None = None  # sent as an error event instead of the message's end
    message_stop: bool = True  # False: the body ends cleanly, the message never does


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


def _event(payload: dict[str, Any]) -> bytes:
    return sse(payload, event=payload["type"])


class FakeAnthropicServer(FakeHTTPServer):
    """Serve scripted Anthropic messages on 127.0.0.1 over real sockets."""

    thread_name = "fake-anthropic-server"
    # No path: the SDK adds /v1/messages.
    request_id_header = "request-id"
    default_finish_reason = "end_turn"
    stream_reply_type = _StreamReply

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
        self._enqueue(
            TextReply(
                text=text,
                finish_reason=stop_reason,
                prompt_tokens=input_tokens,
                completion_tokens=output_tokens,
                delay=delay,
            )
        )

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
        self._enqueue_json(status, _error_body(error_type or _error_type(status), message), headers, delay)

    def reply_stream(
        self,
        chunks: list[str],
        *,
        stop_reason: str = "end_turn",
        cut_after: int | None = None,
        error_type: str | None = None,
        delay_between: float = 0.0,
        keepalives: int = 0,
        delay: float = 0.0,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        message_stop: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue a message event stream.

        ``cut_after=N`` drops the connection after N text deltas; ``error_type`` (e.g.
        ``"overloaded_error"``) sends an ``error`` event after the chunks instead of ending;
        ``message_stop=False`` ends the body cleanly after the chunks, the message unfinished.
        """
        self._enqueue(
            _StreamReply(
                chunks=list(chunks),
                finish_reason=stop_reason,
                prompt_tokens=input_tokens,
                completion_tokens=output_tokens,
                cut_after=cut_after,
                error_type=error_type,
                message_stop=message_stop,
                delay_between=delay_between,
                keepalives=keepalives,
                headers=dict(headers or {}),
                delay=delay,
            )
        )

    def _error_payload(self, status: int, message: str) -> dict[str, Any]:
        return _error_body(_error_type(status), message)

    def _direct_answer(self, request: RecordedRequest) -> tuple[int, Any] | None:
        if request.method != "POST" or request.path != MESSAGES_PATH:
            return 404, _error_body("not_found_error", f"Not found: {request.method} {request.path}")
        return None

    @staticmethod
    def _usage(
        body: dict[str, Any], text: str, input_tokens: int | None, output_tokens: int | None
    ) -> dict[str, int]:
        """Count the system prompt, messages and answer in words unless the reply fixed the numbers."""
        if input_tokens is None:
            messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
            texts = [message_text(body.get("system")), *(message_text(m.get("content")) for m in messages)]
            input_tokens = words(" ".join(texts))
        return {
            "input_tokens": input_tokens,
            "output_tokens": words(text) if output_tokens is None else output_tokens,
        }

    @staticmethod
    def _message(body: dict[str, Any], n: int, **fields: Any) -> dict[str, Any]:
        """Build a message object."""
        return {
            "id": f"msg_fake_{n}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "fake-model"),
            **fields,
        }

    def _completion(
        self, reply: TextReply, request: RecordedRequest, body: dict[str, Any], n: int
    ) -> dict[str, Any]:
        text = self._text(reply, body)
        return self._message(
            body,
            n,
            content=[{"type": "text", "text": text}],
            stop_reason=reply.finish_reason,
            stop_sequence=None,
            usage=self._usage(body, text, reply.prompt_tokens, reply.completion_tokens),
        )

    def _events(self, reply: _StreamReply, request: RecordedRequest, body: dict[str, Any], n: int) -> Events:
        """Encode a message event stream, ending in an error event if the reply asks for one."""
        usage = self._usage(body, "".join(reply.chunks), reply.prompt_tokens, reply.completion_tokens)
        message = self._message(
            body,
            n,
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage={"input_tokens": usage["input_tokens"], "output_tokens": 1},
        )
        head = [
            _event({"type": "message_start", "message": message}),
            _event(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
            ),
            _event({"type": "ping"}),
        ]
        pieces = [
            _event(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            )
            for piece in reply.chunks
        ]
        if reply.error_type is not None:
            return Events(
                head, pieces, [_event(_error_body(reply.error_type, f"Fake {reply.error_type} mid-stream"))]
            )
        if not reply.message_stop:
            return Events(head, pieces, [_event({"type": "content_block_stop", "index": 0})])
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reply.finish_reason, "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
        tail = [
            _event({"type": "content_block_stop", "index": 0}),
            _event(message_delta),
            _event({"type": "message_stop"}),
        ]
        return Events(head, pieces, tail)


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropicServer]:
    """Yield a started fake Anthropic server and stop it afterwards."""
    with FakeAnthropicServer() as server:
        yield server
