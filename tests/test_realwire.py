"""Real provider answers, replayed: every case of ``tests/realwire/cases`` through the service.

Each case is a response (or a sequence of them) recorded from OpenAI, Anthropic, Gemini or
an OpenAI-compatible gateway (OpenRouter, Groq); see ``tests/realwire/README.md`` for where
each comes from. A fake server of the provider's kind serves the recorded status, headers
and body, streamed event by event as recorded; the call runs through ``complete_prompt`` or
``stream_prompt`` in simulated time, so a recorded 58 s wait costs nothing and every wait the
call made is known.
"""

import asyncio
import json
from pathlib import Path

import pytest

from llmapp import astream_prompt, complete_prompt, stream_prompt
from llmapp.calls.types import Completion
from llmapp.exceptions import ProviderError, ProviderRefused
from llmapp.models import CompletionEvent
from tests.conftest import API_KEY
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.gemini_server import FakeGeminiServer
from tests.fakes.openai_server import FakeOpenAIServer
from tests.timekeeping import simulated_time  # noqa: F401 (a fixture)

CASES_DIR = Path(__file__).parent / "realwire" / "cases"
CASES = {path.stem: json.loads(path.read_text()) for path in sorted(CASES_DIR.glob("*.json"))}
SERVERS = {"openai": FakeOpenAIServer, "anthropic": FakeAnthropicServer, "gemini": FakeGeminiServer}
BACKENDS = {
    "openai": "llmapp.providers.openai.OpenAIProvider",
    "anthropic": "llmapp.providers.anthropic.AnthropicProvider",
    "gemini": "llmapp.providers.gemini.GeminiProvider",
}
#: The finish reasons llmapp reports (README, "Completions"), from each provider's own.
FINISH_REASONS = {
    "stop": "stop",
    "end_turn": "stop",
    "STOP": "stop",
    "length": "length",
    "max_tokens": "length",
    "MAX_TOKENS": "length",
}
RETRIES = 2
TIMEOUT = 30


def served(case):
    """The responses the server sends, in order; the last one repeats, as the README says."""
    responses = case["responses"]
    return responses + [responses[-1]] * (RETRIES + 1)


def provider_settings(alias, base_url):
    return {
        "BACKEND": BACKENDS[alias],
        "OPTIONS": {"api_key": API_KEY, "base_url": base_url, "timeout": 5},
        "CIRCUIT_BREAKER": None,
    }


@pytest.fixture
def replay(settings):
    """Start a fake server of ``case``'s provider that serves its recorded responses."""
    started = []

    def start(case, alias="primary"):
        server = SERVERS[case["provider"]]().start()
        started.append(server)
        for response in served(case):
            server.reply_recorded(response["status"], response["headers"], response["body"])
        settings.LLM_PROVIDERS = {
            **settings.LLM_PROVIDERS,
            alias: provider_settings(case["provider"], server.base_url),
        }
        return server

    settings.LLM_EVENTSTREAM_OPTIONS = {"synchronous": True}
    yield start
    for server in started:
        server.stop()


def call(case, **overrides):
    """Run the case's call (streamed when it was recorded streamed); return (text chunks, Completion)."""
    arguments = {"provider": "primary", "retries": RETRIES, "timeout": TIMEOUT, "fallbacks": []} | overrides
    if not case["stream"]:
        return None, complete_prompt("summarize", "Say hello.", **arguments)
    items = list(stream_prompt("summarize", "Say hello.", **arguments))
    assert isinstance(items[-1], Completion)
    return items[:-1], items[-1]


def answered(case):
    return "text" in case["expect"] and not case.get("expect_refused")


@pytest.mark.django_db
@pytest.mark.parametrize("name", [name for name, case in CASES.items() if answered(case)])
def test_a_recorded_answer_is_read_as_the_provider_meant_it(replay, simulated_time, name):  # noqa: F811
    case = CASES[name]
    expect = case["expect"]
    server = replay(case)
    chunks, completion = call(case)
    assert completion.text == expect["text"]
    if chunks is not None:
        assert "".join(chunks) == expect["text"]
    assert completion.input_tokens == expect["input_tokens"]
    assert completion.output_tokens == expect["output_tokens"]
    assert completion.finish_reason == FINISH_REASONS[expect["finish_reason"]]
    if expect.get("request_id"):
        assert completion.request_id == expect["request_id"]
    assert len(server.requests) == expect.get("requests", 1)
    assert completion.attempts == expect.get("requests", 1)
    if case.get("expect_retry_after") is not None:
        assert simulated_time.waits == [case["expect_retry_after"]]
    elif expect.get("requests", 1) == 1:
        assert simulated_time.waits == []
    [event] = CompletionEvent.objects.all()
    assert event.status == "ok" and event.attempts == completion.attempts


@pytest.mark.django_db
@pytest.mark.parametrize("name", [name for name, case in CASES.items() if "status" in case["expect"]])
def test_a_recorded_error_is_reported_and_retried_only_when_it_can_pass(
    replay,
    simulated_time,  # noqa: F811
    name,
):
    case = CASES[name]
    expect = case["expect"]
    server = replay(case)
    with pytest.raises(ProviderError) as raised:
        call(case)
    error = raised.value
    assert error.status_code == expect["status"]
    if expect.get("request_id"):
        assert error.request_id == expect["request_id"]
    # The provider's own words, whatever the SDK made of them; the first line is enough.
    assert expect["message"].splitlines()[0][:60] in str(error)
    assert ".;" not in str(error) and API_KEY not in str(error)
    retried = expect["status"] in (429, 529)
    assert error.transient is retried  # a 429 is never called permanent, even when not retried
    wait = case.get("expect_retry_after")
    if wait is not None and wait > TIMEOUT:
        # A wait longer than the deadline: that route is given up at once, no sleep.
        assert len(server.requests) == 1 and simulated_time.waits == []
    else:
        assert len(server.requests) == (RETRIES + 1 if retried else 1)
    [event] = CompletionEvent.objects.all()
    assert event.status == "error"


@pytest.mark.django_db
@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.get("expect_refused")])
def test_a_recorded_refusal_is_an_error_that_is_not_retried(replay, simulated_time, name):  # noqa: F811
    case = CASES[name]
    server = replay(case)
    with pytest.raises(ProviderRefused) as raised:
        call(case)
    assert not raised.value.transient
    assert len(server.requests) == 1 and simulated_time.waits == []
    assert raised.value.finish_reason == case["expect"]["finish_reason"]
    [event] = CompletionEvent.objects.all()
    assert event.status == "refused"


FALLBACK_ANSWER = CASES["openai-chat-gpt4o"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["anthropic-stream-refusal", "gemini-generate-safety-blocked"])
def test_a_refusal_moves_to_the_fallback(replay, simulated_time, name):  # noqa: F811
    case = CASES[name]
    primary = replay(case)
    fallback = replay(FALLBACK_ANSWER, alias="fallback")
    _, completion = call(case, fallbacks=["fallback"])
    assert completion.text == FALLBACK_ANSWER["expect"]["text"]
    assert completion.provider == "fallback"
    assert len(primary.requests) == 1 and len(fallback.requests) == 1


@pytest.mark.django_db
def test_a_wait_longer_than_the_deadline_gives_up_the_route_not_the_call(replay, simulated_time):  # noqa: F811
    case = CASES["gemini-429-retryinfo-58s"]
    primary = replay(case)
    fallback = replay(FALLBACK_ANSWER, alias="fallback")
    _, completion = call(case, fallbacks=["fallback"], timeout=30)
    assert completion.text == FALLBACK_ANSWER["expect"]["text"]
    assert len(primary.requests) == 1 and len(fallback.requests) == 1
    assert simulated_time.waits == []


@pytest.mark.django_db
def test_when_no_route_is_left_the_error_reports_each_routes_failure(replay, simulated_time):  # noqa: F811
    case = CASES["gemini-429-retryinfo-58s"]
    replay(case)
    replay(CASES["openai-404-groq-model-not-found"], alias="fallback")
    with pytest.raises(ProviderError) as raised:
        call(case, fallbacks=["fallback"], timeout=30)
    message = str(raised.value)
    assert "primary" in message and "58s" in message
    assert "fallback" in message and "HTTP 404" in message


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("name", ["openai-chat-gpt4o", "anthropic-message", "gemini-generate-system"])
def test_a_stream_answered_with_one_whole_json_body_is_that_answer(
    replay,
    simulated_time,  # noqa: F811
    name,
    asynchronous,
):
    # What LiteLLM's proxy does on /v1/messages: a streamed request, a plain JSON answer.
    case = CASES[name]
    server = replay(case)
    arguments = {"provider": "primary", "retries": RETRIES, "timeout": TIMEOUT, "fallbacks": []}
    if asynchronous:

        async def read():
            return [item async for item in astream_prompt("summarize", "Say hello.", **arguments)]

        items = asyncio.run(read())
    else:
        items = list(stream_prompt("summarize", "Say hello.", **arguments))
    *chunks, completion = items
    assert chunks == [case["expect"]["text"]] and completion.text == case["expect"]["text"]
    assert completion.output_tokens == case["expect"]["output_tokens"]
    assert completion.finish_reason == "stop"
    assert len(server.requests) == 1 and completion.attempts == 1


@pytest.mark.django_db(transaction=True)
def test_a_refusal_moves_to_the_fallback_on_the_event_loop_too(replay, simulated_time):  # noqa: F811
    primary = replay(CASES["anthropic-stream-refusal"])
    fallback = replay(FALLBACK_ANSWER, alias="fallback")
    arguments = {"provider": "primary", "retries": RETRIES, "timeout": TIMEOUT, "fallbacks": ["fallback"]}

    async def read():
        return [item async for item in astream_prompt("summarize", "Say hello.", **arguments)]

    *chunks, completion = asyncio.run(read())
    assert chunks == [FALLBACK_ANSWER["expect"]["text"]] and completion.provider == "fallback"
    assert len(primary.requests) == 1 and len(fallback.requests) == 1


@pytest.mark.django_db
def test_a_refusal_then_a_fallback_that_fails_otherwise_reports_both(replay, simulated_time):  # noqa: F811
    replay(CASES["gemini-generate-safety-blocked"])
    replay(CASES["openai-400-unsupported-value"], alias="fallback")
    with pytest.raises(ProviderError) as raised:
        call(CASES["gemini-generate-safety-blocked"], fallbacks=["fallback"])
    assert not isinstance(raised.value, ProviderRefused) and raised.value.status_code == 400
    message = str(raised.value)
    assert message.index("HTTP 400") < message.index("before it, primary:")
    assert "the model refused to answer (SAFETY)" in message
    [event] = CompletionEvent.objects.all()
    assert event.status == "error" and "refused" in event.error_message


@pytest.mark.django_db
def test_refusals_count_with_the_errors_in_the_usage_figures(replay, simulated_time, settings):  # noqa: F811
    from llmapp.tsdb import get_tsdb

    settings.LLM_TSDB = "database"
    replay(CASES["gemini-generate-safety-blocked"])
    with pytest.raises(ProviderRefused):
        call(CASES["gemini-generate-safety-blocked"])
    usage = get_tsdb().get_usage(["summarize"])["summarize"]
    assert (usage.calls, usage.errors) == (1, 1)


@pytest.mark.django_db
def test_a_gateways_upstream_detail_is_kept_and_redacted_before_it_is_cut(replay, simulated_time):  # noqa: F811
    # OpenRouter passes its upstream's error on in metadata.raw; an echoing upstream may hold
    # the key anywhere, even where the message is cut.
    raw = "upstream said: " + "x" * 950 + f" key={API_KEY} and more"  # the key across the cut
    error = {"code": 429, "message": "Provider returned error", "metadata": {"raw": raw}}
    response = {"status": 400, "headers": {}, "body": json.dumps({"error": error})}
    server = replay({**CASES["openai-429-openrouter"], "responses": [response]})
    with pytest.raises(ProviderError) as raised:
        call(CASES["openai-429-openrouter"])
    message = str(raised.value)
    assert "Provider returned error: upstream said: xxx" in message
    assert API_KEY[:6] not in message and len(server.requests) == 1


@pytest.mark.django_db
@pytest.mark.parametrize("as_list", [False, True], ids=["object", "list"])
def test_googles_retry_info_through_an_openai_compatible_gateway_is_the_wait(
    settings,
    simulated_time,  # noqa: F811
    as_list,
):
    # A gateway in front of Gemini passes Google's error body on, RetryInfo and all; Google's
    # own OpenAI-compatible endpoint wraps it in a list.
    [response, *_] = CASES["gemini-429-retryinfo-58s"]["responses"]
    body = json.loads(response["body"])
    with FakeOpenAIServer() as server:
        server.reply_recorded(
            429, {"content-type": "application/json"}, json.dumps([body] if as_list else body)
        )
        settings.LLM_PROVIDERS = {
            **settings.LLM_PROVIDERS,
            "gateway": provider_settings("openai", server.base_url),
        }
        with pytest.raises(ProviderError) as raised:
            complete_prompt("summarize", "hi", provider="gateway", retries=0, timeout=TIMEOUT, fallbacks=[])
    assert (raised.value.status_code, raised.value.transient) == (429, True)
    assert raised.value.retry_after == 58
    assert str(raised.value).startswith("You exceeded your current quota")


@pytest.mark.django_db
def test_a_model_the_server_does_not_have_moves_on_and_opens_that_models_circuit_only(
    replay,
    simulated_time,  # noqa: F811
    settings,
):
    case = CASES["openai-404-groq-model-not-found"]
    primary = replay(case)
    replay(FALLBACK_ANSWER, alias="fallback")
    breaker = {"FAILURES": 1, "COOLDOWN": 30}
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "primary": {**settings.LLM_PROVIDERS["primary"], "CIRCUIT_BREAKER": breaker},
    }
    for _ in range(2):
        _, completion = call(case, fallbacks=["fallback"], model="non-existent")
        assert completion.provider == "fallback" and completion.text == FALLBACK_ANSWER["expect"]["text"]
    # The second call did not ask for the missing model again...
    assert len(primary.requests) == 1
    # ...but another model behind the same alias is still asked: the alias's circuit is closed.
    call(case, fallbacks=["fallback"], model="llama-3.3-70b")
    assert [request.body["model"] for request in primary.requests] == ["non-existent", "llama-3.3-70b"]
    assert simulated_time.waits == []  # a missing model is not retried


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "odd", "details": 5}},
        {"error": {"message": "odd", "details": [5, "x", {"@type": 3}]}},
        {"error": {"message": "odd", "code": ["content_filter"]}},
        ["not", "an", "object"],
        "plain text",
    ],
)
def test_an_odd_error_body_is_still_one_provider_error(settings, simulated_time, body):  # noqa: F811
    with FakeOpenAIServer() as server:
        server.reply_recorded(400, {"content-type": "application/json"}, json.dumps(body))
        settings.LLM_PROVIDERS = {
            **settings.LLM_PROVIDERS,
            "odd": provider_settings("openai", server.base_url),
        }
        with pytest.raises(ProviderError) as raised:
            complete_prompt("summarize", "hi", provider="odd", retries=0, timeout=TIMEOUT, fallbacks=[])
    assert raised.value.status_code == 400 and not raised.value.transient
