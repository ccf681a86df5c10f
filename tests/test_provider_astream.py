"""Every provider's astream(), the twin of its stream(): the SDK ones against their fake servers.

Most tests script the same reply twice and read it once with stream() and once with
astream() (on a new event loop, through ``asyncio.run``): both must say the same.
"""

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from llmapp import astream_prompt
from llmapp.calls.types import Completion, CompletionRequest
from llmapp.exceptions import ProviderError, ProviderUnavailable
from llmapp.providers import locmem
from llmapp.providers.anthropic import AnthropicProvider
from llmapp.providers.base import SDKProvider
from llmapp.providers.gemini import GeminiProvider
from llmapp.providers.locmem import LocmemProvider
from llmapp.providers.openai import OpenAIProvider
from tests.conftest import API_KEY
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.gemini_server import FakeGeminiServer
from tests.fakes.openai_server import FakeOpenAIServer

REQUEST_ID = "req-astream-1"


@dataclasses.dataclass(frozen=True)
class Case:
    """A provider, its fake server, and how to script what its server says differently."""

    backend_class: type
    server_class: type
    request_id_header: str
    #: Script a stream of these chunks that ends cleanly without the server's end of answer.
    unfinished: Callable[..., None]


CASES = {
    "openai": Case(
        OpenAIProvider,
        FakeOpenAIServer,
        "x-request-id",
        lambda server, chunks, **kwargs: server.reply_stream(chunks, finish_reason=None, **kwargs),
    ),
    "anthropic": Case(
        AnthropicProvider,
        FakeAnthropicServer,
        "request-id",
        lambda server, chunks, **kwargs: server.reply_stream(chunks, message_stop=False, **kwargs),
    ),
    "gemini": Case(
        GeminiProvider,
        FakeGeminiServer,
        # Gemini sends none of its own; a proxy's x-request-id wins over the responseId.
        "x-request-id",
        lambda server, chunks, **kwargs: server.reply_stream(chunks, finish_reason=None, **kwargs),
    ),
}


@dataclasses.dataclass
class Setup:
    case: Case
    server: Any
    backend: Any
    request: CompletionRequest

    @property
    def headers(self):
        """Reply headers that give both calls the same request id."""
        return {self.case.request_id_header: REQUEST_ID}


@contextlib.contextmanager
def serving(alias):
    """Start the fake server of provider ``alias``; yield its Setup."""
    case = CASES[alias]
    with case.server_class() as server:
        options = {"api_key": API_KEY, "base_url": server.base_url, "timeout": 3}
        backend = case.backend_class(alias, options=options)
        request = CompletionRequest("summarize", "hi", "Be brief.", alias, backend.model, 0.5, 50)
        yield Setup(case, server, backend, request)


@pytest.fixture(params=list(CASES))
def provider(request):
    """A backend pointed at its fake server, and the request to send it."""
    with serving(request.param) as setup:
        yield setup


def read_stream(backend, request):
    """Return what ``backend.stream(request)`` yielded, and the ProviderError it raised or None."""
    items = []
    try:
        for item in backend.stream(request):
            items.append(item)
    except ProviderError as exc:
        return items, exc
    return items, None


def read_astream(backend, request):
    """Return what ``backend.astream(request)`` yielded, and the ProviderError it raised or None."""

    async def read():
        items = []
        try:
            async for item in backend.astream(request):
                items.append(item)
        except ProviderError as exc:
            return items, exc
        return items, None

    return asyncio.run(read())


def both_ways(setup, script):
    """Script the same reply before stream() and before astream(); return what each gave."""
    script()
    streamed = read_stream(setup.backend, setup.request)
    script()
    return streamed, read_astream(setup.backend, setup.request)


def described(error):
    return type(error), str(error), error.status_code, error.transient, error.request_id


def test_astream_yields_the_chunks_and_the_completion_stream_yields(provider):
    streamed, astreamed = both_ways(
        provider, lambda: provider.server.reply_stream(["Hel", "lo ", "world"], headers=provider.headers)
    )
    assert astreamed == streamed
    (*chunks, completion), error = astreamed
    assert error is None
    assert chunks == ["Hel", "lo ", "world"]
    assert completion.text == "Hello world"
    assert (completion.provider, completion.model) == (provider.request.provider, provider.request.model)
    assert completion.finish_reason == "stop"
    assert completion.input_tokens > 0 and completion.output_tokens == 2
    assert completion.request_id == REQUEST_ID
    assert len(provider.server.requests) == 2


def test_an_error_before_any_text_is_transient(provider):
    streamed, astreamed = both_ways(
        provider, lambda: provider.server.reply_error(503, "overloaded", headers=provider.headers)
    )
    (chunks, error), (achunks, aerror) = streamed, astreamed
    assert chunks == achunks == []
    assert described(aerror) == described(error)
    assert (aerror.status_code, aerror.transient, aerror.request_id) == (503, True, REQUEST_ID)


def test_a_stream_cut_after_some_text_is_final(provider):
    streamed, astreamed = both_ways(
        provider,
        lambda: provider.server.reply_stream(
            ["one ", "two ", "three"], cut_after=2, headers=provider.headers
        ),
    )
    (chunks, error), (achunks, aerror) = streamed, astreamed
    assert chunks == achunks == ["one ", "two "]
    assert described(aerror) == described(error)
    assert isinstance(aerror, ProviderUnavailable) and not aerror.transient
    assert "the stream was cut after 2 chunk(s) of text" in str(aerror)
    assert API_KEY not in str(aerror)


def test_a_stream_that_ends_without_its_end_marker_is_unfinished(provider):
    streamed, astreamed = both_ways(
        provider, lambda: provider.case.unfinished(provider.server, ["one ", "two"], headers=provider.headers)
    )
    (chunks, error), (achunks, aerror) = streamed, astreamed
    assert chunks == achunks == ["one ", "two"]
    assert described(aerror) == described(error)
    assert isinstance(aerror, ProviderUnavailable) and not aerror.transient
    assert "ended before the server finished" in str(aerror)


def test_astream_prompt_retries_an_error_before_any_text(provider, settings):
    """Through the service: its retry loop retries what astream() says is transient."""
    alias, backend_class = provider.request.provider, type(provider.backend)
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    settings.LLM_PROVIDERS = {
        alias: {
            "BACKEND": f"{backend_class.__module__}.{backend_class.__name__}",
            "OPTIONS": provider.backend.options,
            "CIRCUIT_BREAKER": None,
        }
    }
    provider.server.reply_error(503, "overloaded", headers={"Retry-After": "0"})
    provider.server.reply_stream(["Hel", "lo"])

    async def read():
        return [item async for item in astream_prompt("summarize", "hi", provider=alias, retries=1)]

    *chunks, completion = asyncio.run(read())
    assert chunks == ["Hel", "lo"]
    assert (completion.text, completion.attempts) == ("Hello", 2)
    assert len(provider.server.requests) == 2


def test_closing_astream_early_closes_the_connection(provider):
    provider.server.reply_stream(["one ", "two ", "three"], delay_between=30)

    async def first_chunk_then_close():
        chunks = provider.backend.astream(provider.request)
        first = await anext(chunks)
        await chunks.aclose()
        # Waited for with the event loop blocked: aclose() itself must have closed the
        # connection, not left it to a task or a garbage collector that runs later.
        return first, provider.server.wait_for_hangup(timeout=10)

    assert asyncio.run(first_chunk_then_close()) == ("one ", True)


def test_closing_stream_early_closes_the_connection(provider):
    provider.server.reply_stream(["one ", "two ", "three"], delay_between=30)
    chunks = provider.backend.stream(provider.request)
    assert next(chunks) == "one "
    chunks.close()
    assert provider.server.wait_for_hangup(timeout=10)


def test_gemini_blocked_prompt_is_a_final_error_both_ways():
    blocked = b'data: {"promptFeedback": {"blockReason": "SAFETY"}}\r\n\r\n'
    with serving("gemini") as gemini:
        streamed, astreamed = both_ways(
            gemini, lambda: gemini.server.reply_raw(200, blocked, content_type="text/event-stream")
        )
    (chunks, error), (achunks, aerror) = streamed, astreamed
    assert chunks == achunks == []
    assert described(aerror) == described(error)
    assert "blocked the prompt (SAFETY)" in str(aerror) and not aerror.transient


@pytest.fixture
def outbox():
    locmem.reset()
    yield locmem.outbox
    locmem.reset()


def test_locmem_astream_yields_word_by_word_and_records_the_request_once(outbox):
    backend = LocmemProvider("test")
    request = CompletionRequest("summarize", "hi", "", "test", "locmem", 0.5, 50)
    streamed, astreamed = both_ways(
        Setup(None, None, backend, request), lambda: locmem.queue("one two  three")
    )
    assert astreamed == streamed
    (*chunks, completion), error = astreamed
    assert error is None
    assert chunks == ["one ", "two ", " ", "three"]
    assert completion.text == "one two  three"
    assert outbox == [request, request]  # once by stream(), once by astream()


def test_locmem_astream_raises_a_queued_error(outbox):
    backend = LocmemProvider("test")
    request = CompletionRequest("summarize", "hi", "", "test", "locmem", 0.5, 50)
    down = ProviderUnavailable("down", provider="test", transient=True)
    locmem.queue(down)
    assert read_astream(backend, request) == ([], down)


class WholeAnswers(SDKProvider):
    """An SDK backend with no stream reader, as one written before astream() may be."""

    option_names = frozenset({"text"})

    def complete(self, request):
        return Completion(self.options["text"], request.usecase, self.alias, request.model, "stop")

    async def acomplete(self, request):
        return self.complete(request)


@pytest.mark.parametrize(("text", "chunks"), [("all at once", ["all at once"]), ("", [])])
def test_a_backend_without_a_stream_reader_streams_its_completion_whole(text, chunks):
    backend = WholeAnswers("whole", options={"text": text})
    request = CompletionRequest("summarize", "hi", "", "whole", "m", 0.5, 50)
    streamed = read_stream(backend, request)
    assert read_astream(backend, request) == streamed
    (*streamed_chunks, completion), error = streamed
    assert (streamed_chunks, completion.text, error) == (chunks, text, None)
