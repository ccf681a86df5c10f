"""A fake OpenAI-compatible HTTP server on 127.0.0.1 for tests that use the real SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes.http import (
    Events,
    FakeHTTPServer,
    HTTPListener,
    RecordedRequest,
    RequestHandler,
    StreamReply,
    TextReply,
    message_text,
    sse,
    words,
)

__all__ = ["FakeOpenAIServer", "RecordedRequest", "fake_openai"]

MODEL_IDS = ("gpt-4o-mini", "gpt-4o")
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")

# bench/fakeserver.py tunes the socket plumbing through these names.
_Handler = RequestHandler
_HTTPServer = HTTPListener


@dataclass(kw_only=True)
class _StreamReply(StreamReply):
    usage: bool = True


def _error_type(status: int) -> str:
    """Return the error type OpenAI usually sends for a status."""
    if status == 429:
        return "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _error_body(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


class FakeOpenAIServer(FakeHTTPServer):
    """Serve scripted OpenAI chat completions on 127.0.0.1 over real sockets."""

    thread_name = "fake-openai-server"
    url_path = "/v1"
    request_id_header = "x-request-id"
    default_finish_reason = "stop"
    stream_reply_type = _StreamReply

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
        self._enqueue(
            TextReply(
                text=text,
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                delay=delay,
            )
        )

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
        self._enqueue_json(
            status, _error_body(message, error_type or _error_type(status), code), headers, delay
        )

    def reply_stream(
        self,
        chunks: list[str],
        *,
        finish_reason: str | None = "stop",
        usage: bool = True,
        cut_after: int | None = None,
        delay_between: float = 0.0,
        keepalives: int = 0,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue a Server-Sent Events stream of chat.completion.chunk objects.

        ``finish_reason=None`` ends the stream cleanly but without a finish reason.
        """
        self._enqueue(
            _StreamReply(
                chunks=list(chunks),
                finish_reason=finish_reason,
                usage=usage,
                cut_after=cut_after,
                delay_between=delay_between,
                keepalives=keepalives,
                headers=dict(headers or {}),
                delay=delay,
            )
        )

    def _error_payload(self, status: int, message: str) -> dict[str, Any]:
        return _error_body(message, _error_type(status))

    def _direct_answer(self, request: RecordedRequest) -> tuple[int, Any] | None:
        if request.method == "GET" and request.path in ("/v1/models", "/models"):
            models = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in MODEL_IDS
            ]
            return 200, {"object": "list", "data": models}
        if request.method != "POST" or request.path not in CHAT_PATHS:
            return 404, _error_body(f"Invalid URL ({request.method} {request.path})", "invalid_request_error")
        return None

    @staticmethod
    def _usage(body: dict[str, Any], text: str, prompt: int | None, completion: int | None) -> dict[str, int]:
        """Count usage in words unless the reply fixed the numbers."""
        if prompt is None:
            messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
            prompt = words(" ".join(message_text(m.get("content")) for m in messages))
        if completion is None:
            completion = words(text)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _completion(
        self, reply: TextReply, request: RecordedRequest, body: dict[str, Any], n: int
    ) -> dict[str, Any]:
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

    def _events(self, reply: _StreamReply, request: RecordedRequest, body: dict[str, Any], n: int) -> Events:
        """Encode chat.completion.chunk events, with a usage chunk if the request asked for one."""
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

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return sse({**base, "choices": [choice]})

        tail = [chunk({}, reply.finish_reason)]
        if include_usage:
            text = "".join(reply.chunks)
            usage = self._usage(body, text, reply.prompt_tokens, reply.completion_tokens)
            tail.append(sse({**base, "choices": [], "usage": usage}))
        tail.append(sse("[DONE]"))
        return Events(
            head=[chunk({"role": "assistant", "content": ""})],
            pieces=[chunk({"content": piece}) for piece in reply.chunks],
            tail=tail,
        )


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """Yield a started fake OpenAI server and stop it afterwards."""
    with FakeOpenAIServer() as server:
        yield server
