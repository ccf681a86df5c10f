"""The async path: no thread hop on the way, circuits awaited, streams, and failures at once."""

import asyncio
import sqlite3
import textwrap
import threading

import pytest

from llmapp import acomplete_prompt, astream_prompt, eventstream
from llmapp.calls.circuit import CircuitBreaker
from llmapp.calls.types import Completion
from llmapp.eventstream.base import EventStream
from llmapp.exceptions import ProviderError
from llmapp.models import CompletionEvent
from llmapp.providers import locmem
from tests.services import closed_port


class ThreadRecordingStream(EventStream):
    """Remember on which thread each event was recorded."""

    blocking = False
    threads = []

    def record(self, event):
        self.threads.append(threading.current_thread())


@pytest.fixture
def recorded_on(settings):
    ThreadRecordingStream.threads = []
    settings.LLM_EVENTSTREAM = f"{__name__}.ThreadRecordingStream"
    settings.LLM_TSDB = "null"
    return ThreadRecordingStream.threads


def run_on_loop(coroutine):
    """Run ``coroutine`` on a new loop; return its result and the loop's thread."""

    async def main():
        return await coroutine, threading.current_thread()

    return asyncio.run(main())


def test_a_call_is_recorded_on_the_event_loop_without_a_thread_hop(recorded_on):
    completion, loop_thread = run_on_loop(acomplete_prompt("summarize", "hi", provider="test"))
    assert completion.text == "locmem answer to: hi"
    assert recorded_on == [loop_thread]


def test_a_stream_that_blocks_is_recorded_off_the_event_loop(recorded_on):
    ThreadRecordingStream.blocking = True
    try:
        _, loop_thread = run_on_loop(acomplete_prompt("summarize", "hi", provider="test"))
    finally:
        ThreadRecordingStream.blocking = False
    assert len(recorded_on) == 1 and recorded_on[0] is not loop_thread


def test_a_failed_async_call_is_retried_then_recorded(recorded_on):
    locmem.queue(ProviderError("busy", provider="test", status_code=503, transient=True, retry_after=0), "ok")
    completion, _ = run_on_loop(acomplete_prompt("summarize", "hi", provider="test", retries=1))
    assert (completion.text, completion.attempts) == ("ok", 2)
    assert len(locmem.outbox) == 2


def test_an_open_circuit_is_awaited_and_sends_the_call_to_the_fallback(settings, recorded_on):
    settings.LLM_PROVIDERS = settings.LLM_PROVIDERS | {
        "test": {"BACKEND": "llmapp.providers.locmem.LocmemProvider", "CIRCUIT_BREAKER": {"FAILURES": 1}}
    }
    locmem.queue(ProviderError("down", provider="test", status_code=503, transient=True))
    with pytest.raises(ProviderError):
        run_on_loop(acomplete_prompt("summarize", "hi", provider="test", retries=0))
    assert asyncio.run(CircuitBreaker("test", 1, 30).aallow()) is False
    completion, _ = run_on_loop(
        acomplete_prompt("summarize", "hi", provider="test", retries=0, fallbacks=["default"])
    )
    assert completion.provider == "default"
    assert len(locmem.outbox) == 1  # the open circuit sent nothing more to "test"


def test_astream_prompt_yields_the_chunks_then_the_completion(recorded_on):
    async def read():
        return [item async for item in astream_prompt("summarize", "one two three", provider="test")]

    items = asyncio.run(read())
    *chunks, completion = items
    assert "".join(chunks) == completion.text == "locmem answer to: one two three"
    assert isinstance(completion, Completion) and len(chunks) > 1
    assert len(recorded_on) == 1


@pytest.mark.django_db(transaction=True)
def test_an_abandoned_async_stream_is_recorded_once(settings):
    settings.LLM_EVENTSTREAM_OPTIONS = {"synchronous": False}

    async def read_one():
        stream = astream_prompt("summarize", "one two three", provider="test")
        first = await anext(stream)
        await stream.aclose()
        return first

    assert asyncio.run(read_one()) == "locmem "
    assert eventstream.flush(timeout=10)
    assert list(CompletionEvent.objects.values_list("status", "error_type")) == [("error", "StreamAbandoned")]


# Twenty calls fail at once, in a process that has not imported sentry_sdk yet.
AT_ONCE = """
import threading
from llmapp import complete_prompt, eventstream
from llmapp.exceptions import ProviderError

start = threading.Barrier(20)

def call():
    start.wait()
    try:
        complete_prompt("summarize", "hi", provider="openai", retries=0)
    except ProviderError:
        pass

threads = [threading.Thread(target=call) for _ in range(20)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
eventstream.flush(timeout=30)
"""


def test_calls_that_fail_at_once_each_keep_their_frames(manage):
    env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1", "OPENAI_API_KEY": "sk-test-key-0000"}
    result = manage("shell", "-c", textwrap.dedent(AT_ONCE), env=env)
    assert result.returncode == 0, result.stderr
    assert "Could not capture the frames" not in result.stderr
    with sqlite3.connect(manage.database) as db:
        rows = db.execute("SELECT error_type, exception IS NOT NULL FROM llmapp_completionevent").fetchall()
    assert rows == [("ProviderUnavailable", 1)] * 20
