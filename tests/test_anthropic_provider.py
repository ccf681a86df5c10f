"""The anthropic provider against a fake Anthropic Messages API server on 127.0.0.1."""

import dataclasses
import json
import sys
from email.utils import format_datetime

import pytest

from llmapp import complete_prompt, stream_prompt
from llmapp.calls.types import CompletionRequest
from llmapp.exceptions import (
    ConfigurationError,
    ImproperlyInstalled,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from llmapp.providers.anthropic import DEFAULT_MODEL, AnthropicProvider
from tests.conftest import API_KEY
from tests.fakes.anthropic_server import fake_anthropic  # noqa: F401
from tests.fakes.output_types import TICKET_SCHEMA

BACKEND = "llmapp.providers.anthropic.AnthropicProvider"


@pytest.fixture
def anthropic_provider(settings, fake_anthropic):  # noqa: F811
    """Point an 'anthropic' provider at the fake server, with no database; return the server.

    Its circuit breaker is off: its state lives in the cache, across tests.
    """
    settings.LLM_EVENTSTREAM = "null"
    settings.LLM_TSDB = "null"
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "anthropic": {
            "BACKEND": BACKEND,
            "OPTIONS": {"api_key": API_KEY, "base_url": fake_anthropic.base_url, "timeout": 3},
            "CIRCUIT_BREAKER": None,
        },
    }
    return fake_anthropic


def sent_key(request):
    """Return the API key a recorded request carried, in whichever header this SDK version uses."""
    if "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return key if scheme == "Bearer" else None


def assert_no_key(error):
    for text in (str(error), repr(error), error.reason):
        assert API_KEY not in text
        assert API_KEY[-12:] not in text


def test_request_body_carries_model_system_message_and_limits(anthropic_provider):
    completion = complete_prompt(
        "summarize", "Ship it on Friday.", provider="anthropic", temperature=0.2, max_output_tokens=42
    )
    [request] = anthropic_provider.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert sent_key(request) == API_KEY
    assert request.headers["anthropic-version"]
    body = request.body
    assert body["model"] == DEFAULT_MODEL
    assert "summary" in body["system"]
    assert body["messages"] == [{"role": "user", "content": "Ship it on Friday."}]
    assert body["max_tokens"] == 42
    assert "stream" not in body
    assert completion.text == "Fake answer to: Ship it on Friday."
    assert (completion.provider, completion.model, completion.finish_reason) == (
        "anthropic",
        DEFAULT_MODEL,
        "stop",
    )
    assert completion.input_tokens > 3 and completion.output_tokens == 7
    assert completion.request_id.startswith("req_fake_")


def test_temperature_is_sent_only_if_the_sdk_takes_one(anthropic_provider):
    from llmapp.providers import providers

    complete_prompt("summarize", "hi", provider="anthropic", temperature=0.2)
    backend = providers["anthropic"]
    body = anthropic_provider.requests[0].body
    if backend.takes_temperature:
        assert body["temperature"] == 0.2  # Anthropic's range is 0-1 too: sent as is
    else:
        assert "temperature" not in body  # the SDK (API version 2026-10-21+) has no sampling parameters


def test_temperature_maps_one_to_one_onto_anthropics_range():
    backend = AnthropicProvider("a", options={"api_key": API_KEY})
    backend.takes_temperature = True
    request = CompletionRequest("summarize", "hi", "", "a", DEFAULT_MODEL, 0.35, 10)
    assert backend.build_payload(request)["temperature"] == 0.35
    backend.takes_temperature = False
    assert "temperature" not in backend.build_payload(request)


def test_no_system_prompt_sends_no_system_parameter(anthropic_provider):
    complete_prompt("summarize", "hi", provider="anthropic", prompt="")
    assert "system" not in anthropic_provider.requests[0].body


def test_usage_stop_reason_and_model_come_from_the_answer(anthropic_provider):
    anthropic_provider.reply("Short.", stop_reason="max_tokens", input_tokens=11, output_tokens=2)
    completion = complete_prompt("summarize", "hi", provider="anthropic", model="claude-haiku-5-5")
    assert (completion.text, completion.finish_reason) == ("Short.", "length")  # Anthropic says max_tokens
    assert (completion.input_tokens, completion.output_tokens) == (11, 2)
    assert completion.model == "claude-haiku-5-5"


@pytest.mark.parametrize(("chunks", "transient"), [([], True), (["partial "], False)])
def test_error_event_in_a_stream_has_the_status_of_its_type(anthropic_provider, chunks, transient):
    anthropic_provider.reply_stream(chunks, error_type="overloaded_error")
    with pytest.raises(ProviderError) as raised:
        list(stream_prompt("summarize", "hi", provider="anthropic", retries=0))
    assert (raised.value.status_code, raised.value.transient) == (529, transient)
    assert "overloaded" in str(raised.value)


def test_stream_that_ends_without_message_stop_is_an_error(anthropic_provider):
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": DEFAULT_MODEL,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 3, "output_tokens": 1},
        },
    }
    body = f"event: message_start\ndata: {json.dumps(start)}\n\n".encode()
    anthropic_provider.reply_raw(200, body, content_type="text/event-stream")
    with pytest.raises(ProviderUnavailable, match="ended before the server finished") as raised:
        list(stream_prompt("summarize", "hi", provider="anthropic", retries=0))
    assert raised.value.transient


@pytest.mark.parametrize(
    ("status", "transient", "hint"),
    [
        (400, False, "bad"),
        (401, False, "check the provider's api_key"),
        (429, True, "rate limited"),
        (500, True, "boom"),
        (529, True, "overloaded"),
    ],
)
def test_error_replies_become_provider_errors(anthropic_provider, status, transient, hint):
    anthropic_provider.reply_error(
        status, f"bad {status} boom, key was {API_KEY}", headers={"Retry-After": "3"}
    )
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", provider="anthropic", retries=0)
    error = raised.value
    assert (error.provider, error.status_code, error.transient) == ("anthropic", status, transient)
    assert error.request_id.startswith("req_fake_")
    assert error.retry_after == 3
    assert hint in str(error)
    assert len(anthropic_provider.requests) == 1  # the SDK's own retries are off
    assert error.__cause__ is None and error.__suppress_context__  # the SDK error may echo the key
    assert_no_key(error)


def test_overloaded_is_retried_by_llmapp_not_by_the_sdk(anthropic_provider):
    anthropic_provider.reply_error(529, "Overloaded", headers={"Retry-After": "0"})
    completion = complete_prompt("summarize", "hi", provider="anthropic", retries=1)
    assert completion.text == "Fake answer to: hi" and completion.attempts == 2
    assert len(anthropic_provider.requests) == 2


def test_error_reply_to_a_stream_request(anthropic_provider):
    anthropic_provider.reply_error(529, "Overloaded")
    with pytest.raises(ProviderError) as raised:
        list(stream_prompt("summarize", "hi", provider="anthropic", retries=0))
    assert (raised.value.status_code, raised.value.transient) == (529, True)
    assert raised.value.request_id.startswith("req_fake_")


def test_retry_after_may_be_an_http_date(anthropic_provider):
    from datetime import UTC, datetime, timedelta

    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    anthropic_provider.reply_error(429, "slow down", headers={"Retry-After": when})
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", provider="anthropic", retries=0)
    assert 20 < raised.value.retry_after <= 30


def test_the_requests_own_timeout_wins_over_the_configured_one(anthropic_provider):
    from llmapp.calls.service import prepare_request

    request, backend = prepare_request("summarize", "hi", provider="anthropic")  # OPTIONS timeout: 3
    anthropic_provider.hang(5)
    with pytest.raises(ProviderTimeout, match=r"within 0\.3s"):
        backend.complete(dataclasses.replace(request, timeout=0.3))
    assert anthropic_provider.wait_for_hangup(5)


def test_the_key_may_come_from_the_environment(anthropic_provider, settings, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    del settings.LLM_PROVIDERS["anthropic"]["OPTIONS"]["api_key"]
    anthropic_provider.reply_error(401, f"invalid x-api-key {API_KEY}")
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", provider="anthropic", retries=0)
    assert sent_key(anthropic_provider.requests[0]) == API_KEY
    assert_no_key(raised.value)
    assert AnthropicProvider("a").check() == []


def test_dry_run_describes_what_is_sent_with_the_key_masked(anthropic_provider, settings):
    from llmapp.calls.service import prepare_request

    settings.LLM_PROVIDERS["anthropic"]["OPTIONS"]["default_headers"] = {
        "X-Team": "support",
        "X-Gateway-Token": "gwsecret123456",
    }
    request, backend = prepare_request("summarize", "hi", provider="anthropic", max_output_tokens=50)
    described = backend.describe_request(request)
    assert anthropic_provider.requests == []
    assert described["method"] == "POST"
    assert described["url"] == f"{anthropic_provider.base_url}/v1/messages"
    assert described["json"]["max_tokens"] == 50 and described["json"]["messages"][0]["content"] == "hi"
    text = json.dumps(described, ensure_ascii=False)
    assert API_KEY not in text and "••••CRET" in text
    assert "gwsecret123456" not in text and "••••3456" in text

    # The same headers as the SDK really sends: custom ones masked, whatever their name says.
    complete_prompt("summarize", "hi", provider="anthropic", max_output_tokens=50)
    [sent] = anthropic_provider.requests
    headers = described["headers"]
    assert set(headers) == set(sent.headers)
    assert headers["anthropic-version"] == sent.headers["anthropic-version"]
    assert sent.headers["x-team"] == "support" and headers["x-team"] == "••••"
    auth = "x-api-key" if "x-api-key" in sent.headers else "authorization"
    assert headers[auth] == sent.headers[auth].replace(API_KEY, "••••CRET")
    assert described["json"] == sent.body
    assert API_KEY not in repr(backend) and API_KEY not in repr(backend.__dict__.get("_client"))


def test_dry_run_refuses_what_a_call_would_refuse(monkeypatch):
    request = CompletionRequest("summarize", "hi", "Be brief.", "a", DEFAULT_MODEL, 0.5, 10)
    backend = AnthropicProvider("a", options={"api_key": API_KEY})
    described = backend.describe_request(request)
    assert described["url"] == "https://api.anthropic.com/v1/messages"
    assert described["json"]["system"] == "Be brief."
    with pytest.raises(ConfigurationError, match="has no API key"):
        AnthropicProvider("a").describe_request(request)
    monkeypatch.setitem(sys.modules, "anthropic", None)
    with pytest.raises(ImproperlyInstalled, match=r'pip install "llmapp\[anthropic\]"'):
        AnthropicProvider("a", options={"api_key": API_KEY}).describe_request(request)


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("A gateway's plain string.", "A gateway's plain string."),
        (
            [
                {"type": "text", "text": "One "},
                {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}},
                {"type": "text", "text": "two"},
            ],
            "One two",
        ),
    ],
)
def test_the_text_is_the_answers_text_blocks_or_a_gateways_string(anthropic_provider, content, text):
    anthropic_provider.reply_raw(200, json.dumps(answer(content)).encode())
    assert complete_prompt("summarize", "hi", provider="anthropic").text == text
    # A stream answered with the whole answer at once (a LiteLLM proxy does) reads the same.
    anthropic_provider.reply_raw(200, json.dumps(answer(content)).encode())
    *chunks, completion = stream_prompt("summarize", "hi", provider="anthropic")
    assert ("".join(chunks), completion.text) == (text, text)


@pytest.mark.parametrize(
    "content",
    [
        7,
        {"type": "text"},
        [{"type": "text", "text": None}],
        [{"type": "text"}],
        [7],
        ["Hi"],
        [{"text": "Hi"}],
        [None],
    ],
)
def test_content_that_is_not_text_blocks_is_the_one_line_malformed_answer_error(anthropic_provider, content):
    anthropic_provider.reply_raw(200, json.dumps(answer(content)).encode())
    with pytest.raises(ProviderError, match="not valid JSON for this API") as caught:
        complete_prompt("summarize", "hi", provider="anthropic", retries=0)
    assert "\n" not in str(caught.value)


def answer(content):
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": DEFAULT_MODEL,
        "content": content,
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }


def test_an_sdk_without_structured_outputs_says_how_to_ask_for_a_typed_answer(
    anthropic_provider, settings, monkeypatch
):
    monkeypatch.delattr("anthropic.transform_schema", raising=False)  # as anthropic 0.40 has it
    settings.LLM_USECASES = {"triage": {"PROVIDER": "anthropic", "OUTPUT": TICKET_SCHEMA}}
    with pytest.raises(ConfigurationError, match="has no structured outputs") as raised:
        complete_prompt("triage", "Buy cheap pills")
    assert str(raised.value).endswith(
        "upgrade it, or set LLM_PROVIDERS['anthropic']['OPTIONS']['structured_output'] to 'prompted'."
    )
    assert anthropic_provider.requests == []
