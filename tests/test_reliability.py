"""Faults against the fake OpenAI server: retries, one deadline, fallbacks, the circuit breaker.

Each test asserts how many requests the server saw, and the waits the retry loop made in
simulated time (``simulated_time``); a few, whose server hangs for real, bound the time.
"""

import io
import socket
import time

import pytest
from django.core.management import call_command

from llmapp import acomplete_prompt, complete_prompt, stream_prompt
from llmapp.calls import circuit, sharedstate
from llmapp.exceptions import ProviderError, ProviderTimeout, ProviderUnavailable
from llmapp.models import CompletionEvent
from llmapp.providers import locmem
from tests.conftest import API_KEY
from tests.timekeeping import simulated_time  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture
def primary(openai_provider, settings):
    """summarize on the fake OpenAI server, with the locmem 'test' provider as its fallback."""
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai", "TIMEOUT": 10, "RETRIES": 2}}
    return openai_provider


def test_429_with_retry_after_then_success(primary, simulated_time):  # noqa: F811
    primary.reply_error(429, "slow down", headers={"Retry-After": "1"})
    completion = complete_prompt("summarize", "hi")
    assert len(primary.requests) == 2
    assert simulated_time.waits == [1.0]
    assert completion.attempts == 2 and completion.provider == "openai"
    assert CompletionEvent.objects.get().attempts == 2


def test_retry_after_as_an_http_date(primary, simulated_time):  # noqa: F811
    from email.utils import formatdate

    primary.reply_error(503, "maintenance", headers={"Retry-After": formatdate(time.time() + 3, usegmt=True)})
    complete_prompt("summarize", "hi")
    assert len(primary.requests) == 2
    [wait] = simulated_time.waits
    assert 1 < wait <= 3  # an HTTP date has whole-second precision, and the call took a moment


def test_500_500_then_success_with_jittered_backoff(primary, simulated_time):  # noqa: F811
    primary.reply_error(500, "oops")
    primary.reply_error(500, "oops again")
    completion = complete_prompt("summarize", "hi")
    assert len(primary.requests) == 3
    # Full jitter: a random wait up to 0.5s, then up to 1s (a wait of 0 is no wait).
    assert len(simulated_time.waits) <= 2 and all(0 < wait <= 1.0 for wait in simulated_time.waits)
    assert completion.attempts == 3


def test_a_hanging_server_ends_within_the_deadline_whatever_the_retries(primary):
    for _ in range(6):
        primary.hang(30)
    with pytest.raises(ProviderTimeout) as raised:
        complete_prompt("summarize", "hi", timeout=1.5, retries=5)
    assert primary.wait_for_hangup(5)  # the client gave up on the answer; the server did not end it
    assert len(primary.requests) == 1  # the first attempt used up the whole deadline
    assert "1.5s deadline of use case 'summarize' passed after 1 attempt(s)" in str(raised.value)


def test_connection_refused_is_retried_then_reported(settings, simulated_time):  # noqa: F811
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.LLM_PROVIDERS = {
        "default": {
            "BACKEND": "llmapp.providers.openai.OpenAIProvider",
            "OPTIONS": {"base_url": f"http://127.0.0.1:{port}/v1", "api_key": API_KEY},
        }
    }
    with pytest.raises(ProviderUnavailable, match="cannot reach"):
        complete_prompt("summarize", "hi", retries=2)
    assert len(simulated_time.waits) <= 2 and all(0 < wait <= 1.0 for wait in simulated_time.waits)
    event = CompletionEvent.objects.get()
    assert (event.status, event.attempts, event.error_type) == ("error", 3, "ProviderUnavailable")


def test_malformed_json_fails_at_once(primary):
    primary.reply_raw(200, b'{"choices": [')
    with pytest.raises(ProviderError, match="not valid JSON"):
        complete_prompt("summarize", "hi")
    assert len(primary.requests) == 1


def test_stream_cut_before_any_text_is_retried(primary):
    primary.reply_stream(["never ", "sent"], cut_after=0)
    primary.reply_stream(["second ", "try"])
    *chunks, completion = stream_prompt("summarize", "hi")
    assert chunks == ["second ", "try"]
    assert completion.attempts == 2
    assert len(primary.requests) == 2


def test_stream_cut_half_way_is_not_retried(primary):
    primary.reply_stream(["one ", "two ", "three ", "four"], cut_after=2)
    received = []
    with pytest.raises(ProviderUnavailable, match="cut after 2 chunk"):
        received.extend(stream_prompt("summarize", "hi"))
    assert received == ["one ", "two "]
    assert len(primary.requests) == 1


def test_401_is_not_retried(primary, simulated_time):  # noqa: F811
    primary.reply_error(401, "Incorrect API key provided")
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi")
    assert len(primary.requests) == 1
    assert simulated_time.waits == []
    assert raised.value.status_code == 401 and "check the provider's api_key" in str(raised.value)


def test_retry_after_longer_than_the_deadline_ends_the_call_at_once(primary, simulated_time):  # noqa: F811
    primary.reply_error(429, "quota", headers={"Retry-After": "30"})
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", timeout=5)
    assert simulated_time.waits == []
    assert len(primary.requests) == 1
    assert "asked to retry after 30s, more than the" in str(raised.value)
    assert "of the 5s deadline" in str(raised.value)


def test_primary_failing_falls_back_and_the_event_says_so(primary, settings):
    settings.LLM_USECASES = {
        "summarize": {"PROVIDER": "openai", "RETRIES": 1, "FALLBACKS": ["test:backup-model"]}
    }
    primary.reply_error(503, "down")
    primary.reply_error(503, "still down")
    locmem.queue("from the fallback")
    completion = complete_prompt("summarize", "hi")
    assert len(primary.requests) == 2
    assert (completion.text, completion.provider, completion.model, completion.attempts) == (
        "from the fallback",
        "test",
        "backup-model",
        3,
    )
    event = CompletionEvent.objects.get()
    assert (event.provider, event.model, event.attempts, event.status) == ("test", "backup-model", 3, "ok")


def test_non_transient_failure_does_not_fall_back(primary, settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai", "FALLBACKS": ["test"]}}
    primary.reply_error(400, "bad request")
    with pytest.raises(ProviderError, match="HTTP 400"):
        complete_prompt("summarize", "hi")
    assert locmem.outbox == []


def test_open_circuit_sends_calls_straight_to_the_fallback(primary, settings, monkeypatch):
    settings.LLM_PROVIDERS["openai"]["CIRCUIT_BREAKER"] = {"FAILURES": 2, "COOLDOWN": 1}
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai", "RETRIES": 0, "FALLBACKS": ["test"]}}
    primary.reply_error(500, "one")
    primary.reply_error(500, "two")
    complete_prompt("summarize", "first")  # fails on openai, served by test
    complete_prompt("summarize", "second")  # the second consecutive failure opens the circuit
    assert len(primary.requests) == 2
    completion = complete_prompt("summarize", "third")
    assert len(primary.requests) == 2  # nothing reached the primary
    assert (completion.provider, completion.attempts) == ("test", 1)

    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai", "RETRIES": 0}}
    with pytest.raises(ProviderUnavailable, match="circuit of provider\\(s\\) openai is open"):
        complete_prompt("summarize", "no fallback")
    assert len(primary.requests) == 2

    now = time.time()
    monkeypatch.setattr(circuit, "wall_clock", lambda: now + 1.05)
    # The cool-down has passed: one probe goes through, succeeds and closes the circuit.
    assert complete_prompt("summarize", "probe").provider == "openai"
    assert complete_prompt("summarize", "closed").provider == "openai"
    assert len(primary.requests) == 4


def test_cli_timeout_retries_and_no_fallback(primary, settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai", "FALLBACKS": ["test"]}}
    primary.reply_error(500, "down")
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(Exception, match="HTTP 500"):
        call_command(
            "llm", "summarize", "-m", "hi", "--retries", "0", "--no-fallback", stdout=out, stderr=err
        )
    assert len(primary.requests) == 1 and locmem.outbox == []

    primary.hang(10)
    with pytest.raises(Exception, match="deadline"):
        call_command("llm", "summarize", "-m", "hi", "--timeout", "0.5", "--no-fallback", stdout=out)
    assert primary.wait_for_hangup(5)


def test_the_deadline_holds_while_a_stream_trickles(primary, settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai", "TIMEOUT": 1, "RETRIES": 0}}
    primary.reply_stream(["one ", "two ", "three ", "four ", "five ", "six"], delay_between=0.5)
    received = []
    with pytest.raises(ProviderTimeout, match="1s deadline of use case 'summarize'"):
        received.extend(stream_prompt("summarize", "hi"))
    assert 1 <= len(received) < 6
    assert primary.wait_for_hangup(5)  # cut at the deadline, not read to its end


def test_a_circuit_that_opens_mid_call_sends_the_call_to_the_fallback(primary, settings):
    settings.LLM_PROVIDERS["openai"]["CIRCUIT_BREAKER"] = {"FAILURES": 2, "COOLDOWN": 30}
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai", "RETRIES": 5, "FALLBACKS": ["test"]}}
    for _ in range(6):
        primary.reply_error(503, "down")
    completion = complete_prompt("summarize", "hi")
    assert len(primary.requests) == 2  # the second failure opened the circuit: no more retries there
    assert (completion.provider, completion.attempts) == ("test", 3)


@pytest.mark.django_db(transaction=True)
def test_async_calls_work_with_a_database_cache(settings):
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "llm_cache"}
    }
    call_command("createcachetable", verbosity=0)
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}

    async def call():
        try:
            return await acomplete_prompt("summarize", "hi")
        finally:
            await sync_to_async(connections.close_all)()

    assert asyncio.run(call()).text == "locmem answer to: hi"


@pytest.mark.django_db(transaction=True)
def test_a_database_caches_connection_is_closed_before_its_answer(settings, closes):
    # A process may exit as soon as it has the answer: a SQLite connection closed after
    # that, as the interpreter finalizes, crashes it.
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "llm_cache"}
    }
    call_command("createcachetable", verbosity=0)
    state = sharedstate.get("default", "test")
    for count in range(1, 11):
        assert state.incr("closed-first") == count
        assert closes.count("llmapp-cache-default") == count


def test_a_rate_limited_model_opens_its_own_circuit_not_its_gateways(primary, settings):
    # A gateway (LiteLLM, OpenRouter) serves many models under one alias.
    settings.LLM_PROVIDERS["openai"]["CIRCUIT_BREAKER"] = {"FAILURES": 1, "COOLDOWN": 60}
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai", "RETRIES": 0}}
    primary.reply_error(429, "gpt-4o is rate limited")
    with pytest.raises(ProviderError, match="HTTP 429"):
        complete_prompt("summarize", "first", model="gpt-4o")
    with pytest.raises(ProviderUnavailable, match="circuit of provider\\(s\\) openai model 'gpt-4o' is open"):
        complete_prompt("summarize", "second", model="gpt-4o")
    assert len(primary.requests) == 1
    # Another model behind the same alias is not blocked.
    assert complete_prompt("summarize", "third", model="gpt-4o-mini").attempts == 1
    assert len(primary.requests) == 2


def test_a_failing_server_opens_the_circuit_of_every_model_behind_it(primary, settings):
    settings.LLM_PROVIDERS["openai"]["CIRCUIT_BREAKER"] = {"FAILURES": 1, "COOLDOWN": 60}
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai", "RETRIES": 0}}
    primary.reply_error(502, "bad gateway")
    with pytest.raises(ProviderError, match="HTTP 502"):
        complete_prompt("summarize", "first", model="gpt-4o")
    with pytest.raises(ProviderUnavailable, match="circuit of provider\\(s\\) openai is open"):
        complete_prompt("summarize", "second", model="gpt-4o-mini")
    assert len(primary.requests) == 1
