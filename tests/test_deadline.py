"""TIMEOUT is one deadline whatever the server sends: chunks with no text, keep-alives, a trickled body.

Each provider against its fake server, through the service, sync and async (on a new
event loop). No test times a call: each checks that the error is the deadline's own
ProviderTimeout, and that the call stopped reading before the server was done (what
reached the caller, the number of requests, the server seeing the client hang up).
"""

import asyncio

import openai
import pytest

from llmapp import acomplete_prompt, astream_prompt, complete_prompt, stream_prompt
from llmapp.calls.retries import Attempts, Route
from llmapp.calls.types import CompletionRequest
from llmapp.exceptions import ProviderError, ProviderTimeout
from llmapp.providers.anthropic import AnthropicProvider
from llmapp.providers.gemini import GeminiProvider
from llmapp.providers.openai import OpenAIProvider, OpenAIStreamReader
from tests.conftest import API_KEY
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.gemini_server import FakeGeminiServer
from tests.fakes.openai_server import FakeOpenAIServer

PROVIDERS = {
    "openai": (OpenAIProvider, FakeOpenAIServer),
    "anthropic": (AnthropicProvider, FakeAnthropicServer),
    "gemini": (GeminiProvider, FakeGeminiServer),
}
#: What a server that has stopped being read notices within, at most.
HANGUP_WAIT = 10


@pytest.fixture(params=list(PROVIDERS))
def alias(request):
    return request.param


@pytest.fixture
def server(alias, settings):
    """The fake server of provider ``alias``, which is the only provider, without a circuit breaker."""
    backend_class, server_class = PROVIDERS[alias]
    with server_class() as server:
        settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
        settings.LLM_PROVIDERS = {
            alias: {
                "BACKEND": f"{backend_class.__module__}.{backend_class.__name__}",
                # Each read is given 3s: longer than any pause of the servers below.
                "OPTIONS": {"api_key": API_KEY, "base_url": server.base_url, "timeout": 3},
                "CIRCUIT_BREAKER": None,
            }
        }
        yield server


@pytest.fixture(params=["sync", "async"])
def asynchronous(request):
    return request.param == "async"


def stream(asynchronous, **overrides):
    """Read stream_prompt, or astream_prompt on a new loop; return its items and the ProviderError raised."""
    received = []

    async def read():
        async for item in astream_prompt("summarize", "hi", fallbacks=[], **overrides):
            received.append(item)

    try:
        if asynchronous:
            asyncio.run(read())
        else:
            for item in stream_prompt("summarize", "hi", fallbacks=[], **overrides):
                received.append(item)
    except ProviderError as exc:
        return received, exc
    return received, None


def complete(asynchronous, **overrides):
    """Call complete_prompt, or acomplete_prompt on a new loop."""
    if asynchronous:
        return asyncio.run(acomplete_prompt("summarize", "hi", fallbacks=[], **overrides))
    return complete_prompt("summarize", "hi", fallbacks=[], **overrides)


def test_chunks_without_text_do_not_carry_a_stream_past_its_deadline(server, alias, asynchronous):
    # Keep-alives, reasoning or role-only deltas: 3s of them before the text, for a 1s deadline.
    server.reply_stream([""] * 12 + ["late"], delay_between=0.25)
    received, error = stream(asynchronous, provider=alias, timeout=1, retries=2)
    assert received == []  # "late" never reached the caller
    assert isinstance(error, ProviderTimeout)
    assert "the 1s deadline of use case 'summarize' passed after 1 attempt(s)" in str(error)
    assert len(server.requests) == 1
    assert server.wait_for_hangup(HANGUP_WAIT)  # the stream was closed in the middle


def test_keepalives_do_not_carry_a_stream_past_its_deadline(server, alias, asynchronous):
    # Events the SDK skips, so no chunk at all: 3s of them before the answer, for a 1s deadline.
    server.reply_stream(["late"], keepalives=12, delay_between=0.25)
    received, error = stream(asynchronous, provider=alias, timeout=1, retries=2)
    assert received == []
    assert isinstance(error, ProviderTimeout)
    assert "the 1s deadline of use case 'summarize' passed after 1 attempt(s)" in str(error)
    assert len(server.requests) == 1
    assert server.wait_for_hangup(HANGUP_WAIT)


def test_a_stream_answered_in_part_ends_at_the_deadline_and_is_not_retried(server, alias, asynchronous):
    server.reply_stream(["one "] + [""] * 12 + ["late"], delay_between=0.25)
    received, error = stream(asynchronous, provider=alias, timeout=1, retries=2)
    assert received == ["one "]
    assert isinstance(error, ProviderTimeout) and not error.transient
    assert "the 1s deadline of use case 'summarize' passed after 1 attempt(s)" in str(error)
    assert len(server.requests) == 1
    assert server.wait_for_hangup(HANGUP_WAIT)


def test_an_answer_that_trickles_in_ends_at_the_deadline(server, alias, asynchronous):
    # One byte every 0.25s, so no read ever times out: 6s for the answer, for a 1.5s deadline.
    server.trickle(24, every=0.25)
    with pytest.raises(ProviderTimeout) as raised:
        complete(asynchronous, provider=alias, timeout=1.5, retries=2)
    assert "the 1.5s deadline of use case 'summarize' passed after 1 attempt(s)" in str(raised.value)
    assert API_KEY not in str(raised.value)
    assert len(server.requests) == 1
    assert server.wait_for_hangup(HANGUP_WAIT)  # the body was dropped half-read


def test_an_answer_that_trickles_in_before_the_deadline_is_answered(server, alias, asynchronous):
    server.trickle(4, every=0.1)
    completion = complete(asynchronous, provider=alias, timeout=5, retries=0)
    assert completion.text == "Fake answer to: hi"
    assert completion.attempts == 1


class Clock:
    """A clock that moves only when told."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_stream_reader_checks_the_deadline_on_every_chunk_text_or_not():
    clock = Clock()
    backend = OpenAIProvider("openai", options={"api_key": API_KEY})
    request = CompletionRequest("summarize", "hi", "", "openai", "gpt-4o-mini", 0.5, 50)
    attempts = Attempts(request, [Route("openai", backend, "gpt-4o-mini")], retries=0, timeout=2, clock=clock)
    _, attempt = next(iter(attempts))
    reader = OpenAIStreamReader(backend, attempt)

    def chunk(delta):
        return openai.types.chat.ChatCompletionChunk.model_validate(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
        )

    assert reader.feed(chunk({"role": "assistant", "content": ""})) == []
    clock.now = 1.9
    assert reader.feed(chunk({"content": "one "})) == ["one "]
    clock.now = 2.0
    with pytest.raises(ProviderTimeout, match="the 2s deadline of use case 'summarize' passed"):
        reader.feed(chunk({"reasoning_content": "thinking..."}))
    assert reader.parts == ["one "]
