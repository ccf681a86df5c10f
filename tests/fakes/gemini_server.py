"""A fake Gemini HTTP server on 127.0.0.1 for tests that use the real google-genai SDK.

It speaks the REST wire format the SDK sends and parses: the Gemini Developer API
(``/v1beta/models/{model}:generateContent``) and Vertex AI
(``/v1beta1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent``,
or without the project and location in Vertex AI express mode), each also as
``:streamGenerateContent?alt=sse``. Errors come in Google's JSON error shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.fakes.http import Events, FakeHTTPServer, StreamReply, TextReply, sse, words

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


# Not the shared RecordedRequest: Gemini tests also read the query and the parsed route.
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


@dataclass(kw_only=True)
class _TextReply(TextReply):
    thoughts_tokens: int | None = None


def _text_of(content: Any) -> str:
    """Return the text of a Content object ({"role", "parts": [{"text"}]}) or a bare string."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        parts = content.get("parts") or []
        return " ".join(p.get("text", "") for p in parts if isinstance(p, dict))
    return ""


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


class FakeGeminiServer(FakeHTTPServer):
    """Serve scripted Gemini generateContent answers on 127.0.0.1 over real sockets.

    ``base_url`` has no version in it: the SDK appends ``/v1beta/...`` (Developer API)
    or ``/v1beta1/...`` (Vertex AI) itself.
    """

    thread_name = "fake-gemini-server"
    json_content_type = "application/json; charset=UTF-8"
    stream_headers = {"Content-Type": "text/event-stream"}
    # The SDK reads a line it does not know as JSON: an SSE comment would be a malformed answer.
    keepalive_event = b"\r\n"
    default_finish_reason = "STOP"
    text_reply_type = _TextReply

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
                text=text,
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                thoughts_tokens=thoughts_tokens,
                headers=dict(headers or {}),
                delay=delay,
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
        self._enqueue_json(status, error_body(status, message, details), headers, delay)

    def reply_stream(
        self,
        chunks: list[str],
        *,
        finish_reason: str | None = "STOP",
        cut_after: int | None = None,
        delay_between: float = 0.0,
        keepalives: int = 0,
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
            StreamReply(
                chunks=list(chunks),
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cut_after=cut_after,
                delay_between=delay_between,
                keepalives=keepalives,
                headers=dict(headers or {}),
                delay=delay,
            )
        )

    def _record(
        self, method: str, path: str, query: str, headers: dict[str, str], body: dict[str, Any] | None
    ) -> RecordedRequest:
        match = _ROUTE.match(path)
        params = {key: values[-1] for key, values in parse_qs(query).items()}
        return RecordedRequest(method, path, params, headers, body, match.groupdict() if match else {})

    def _error_payload(self, status: int, message: str) -> dict[str, Any]:
        return error_body(status, message)

    def _direct_answer(self, request: RecordedRequest) -> tuple[int, Any] | None:
        if request.method != "POST" or not request.route:
            return 404, error_body(404, f"Invalid URL ({request.method} {request.path})")
        return None

    def _streams(self, request: RecordedRequest, body: dict[str, Any]) -> bool:
        return request.route["method"] == "streamGenerateContent"

    def _last_user_text(self, body: dict[str, Any]) -> str:
        contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
        users = [c for c in contents if c.get("role", "user") == "user"]
        return _text_of(users[-1]) if users else ""

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
            prompt = words(" ".join(parts))
        if completion is None:
            completion = words(text)
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

    def _completion(
        self, reply: _TextReply, request: RecordedRequest, body: dict[str, Any], n: int
    ) -> dict[str, Any]:
        """Build a GenerateContentResponse object."""
        text = self._text(reply, body)
        return {
            "candidates": [self._candidate(text, reply.finish_reason)],
            "usageMetadata": self._usage(
                body, text, reply.prompt_tokens, reply.completion_tokens, reply.thoughts_tokens
            ),
            "modelVersion": request.route["model"],
            "responseId": f"fake-response-{n}",
        }

    def _events(self, reply: StreamReply, request: RecordedRequest, body: dict[str, Any], n: int) -> Events:
        """Encode GenerateContentResponse chunks as CRLF-separated events, as Gemini does.

        Like Gemini, every chunk carries the prompt's usage; the last one also carries
        the finish reason and the answer's token count.
        """
        text = "".join(reply.chunks)
        usage = self._usage(body, text, reply.prompt_tokens, reply.completion_tokens)
        base = {"modelVersion": request.route["model"], "responseId": f"fake-response-{n}"}
        chunks = reply.chunks or [""]
        pieces = []
        for i, piece in enumerate(chunks):
            last = i == len(chunks) - 1
            chunk_usage = usage if last else {"promptTokenCount": usage["promptTokenCount"]}
            candidate = self._candidate(piece, reply.finish_reason if last else None)
            pieces.append(
                sse({"candidates": [candidate], "usageMetadata": chunk_usage, **base}, newline="\r\n")
            )
        return Events(head=[], pieces=pieces, tail=[])


@pytest.fixture
def fake_gemini() -> Iterator[FakeGeminiServer]:
    """Yield a started fake Gemini server and stop it afterwards."""
    with FakeGeminiServer() as server:
        yield server
