"""The openai provider against a fake OpenAI-compatible server on 127.0.0.1."""

import json

import pytest

from llmapp import complete_prompt
from llmapp.exceptions import ProviderError
from llmapp.providers.openai import OpenAIProvider
from tests.conftest import API_KEY


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


def test_dry_run_shows_the_bearer_header_and_the_mapped_temperature(openai_provider):
    from llmapp.calls.service import prepare_request

    request, backend = prepare_request("summarize", "hi", provider="openai")
    described = backend.describe_request(request)
    assert described["url"] == f"{openai_provider.base_url}/chat/completions"
    assert described["headers"]["authorization"] == "Bearer ••••CRET"
    assert described["json"]["temperature"] == 0.4


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
    # openai 1.40 sends the key as a Bearer token too, newer SDKs api-key alone: masked either way.
    assert described["headers"].get("authorization", "Bearer ••••CRET") == "Bearer ••••CRET"
    assert API_KEY not in json.dumps(described, default=str)
    assert type(backend.client).__name__ == "AzureOpenAI"


def test_a_prompt_azures_filters_block_is_a_refusal_that_moves_to_the_fallback(openai_provider):
    from llmapp.exceptions import ProviderRefused

    message = (
        "The response was filtered due to the prompt triggering Azure OpenAI's content management policy."
    )
    openai_provider.reply_error(400, message, code="content_filter")
    with pytest.raises(ProviderRefused) as raised:
        complete_prompt("summarize", "hi", provider="openai", fallbacks=[])
    assert raised.value.finish_reason == "content_filter" and "content management policy" in str(raised.value)
    assert len(openai_provider.requests) == 1
    openai_provider.reply_error(400, message, code="content_filter")
    completion = complete_prompt("summarize", "hi", provider="openai", fallbacks=["default"])
    assert completion.provider == "default"
    openai_provider.reply_error(400, "Invalid value for 'temperature'", code="invalid_value")
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", provider="openai", fallbacks=["default"])
    assert not isinstance(raised.value, ProviderRefused)  # any other 400 ends the call


def test_an_error_event_in_a_stream_before_any_text_is_retried(openai_provider):
    import json

    from llmapp import stream_prompt

    error = {
        "error": {"message": "The server had an error while processing your request.", "type": "server_error"}
    }
    openai_provider.reply_raw(
        200, f"data: {json.dumps(error)}\n\n".encode(), content_type="text/event-stream"
    )
    *_, completion = stream_prompt("summarize", "hi", provider="openai", retries=1)
    assert completion.text == "Fake answer to: hi" and completion.attempts == 2


@pytest.mark.parametrize(
    "answer",
    [
        42,
        {"choices": "none"},
        {"choices": [{"message": {"content": 5}}]},
        {"choices": [{"message": "hello"}]},
        {"choices": [{"message": {"content": "hi"}}], "usage": "many"},
        {"choices": [{"message": ""}]},
        {"choices": [{}]},
        {"choices": [{"message": {"content": "hi"}, "finish_reason": ["stop"]}]},
        {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "12"}},
        {"choices": [{"message": {"content": "hi"}}], "usage": {"completion_tokens": True}},
        {"choices": [{"message": {"content": "hi"}}], "model": {"id": "x"}},
        "[" * 100_000,  # nested past the recursion limit
    ],
)
def test_an_answer_of_another_shape_is_a_provider_error(openai_provider, answer):
    body = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
    openai_provider.reply_raw(200, body)
    with pytest.raises(ProviderError, match="not valid JSON for this API"):
        complete_prompt("summarize", "hi", provider="openai", retries=0)


def test_token_counts_sent_as_floats_are_read_as_numbers(openai_provider):
    body = {
        "choices": [{"message": {"content": "hi"}}],
        "usage": {"prompt_tokens": 12.0, "completion_tokens": 3},
    }
    openai_provider.reply_raw(200, json.dumps(body).encode())
    completion = complete_prompt("summarize", "hi", provider="openai", retries=0)
    assert (completion.text, completion.input_tokens, completion.output_tokens) == ("hi", 12, 3)
