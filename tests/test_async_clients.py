"""An async SDK client lives as long as its event loop: closed with it, never kept once it is gone.

``asyncio.run()`` makes a loop per call, and so does ``async_to_sync`` under WSGI: each
call's client, and its open connections, must go with its loop. Counted for real: the
open file descriptors of this process (Linux's /proc/self/fd) and the SDK clients alive.
"""

import asyncio
import gc
import os
import time
from importlib.metadata import version

import pytest
from asgiref.sync import async_to_sync

from llmapp import acomplete_prompt, astream_prompt
from llmapp.providers.anthropic import AnthropicProvider
from llmapp.providers.base import _release
from llmapp.providers.gemini import GeminiProvider
from llmapp.providers.openai import OpenAIProvider
from tests.conftest import API_KEY
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.gemini_server import FakeGeminiServer
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")

PROVIDERS = {
    "openai": (OpenAIProvider, FakeOpenAIServer, "openai.AsyncOpenAI"),
    "anthropic": (AnthropicProvider, FakeAnthropicServer, "anthropic.AsyncAnthropic"),
    "gemini": (GeminiProvider, FakeGeminiServer, "google.genai.client.AsyncClient"),
}
CALLS = 30
#: Open files a few calls may leave: the last loop's, the fake server's end of a connection
#: it has not yet seen closed...; far below the two per call that a leak leaves.
SLACK = 6


@pytest.fixture(params=list(PROVIDERS))
def alias(request, settings):
    """Provider ``request.param``, the only one, on its fake server."""
    backend_class, server_class, _ = PROVIDERS[request.param]
    with server_class() as server:
        settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
        settings.LLM_PROVIDERS = {
            request.param: {
                "BACKEND": f"{backend_class.__module__}.{backend_class.__name__}",
                "OPTIONS": {"api_key": API_KEY, "base_url": server.base_url, "timeout": 3},
                "CIRCUIT_BREAKER": None,
            }
        }
        yield request.param


def open_files():
    return len(os.listdir("/proc/self/fd"))


def live_clients(alias):
    """Count the SDK's async clients that are still reachable."""
    module, _, name = PROVIDERS[alias][2].rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    gc.collect()
    # type(), not isinstance(): that would evaluate the lazy objects some tests leave behind.
    return sum(issubclass(type(thing), cls) for thing in gc.get_objects())


def settled(count, at_most, wait=10):
    """Return ``count()`` once it is at most ``at_most`` or ``wait`` seconds have passed.

    The fake server closes its end of a connection on its own thread, a moment after the client.
    """
    give_up = time.monotonic() + wait
    while (value := count()) > at_most and time.monotonic() < give_up:
        time.sleep(0.05)
    return value


async def complete(alias):
    return await acomplete_prompt("summarize", "hi", provider=alias, fallbacks=[])


async def read_stream(alias):
    return [item async for item in astream_prompt("summarize", "hi", provider=alias, fallbacks=[])]


def on_a_new_loop(call):
    """Run ``call`` on a loop that a manual run makes and closes, without shutting its async generators."""

    def run(alias):
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(call(alias))
        finally:
            loop.close()

    return run


RUNNERS = {
    "asyncio.run": lambda call: lambda alias: asyncio.run(call(alias)),
    # What a WSGI view calling async code does: asgiref runs each call on a loop of its own.
    "async_to_sync": async_to_sync,
}


@pytest.mark.parametrize("runner", list(RUNNERS))
@pytest.mark.parametrize("call", [complete, read_stream], ids=["acomplete", "astream"])
def test_a_loop_per_call_leaves_no_client_and_no_socket_behind(alias, runner, call):
    run = RUNNERS[runner](call)
    run(alias)  # the SDK imported, its first client built and closed
    clients, files = live_clients(alias), open_files()
    for _ in range(CALLS):
        assert run(alias)
    # Closed with their loops: no garbage collection needed for the sockets to be closed.
    assert settled(open_files, files + SLACK) <= files + SLACK
    assert live_clients(alias) <= clients + 1


def test_a_client_whose_loop_was_closed_without_shutting_down_is_dropped(alias, request):
    if alias == "gemini" and _release(version("google-genai")) < (3, 4):
        # Seen in the oldest-SDK run of CI (.ci/run); asyncio.run() and async_to_sync are not
        # affected. Strict: should it pass there, this note is out of date.
        reason = "google-genai before 3.4 keeps such a client alive after llmapp drops it"
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    run = on_a_new_loop(complete)
    run(alias)
    clients, files = live_clients(alias), open_files()
    for _ in range(CALLS):
        assert run(alias)
    # Nothing could close these clients on their loops: the next client drops them, and the
    # garbage collector closes their sockets.
    assert live_clients(alias) <= clients + 1
    assert settled(open_files, files + SLACK) <= files + SLACK


def test_a_loop_keeps_one_client_until_it_shuts_down(alias):
    async def calls():
        for _ in range(3):
            await complete(alias)
        await read_stream(alias)
        return live_clients(alias)

    clients = live_clients(alias)
    assert asyncio.run(calls()) == clients + 1
    assert live_clients(alias) == clients
