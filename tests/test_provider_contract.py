"""The contract every SDK provider keeps, run against each one's fake server on 127.0.0.1.

As django-anymail's shared backend tests do: what a caller relies on whatever the vendor
(an answer's text, tokens, finish reason and request id; streams, async calls, error
replies, timeouts, an unreachable server, a missing key or SDK, a dry run that matches
the wire) is said once here. Each provider's own test file holds only what differs.
"""

import asyncio
import dataclasses
import socket
import subprocess
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from llmapp import acomplete_prompt, complete_prompt, stream_prompt
from llmapp.calls.service import prepare_request
from llmapp.exceptions import (
    ConfigurationError,
    ImproperlyInstalled,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from llmapp.providers import providers
from tests.conftest import API_KEY, ROOT
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.gemini_server import FakeGeminiServer
from tests.fakes.openai_server import FakeOpenAIServer


@dataclasses.dataclass(frozen=True)
class Case:
    """A provider and what differs in how its fake server is scripted and its key travels."""

    backend: str
    server_class: type
    #: The keyword arguments of the server's reply() for input and output tokens.
    token_arguments: tuple[str, str]
    #: The header the server's request id comes in.
    request_id_header: str
    #: How the missing-key error names the key's environment variables.
    key_variables: str
    sdk_module: str
    extra: str
    #: The system prompt and the (role, content) turns a request's body carries, in llmapp's roles.
    sent_turns: Callable[[dict], tuple[str | None, list[tuple[str, str]]]] = None
    #: What the base_url ends with (the SDK adds the rest of the path).
    path_prefix: str = ""


CASES = {
    "openai": Case(
        "llmapp.providers.openai.OpenAIProvider",
        FakeOpenAIServer,
        ("prompt_tokens", "completion_tokens"),
        "x-request-id",
        "OPENAI_API_KEY",
        "openai",
        "openai",
        sent_turns=lambda body: (
            next((m["content"] for m in body["messages"] if m["role"] == "system"), None),
            [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"],
        ),
        path_prefix="/v1",
    ),
    "anthropic": Case(
        "llmapp.providers.anthropic.AnthropicProvider",
        FakeAnthropicServer,
        ("input_tokens", "output_tokens"),
        "request-id",
        "ANTHROPIC_API_KEY",
        "anthropic",
        "anthropic",
        sent_turns=lambda body: (body.get("system"), [(m["role"], m["content"]) for m in body["messages"]]),
    ),
    "gemini": Case(
        "llmapp.providers.gemini.GeminiProvider",
        FakeGeminiServer,
        ("prompt_tokens", "completion_tokens"),
        "x-request-id",
        "GEMINI_API_KEY (or GOOGLE_API_KEY)",
        "google.genai",
        "gemini",
        sent_turns=lambda body: (
            body["systemInstruction"]["parts"][0]["text"],
            [
                ({"model": "assistant"}.get(c["role"], c["role"]), "".join(p["text"] for p in c["parts"]))
                for c in body["contents"]
            ],
        ),
    ),
}


@dataclasses.dataclass
class Setup:
    alias: str
    case: Case
    server: object

    def call(self, message="hi", **kwargs):
        return complete_prompt("summarize", message, provider=self.alias, **kwargs)


@pytest.fixture(params=list(CASES))
def provider(request, settings):
    """A provider pointed at its fake server, with no database and no circuit breaker."""
    case = CASES[request.param]
    with case.server_class() as server:
        settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
        settings.LLM_PROVIDERS = {
            **settings.LLM_PROVIDERS,
            request.param: {
                "BACKEND": case.backend,
                "OPTIONS": {"api_key": API_KEY, "base_url": server.base_url, "timeout": 3},
                "CIRCUIT_BREAKER": None,
            },
        }
        yield Setup(request.param, case, server)


@pytest.fixture(params=list(CASES))
def case(request):
    """A provider's Case (no key in the environment: see conftest's _isolated_environment)."""
    return CASES[request.param]


def carries(headers, key):
    """Say whether one of ``headers`` carries ``key`` (as it is, or after a scheme: ``Bearer``)."""
    return any(value == key or value.endswith(f" {key}") for value in dict(headers).values())


def assert_no_key(error):
    for text in (str(error), repr(error), error.reason):
        assert API_KEY not in text
        assert API_KEY[-12:] not in text


def test_an_answer_brings_its_text_tokens_finish_reason_and_request_id(provider):
    input_tokens, output_tokens = provider.case.token_arguments
    provider.server.reply("Hello there", **{input_tokens: 7, output_tokens: 2})
    completion = provider.call()
    assert completion.text == "Hello there"
    assert (completion.input_tokens, completion.output_tokens) == (7, 2)
    assert completion.finish_reason == "stop"  # in llmapp's words, whatever the vendor's
    assert completion.request_id and completion.provider == provider.alias and completion.model
    [request] = provider.server.requests
    assert carries(request.headers, API_KEY)


def test_an_async_call_answers_as_a_sync_one(provider):
    completion = asyncio.run(acomplete_prompt("summarize", "async please", provider=provider.alias))
    assert completion.text == "Fake answer to: async please"
    assert completion.finish_reason == "stop" and completion.request_id


def test_a_stream_yields_the_servers_chunks_then_the_completion(provider):
    provider.server.reply_stream(["Hel", "lo ", "world"])
    *chunks, completion = stream_prompt("summarize", "hi", provider=provider.alias)
    assert chunks == ["Hel", "lo ", "world"]
    assert completion.text == "Hello world" and completion.finish_reason == "stop"


def test_a_stream_cut_after_some_text_is_final(provider):
    provider.server.reply_stream(["one ", "two ", "three"], cut_after=2)
    received = []
    with pytest.raises(ProviderUnavailable) as raised:
        for item in stream_prompt("summarize", "hi", provider=provider.alias, retries=2):
            received.append(item)
    assert received == ["one ", "two "]
    assert "the stream was cut after 2 chunk(s) of text" in str(raised.value)
    assert not raised.value.transient
    assert len(provider.server.requests) == 1  # the caller has part of an answer: no retry
    assert_no_key(raised.value)


def test_a_stream_cut_before_any_text_is_retried(provider):
    provider.server.reply_stream(["one ", "two "], cut_after=0)
    *_, completion = stream_prompt("summarize", "hi", provider=provider.alias, retries=1)
    assert completion.text == "Fake answer to: hi" and completion.attempts == 2


@pytest.mark.parametrize(
    ("status", "transient", "hint"),
    [
        (400, False, "bad 400"),
        (401, False, "check the provider's"),
        (429, True, "rate limited"),
        (500, True, "bad 500"),
    ],
)
def test_an_error_reply_is_a_provider_error_without_the_key(provider, status, transient, hint):
    headers = {"Retry-After": "3", provider.case.request_id_header: "req-contract-1"}
    provider.server.reply_error(status, f"bad {status} boom, key was {API_KEY}", headers=headers)
    with pytest.raises(ProviderError) as raised:
        provider.call(retries=0)
    error = raised.value
    assert (error.provider, error.status_code, error.transient) == (provider.alias, status, transient)
    assert (error.retry_after, error.request_id) == (3, "req-contract-1")
    assert hint in str(error)
    assert len(provider.server.requests) == 1  # the SDK's own retries are off
    assert error.__cause__ is None and error.__suppress_context__  # the SDK's error may echo the key
    assert_no_key(error)


def test_an_error_reply_to_a_stream_or_an_async_call_is_the_same_error(provider):
    provider.server.reply_error(500, "boom")
    with pytest.raises(ProviderError) as streamed:
        list(stream_prompt("summarize", "hi", provider=provider.alias, retries=0))
    provider.server.reply_error(500, "boom")
    with pytest.raises(ProviderError) as awaited:
        asyncio.run(acomplete_prompt("summarize", "hi", provider=provider.alias, retries=0))
    for error in (streamed.value, awaited.value):
        assert (error.status_code, error.transient) == (500, True)
    assert len(provider.server.requests) == 2


def test_an_answer_that_is_not_json_is_a_provider_error(provider):
    provider.server.reply_raw(200, b'{"id": "x", "choices": [')
    with pytest.raises(ProviderError, match="not valid JSON") as raised:
        provider.call(retries=0)
    assert not raised.value.transient


@pytest.mark.parametrize("body", [b"[]", b'"an answer"', b"null"])
def test_json_that_is_not_an_answer_is_a_provider_error(provider, body):
    provider.server.reply_raw(200, body)
    with pytest.raises(
        ProviderError, match=r"the server's answer (is not valid JSON for this API|has no)"
    ) as raised:
        provider.call(retries=0)
    assert not raised.value.transient


#: How the SDK of each provider that posts its calls itself sends one by its own method.
SDK_METHODS = {"openai": lambda client, payload: client.chat.completions.create(**payload)}


@pytest.mark.parametrize("provider", list(SDK_METHODS), indirect=True)
def test_a_call_sends_what_the_sdks_own_method_sends(provider):
    # llmapp posts the body itself (the SDK's method costs 0.6 ms a call): nothing on the
    # wire may differ but what differs between any two of the SDK's requests.
    request, backend = prepare_request("summarize", "hi", provider=provider.alias)
    payload = backend.build_payload(request)
    client = backend.new_client()
    try:
        SDK_METHODS[provider.alias](client, payload)
    finally:
        client.close()
    backend.complete(request)
    by_sdk, by_llmapp = provider.server.requests
    assert (by_llmapp.method, by_llmapp.path, by_llmapp.body) == (by_sdk.method, by_sdk.path, by_sdk.body)
    varying = {"x-stainless-retry-count", "x-stainless-read-timeout", "idempotency-key", "content-length"}
    assert {name: value for name, value in by_llmapp.headers.items() if name.lower() not in varying} == {
        name: value for name, value in by_sdk.headers.items() if name.lower() not in varying
    }


def test_no_answer_within_the_timeout_is_a_transient_timeout(provider, settings):
    settings.LLM_PROVIDERS[provider.alias]["OPTIONS"]["timeout"] = 0.5
    provider.server.hang(5)
    with pytest.raises(ProviderTimeout, match=r"within 0\.5s") as raised:
        provider.call(retries=0)
    assert raised.value.transient
    assert provider.server.wait_for_hangup(5)  # the client gave up; the server did not end it
    assert_no_key(raised.value)


def test_an_unreachable_server_is_one_line_with_its_credentials_masked(case, settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    base_url = f"http://user:pa55word@127.0.0.1:{port}{case.path_prefix}"
    settings.LLM_PROVIDERS = {
        "default": {
            "BACKEND": case.backend,
            "OPTIONS": {"base_url": base_url, "api_key": API_KEY, "timeout": 3},
            "CIRCUIT_BREAKER": None,
        }
    }
    with pytest.raises(ProviderUnavailable) as raised:
        complete_prompt("summarize", "hi", retries=0)
    assert str(raised.value).startswith(f"cannot reach http://••••@127.0.0.1:{port}{case.path_prefix}")
    assert raised.value.transient
    assert "pa55word" not in str(raised.value)
    assert_no_key(raised.value)


def test_a_missing_key_names_the_variable_and_the_setting(case, settings):
    settings.LLM_PROVIDERS = {"default": {"BACKEND": case.backend}}
    with pytest.raises(ConfigurationError) as raised:
        complete_prompt("summarize", "hi")
    # Raised from views too: no word of a .env file or CLI flags the host project may not have.
    assert str(raised.value) == (
        f"provider 'default' has no API key: set {case.key_variables} "
        "or LLM_PROVIDERS['default']['OPTIONS']['api_key']."
    )
    [warning] = providers["default"].check()
    assert (warning.id, warning.msg) == ("llmapp.W003", str(raised.value))


def test_a_missing_sdk_names_the_pip_command(case, settings, monkeypatch):
    monkeypatch.setitem(sys.modules, case.sdk_module, None)  # what an uninstalled package looks like
    settings.LLM_PROVIDERS = {"default": {"BACKEND": case.backend, "OPTIONS": {"api_key": API_KEY}}}
    with pytest.raises(ImproperlyInstalled, match=rf'pip install "llmapp\[{case.extra}\]"'):
        complete_prompt("summarize", "hi")


def test_a_dry_run_describes_what_the_sdk_sends_with_the_key_masked(provider):
    request, backend = prepare_request("summarize", "hi", provider=provider.alias)
    described = backend.describe_request(request)
    assert provider.server.requests == []
    assert described["method"] == "POST"
    assert carries(described["headers"], "••••CRET")
    assert API_KEY not in repr(described)
    backend.complete(request)
    [sent] = provider.server.requests
    # Built by the SDK: the very URL, headers and body a real call sends.
    assert urlsplit(described["url"])[1:3] == (urlsplit(provider.server.base_url).netloc, sent.path)
    assert described["json"] == sent.body
    assert set(described["headers"]) == set(sent.headers)
    assert API_KEY not in repr(backend) and API_KEY not in repr(backend.__dict__.get("_client"))


def test_no_sdk_is_imported_until_its_provider_is_used():
    modules = [case.sdk_module for case in CASES.values()]
    code = (
        "import sys, django; from llmproject.runner import configure; configure('settings.test');"
        "django.setup(); from llmapp import complete_prompt;"
        "complete_prompt('summarize', 'hi');"
        f"print([name for name in {modules!r} if name in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"


CONVERSATION = [
    {"role": "user", "content": "My order 1234 never came."},
    {"role": "assistant", "content": "Sorry! When did you order it?"},
    {"role": "user", "content": "Last Tuesday."},
]


def test_a_conversation_is_sent_as_its_turns_in_order_after_the_system_prompt(provider):
    from llmapp import astream_prompt
    from llmapp.conf.usecases import get_usecase

    async def streamed_async():
        return [
            item async for item in astream_prompt("summarize", provider=provider.alias, messages=CONVERSATION)
        ]

    answers = [
        provider.call(message=None, messages=CONVERSATION),
        list(stream_prompt("summarize", provider=provider.alias, messages=CONVERSATION))[-1],
        asyncio.run(acomplete_prompt("summarize", provider=provider.alias, messages=CONVERSATION)),
        asyncio.run(streamed_async())[-1],
    ]
    expected = [(turn["role"], turn["content"]) for turn in CONVERSATION]
    for request in provider.server.requests:
        assert provider.case.sent_turns(request.body) == (get_usecase("summarize").prompt, expected)
    assert len(provider.server.requests) == 4
    assert all(completion.text == "Fake answer to: Last Tuesday." for completion in answers)
