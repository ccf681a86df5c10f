"""The openai provider against a fake OpenAI-compatible server on 127.0.0.1."""

import asyncio
import socket
import subprocess
import sys
import time

import pytest

from llmapp import acomplete_prompt, complete_prompt, stream_prompt
from llmapp.exceptions import (
    ConfigurationError,
    ImproperlyInstalled,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from llmapp.providers.openai import OpenAIProvider
from tests.conftest import API_KEY, ROOT


def test_request_body_carries_model_messages_and_mapped_settings(openai_provider):
    completion = complete_prompt(
        "summarize", "Ship it on Friday.", provider="openai", temperature=0.2, max_output_tokens=42
    )
    [request] = openai_provider.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.body
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"][0]["role"] == "system" and "summary" in body["messages"][0]["content"]
    assert body["messages"][1] == {"role": "user", "content": "Ship it on Friday."}
    assert body["temperature"] == 0.4  # 0-1 mapped onto OpenAI's 0-2
    assert body["max_tokens"] == 42
    assert "stream" not in body
    assert completion.text == "Fake answer to: Ship it on Friday."
    assert (completion.provider, completion.model, completion.finish_reason) == (
        "openai",
        "gpt-4o-mini",
        "stop",
    )
    assert completion.input_tokens > 0 and completion.output_tokens == 7
    assert completion.request_id.startswith("req_fake_")


def test_official_api_limit_parameter_is_max_completion_tokens(openai_provider, settings):
    settings.LLM_PROVIDERS["openai"]["OPTIONS"]["token_limit_parameter"] = "max_completion_tokens"
    complete_prompt("summarize", "x", provider="openai", max_output_tokens=7)
    assert openai_provider.requests[0].body["max_completion_tokens"] == 7
    assert "max_tokens" not in openai_provider.requests[0].body


def test_streaming_yields_the_servers_chunks_and_usage(openai_provider):
    openai_provider.reply_stream(["Hel", "lo ", "world"])
    *chunks, completion = stream_prompt("summarize", "hi", provider="openai")
    assert chunks == ["Hel", "lo ", "world"]
    assert completion.text == "Hello world"
    assert completion.finish_reason == "stop"
    assert completion.output_tokens is not None and completion.request_id.startswith("req_fake_")
    body = openai_provider.requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_stream_cut_mid_way_is_an_error_after_the_text_so_far(openai_provider):
    openai_provider.reply_stream(["one ", "two ", "three"], cut_after=2)
    received = []
    with pytest.raises(ProviderError) as raised:
        for item in stream_prompt("summarize", "hi", provider="openai", retries=0):
            received.append(item)
    assert received == ["one ", "two "]
    assert "the stream was cut after 2 chunk(s)" in str(raised.value)
    assert not raised.value.transient
    assert API_KEY not in str(raised.value)


def test_async_completion(openai_provider):
    completion = asyncio.run(acomplete_prompt("example", "async please", provider="openai"))
    assert completion.text == "Fake answer to: async please"


@pytest.mark.parametrize(
    ("status", "transient", "hint"),
    [
        (400, False, "bad"),
        (401, False, "check the provider's api_key"),
        (429, True, "rate limited"),
        (500, True, "boom"),
    ],
)
def test_error_replies_become_provider_errors(openai_provider, status, transient, hint):
    openai_provider.reply_error(status, f"bad {status} boom, key was {API_KEY}", headers={"Retry-After": "3"})
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", provider="openai", retries=0)
    error = raised.value
    assert (error.provider, error.status_code, error.transient) == ("openai", status, transient)
    assert error.request_id.startswith("req_fake_")
    assert error.retry_after == 3
    assert hint in str(error)
    assert len(openai_provider.requests) == 1  # the SDK's own retries are off
    for text in (str(error), repr(error), error.reason):
        assert API_KEY not in text
        assert API_KEY[-12:] not in text


def test_malformed_json_is_a_provider_error(openai_provider):
    openai_provider.reply_raw(200, b'{"id": "chatcmpl-1", "choices": [')
    with pytest.raises(ProviderError, match="not valid JSON"):
        complete_prompt("summarize", "hi", provider="openai", retries=0)


def test_slow_reply_times_out_at_the_configured_timeout(openai_provider, settings):
    settings.LLM_PROVIDERS["openai"]["OPTIONS"]["timeout"] = 0.5
    openai_provider.hang(5)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"within 0\.5s") as raised:
        complete_prompt("summarize", "hi", provider="openai", retries=0)
    assert time.monotonic() - started < 3
    assert raised.value.transient


def test_unreachable_base_url_is_one_clear_error(settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    settings.LLM_PROVIDERS = {
        "default": {
            "BACKEND": "llmapp.providers.openai.OpenAIProvider",
            "OPTIONS": {"base_url": f"http://user:pa55word@127.0.0.1:{port}/v1", "api_key": API_KEY},
        }
    }
    with pytest.raises(ProviderUnavailable, match=f"cannot reach http://••••@127.0.0.1:{port}/v1") as raised:
        complete_prompt("summarize", "hi", retries=0)
    assert "pa55word" not in str(raised.value)


def test_missing_api_key_for_the_official_api_names_the_setting(settings, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings.LLM_PROVIDERS = {"default": {"BACKEND": "llmapp.providers.openai.OpenAIProvider"}}
    with pytest.raises(ConfigurationError) as raised:
        complete_prompt("summarize", "hi")
    # Raised from views too: no word of a .env file or CLI flags the host project may not have.
    assert str(raised.value) == (
        "provider 'default' has no API key: set OPENAI_API_KEY "
        "or LLM_PROVIDERS['default']['OPTIONS']['api_key']."
    )


def test_missing_extra_names_the_pip_command(settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # what an uninstalled package looks like to import
    settings.LLM_PROVIDERS = {
        "default": {"BACKEND": "llmapp.providers.openai.OpenAIProvider", "OPTIONS": {"api_key": API_KEY}}
    }
    with pytest.raises(ImproperlyInstalled, match=r'pip install "llmapp\[openai\]"'):
        complete_prompt("summarize", "hi")


def test_dry_run_description_masks_the_key(openai_provider):
    from llmapp.calls.service import prepare_request

    request, backend = prepare_request("summarize", "hi", provider="openai")
    described = backend.describe_request(request)
    assert described["url"] == f"{openai_provider.base_url}/chat/completions"
    assert described["headers"]["authorization"] == "Bearer ••••CRET"
    assert described["json"]["temperature"] == 0.4
    assert openai_provider.requests == []
    # Built by the SDK: the very headers and body a real call sends, the key masked.
    complete_prompt("summarize", "hi", provider="openai")
    [sent] = openai_provider.requests
    assert described["json"] == sent.body
    assert set(described["headers"]) == set(sent.headers)
    assert API_KEY not in repr(backend) and API_KEY not in repr(backend.__dict__.get("_client"))


def test_azure_options_select_the_azure_client_and_url():
    backend = OpenAIProvider(
        "azure",
        options={
            "api_key": API_KEY,
            "azure_endpoint": "https://example-resource.openai.azure.com/",
            "azure_deployment": "gpt4o-prod",
            "api_version": "2024-10-21",
        },
    )
    from llmapp.calls.types import CompletionRequest

    request = CompletionRequest("summarize", "hi", "", "azure", "gpt-4o", 0.5, 10)
    described = backend.describe_request(request)
    assert described["url"] == (
        "https://example-resource.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        "?api-version=2024-10-21"
    )
    assert described["headers"]["api-key"] == "••••CRET"
    assert "authorization" not in described["headers"]
    assert type(backend.client).__name__ == "AzureOpenAI"


def test_the_sdk_is_imported_only_when_the_provider_is_used():
    code = (
        "import sys, django; from llmproject.runner import configure; configure('settings.test');"
        "django.setup(); from llmapp import complete_prompt;"
        "complete_prompt('summarize', 'hi');"
        "print('openai' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"
