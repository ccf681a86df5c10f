"""The gemini provider against a fake Gemini (and Vertex AI) server on 127.0.0.1."""

import asyncio
import json

import pytest
from django.core import checks

from llmapp import acomplete_prompt, complete_prompt, stream_prompt
from llmapp.calls.types import CompletionRequest
from llmapp.exceptions import (
    ConfigurationError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from llmapp.providers.gemini import DEFAULT_MODEL, GeminiProvider
from tests.conftest import API_KEY
from tests.fakes.gemini_server import fake_gemini

# Listing the imported fixture as used keeps ruff from reporting F401 on the import
# and F811 on every test that takes it as an argument.
__all__ = ["fake_gemini"]

BACKEND = "llmapp.providers.gemini.GeminiProvider"
DEVELOPER_PATH = f"/v1beta/models/{DEFAULT_MODEL}:generateContent"
VERTEX_PATH = (
    f"/v1beta1/projects/my-project/locations/us-central1/publishers/google/models/{DEFAULT_MODEL}"
    ":generateContent"
)


# Environment the SDK (or the provider) would read; a developer's shell must not change the tests.
@pytest.fixture
def gemini(settings, fake_gemini):
    """Point a 'gemini' provider (Developer API) at the fake server, with no database; return the server."""
    settings.LLM_EVENTSTREAM = "null"
    settings.LLM_TSDB = "null"
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "gemini": {
            "BACKEND": BACKEND,
            "OPTIONS": {"api_key": API_KEY, "base_url": fake_gemini.base_url, "timeout": 3},
        },
    }
    return fake_gemini


@pytest.fixture
def vertex(settings, fake_gemini):
    """Point a 'vertex' provider (Vertex AI, offline credentials) at the fake server; return the server."""
    from google.oauth2.credentials import Credentials

    settings.LLM_EVENTSTREAM = "null"
    settings.LLM_TSDB = "null"
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "vertex": {
            "BACKEND": BACKEND,
            "OPTIONS": {
                "vertexai": True,
                "project": "my-project",
                "location": "us-central1",
                # A token with no expiry is never refreshed, so nothing leaves 127.0.0.1.
                "credentials": Credentials(token="fake-access-token"),
                "base_url": fake_gemini.base_url,
                "timeout": 3,
            },
        },
    }
    return fake_gemini


def assert_no_key(error):
    for text in (str(error), repr(error), error.reason):
        assert API_KEY not in text
        assert API_KEY[-12:] not in text


def request_for(model=DEFAULT_MODEL, timeout=None, provider="gemini"):
    return CompletionRequest("summarize", "hi", "Be brief.", provider, model, 0.5, 10, timeout=timeout)


# -- the Gemini Developer API --------------------------------------------------------------


def test_request_body_carries_contents_system_instruction_and_generation_config(gemini):
    completion = complete_prompt(
        "summarize", "Ship it on Friday.", provider="gemini", temperature=0.2, max_output_tokens=42
    )
    [request] = gemini.requests
    assert request.path == DEVELOPER_PATH
    assert request.headers["x-goog-api-key"] == API_KEY
    assert "authorization" not in request.headers
    assert request.headers["x-server-timeout"] == "3"  # the SDK tells the server our deadline
    body = request.body
    assert body["contents"] == [{"parts": [{"text": "Ship it on Friday."}], "role": "user"}]
    assert "summary" in body["systemInstruction"]["parts"][0]["text"]
    assert body["generationConfig"] == {"temperature": 0.4, "maxOutputTokens": 42}  # 0-1 mapped onto 0-2
    assert completion.text == "Fake answer to: Ship it on Friday."
    assert (completion.provider, completion.model, completion.finish_reason) == (
        "gemini",
        DEFAULT_MODEL,
        "stop",
    )
    assert completion.input_tokens > 0 and completion.output_tokens == 7
    assert completion.request_id == "fake-response-1"  # Gemini's responseId: it sends no request-id header


def test_thinking_tokens_count_as_output_and_thoughts_are_not_text(gemini):
    answer = {
        "candidates": [
            {
                "content": {
                    "parts": [{"text": "Let me think.", "thought": True}, {"text": "Short answer."}],
                    "role": "model",
                },
                "finishReason": "MAX_TOKENS",
            }
        ],
        "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 2, "thoughtsTokenCount": 30},
        "modelVersion": "gemini-2.5-flash-001",
        "responseId": "abc123",
    }
    gemini.reply_raw(200, json.dumps(answer).encode(), headers={"X-Request-Id": "proxy-req-9"})
    completion = complete_prompt("summarize", "hi", provider="gemini")
    assert completion.text == "Short answer."
    assert completion.finish_reason == "length"
    assert (completion.input_tokens, completion.output_tokens) == (11, 32)
    assert completion.model == "gemini-2.5-flash-001"
    assert completion.request_id == "proxy-req-9"  # a proxy's x-request-id header wins over responseId


def test_blocked_prompt_is_a_provider_error(gemini):
    gemini.reply_raw(200, json.dumps({"promptFeedback": {"blockReason": "SAFETY"}}).encode())
    with pytest.raises(ProviderError, match=r"blocked the prompt \(SAFETY\)") as raised:
        complete_prompt("summarize", "hi", provider="gemini")
    assert not raised.value.transient


def test_streaming_yields_the_servers_chunks_then_the_completion(gemini):
    gemini.reply_stream(["Hel", "lo ", "world"], prompt_tokens=5, completion_tokens=3)
    *chunks, completion = stream_prompt("summarize", "hi", provider="gemini")
    assert chunks == ["Hel", "lo ", "world"]
    assert completion.text == "Hello world"
    assert completion.finish_reason == "stop"
    assert (completion.input_tokens, completion.output_tokens) == (5, 3)
    assert completion.request_id == "fake-response-1"
    [request] = gemini.requests
    assert request.path == f"/v1beta/models/{DEFAULT_MODEL}:streamGenerateContent"
    assert request.query == {"alt": "sse"}


def test_stream_that_ends_without_a_finish_reason_is_an_error(gemini):
    gemini.reply_stream(["one ", "two"], finish_reason=None)
    with pytest.raises(ProviderUnavailable, match="ended before the server finished") as raised:
        list(stream_prompt("summarize", "hi", provider="gemini"))
    assert not raised.value.transient


def test_error_event_after_some_text_ends_the_stream_for_good(gemini):
    text = {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]}
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    events = f"data: {json.dumps(text)}\r\n\r\ndata: {json.dumps(error)}\r\n\r\n".encode()
    gemini.reply_raw(200, events, content_type="text/event-stream")
    received = []
    with pytest.raises(ProviderError) as raised:
        for item in stream_prompt("summarize", "hi", provider="gemini"):
            received.append(item)
    assert received == ["Hel"]
    assert raised.value.status_code == 503
    assert not raised.value.transient  # text already reached the caller
    assert len(gemini.requests) == 1


def test_async_completion_on_two_event_loops(gemini):
    first = asyncio.run(acomplete_prompt("example", "async please", provider="gemini"))
    # A second asyncio.run() is a new loop: the client of the closed one must not be reused.
    second = asyncio.run(acomplete_prompt("example", "again", provider="gemini"))
    assert (first.text, second.text) == ("Fake answer to: async please", "Fake answer to: again")
    assert [r.path for r in gemini.requests] == [DEVELOPER_PATH, DEVELOPER_PATH]


@pytest.mark.parametrize(
    ("status", "transient", "hint"),
    [
        (400, False, "INVALID_ARGUMENT"),
        (401, False, "check the provider's credentials"),
        (403, False, "PERMISSION_DENIED"),
        (429, True, "rate limited"),
        (500, True, "boom"),
        (503, True, "UNAVAILABLE"),
    ],
)
def test_error_replies_become_provider_errors(gemini, status, transient, hint):
    gemini.reply_error(
        status,
        f"bad {status} boom, key was {API_KEY}",
        headers={"Retry-After": "3", "X-Request-Id": "req-err-1"},
    )
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", provider="gemini", retries=0)
    error = raised.value
    assert (error.provider, error.status_code, error.transient) == ("gemini", status, transient)
    assert error.retry_after == 3
    assert error.request_id == "req-err-1"
    assert hint in str(error)
    assert len(gemini.requests) == 1  # the SDK's own retries are off
    assert error.__cause__ is None and error.__suppress_context__
    assert_no_key(error)


def test_retry_info_in_the_error_body_gives_retry_after(gemini):
    gemini.reply_error(429, "Resource has been exhausted (e.g. check quota).", retry_delay="7.5s")
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", provider="gemini", retries=0)
    assert (raised.value.retry_after, raised.value.transient) == (7.5, True)
    assert raised.value.request_id is None
    assert len(gemini.requests) == 1


def test_the_requests_own_timeout_bounds_the_attempt(gemini):
    backend = GeminiProvider(
        "gemini", options={"api_key": API_KEY, "base_url": gemini.base_url, "timeout": 30}
    )
    gemini.hang(5)
    with pytest.raises(ProviderTimeout, match=r"within 0\.3s"):
        backend.complete(request_for(timeout=0.3))
    assert gemini.wait_for_hangup(5)
    assert gemini.requests[0].headers["x-server-timeout"] == "1"  # whole seconds, rounded up


def test_async_slow_reply_times_out(gemini, settings):
    settings.LLM_PROVIDERS["gemini"]["OPTIONS"]["timeout"] = 0.5
    gemini.hang(5)
    with pytest.raises(ProviderTimeout, match=r"within 0\.5s"):
        asyncio.run(acomplete_prompt("summarize", "hi", provider="gemini", retries=0))
    assert gemini.wait_for_hangup(5)


def test_the_api_key_falls_back_to_the_environment(gemini, settings, monkeypatch):
    del settings.LLM_PROVIDERS["gemini"]["OPTIONS"]["api_key"]
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaFromTheEnvironment123")
    complete_prompt("summarize", "hi", provider="gemini")
    assert gemini.requests[0].headers["x-goog-api-key"] == "AIzaFromTheEnvironment123"


def test_the_environment_key_is_redacted_from_errors(gemini, settings, monkeypatch):
    del settings.LLM_PROVIDERS["gemini"]["OPTIONS"]["api_key"]
    monkeypatch.setenv("GOOGLE_API_KEY", "env-key-0123456789abcdef")
    gemini.reply_error(400, "API key env-key-0123456789abcdef not valid. Please pass a valid API key.")
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", provider="gemini")
    assert "0123456789abcdef" not in str(raised.value)


def test_unknown_option_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="unknown key"):
        GeminiProvider("gemini", options={"api_key": API_KEY, "max_retries": 3})


def test_vertex_only_options_without_vertexai_are_a_configuration_error():
    backend = GeminiProvider("gemini", options={"api_key": API_KEY, "project": "p"})
    with pytest.raises(ConfigurationError, match=r"project, which only Vertex AI uses: add 'vertexai': True"):
        backend.complete(request_for())


def test_vertex_api_key_and_credentials_together_are_a_configuration_error():
    backend = GeminiProvider(
        "vertex", options={"vertexai": True, "api_key": API_KEY, "credentials": object()}
    )
    [warning] = backend.check()
    assert "sets both api_key and credentials" in warning.msg
    assert API_KEY not in warning.msg


def test_check_warns_about_a_missing_key_or_project():
    [warning] = GeminiProvider("gemini").check()
    assert (warning.level, warning.id) == (checks.WARNING, "llmapp.W003")
    assert "GEMINI_API_KEY" in warning.msg
    [warning] = GeminiProvider("vertex", options={"vertexai": True}).check()
    assert warning.id == "llmapp.W003"
    assert "LLM_PROVIDERS['vertex']['OPTIONS']['project']" in warning.msg
    assert GeminiProvider("gemini", options={"api_key": API_KEY}).check() == []
    assert GeminiProvider("vertex", options={"vertexai": True, "project": "p"}).check() == []


def test_dry_run_description_is_what_the_sdk_sends_with_the_key_masked(gemini):
    from llmapp.calls.service import prepare_request

    request, backend = prepare_request("summarize", "hi", provider="gemini", max_output_tokens=50)
    described = backend.describe_request(request)
    assert gemini.requests == []
    assert described["method"] == "POST"
    assert described["url"] == f"{gemini.base_url}{DEVELOPER_PATH}"
    assert described["headers"]["x-goog-api-key"] == "••••CRET"
    assert API_KEY not in repr(described)
    backend.complete(request)
    assert described["json"] == gemini.requests[0].body
    assert API_KEY not in repr(backend) and API_KEY not in repr(backend.__dict__.get("_client"))


def test_dry_run_without_a_key_or_base_url_refuses_like_a_call():
    with pytest.raises(ConfigurationError, match="has no API key: set GEMINI_API_KEY"):
        GeminiProvider("gemini").describe_request(request_for())
    described = GeminiProvider("gemini", options={"api_key": API_KEY}).describe_request(request_for())
    assert described["url"] == f"https://generativelanguage.googleapis.com{DEVELOPER_PATH}"


# -- Vertex AI -----------------------------------------------------------------------------


def test_vertex_calls_the_project_and_location_path_with_a_bearer_token(vertex, monkeypatch):
    # An API key in the environment must not turn project/location mode into express mode.
    monkeypatch.setenv("GOOGLE_API_KEY", "AIzaShouldNotBeUsed123")
    completion = complete_prompt("summarize", "Ship it.", provider="vertex", temperature=0.5)
    [request] = vertex.requests
    assert request.path == VERTEX_PATH
    assert request.headers["authorization"] == "Bearer fake-access-token"
    assert "x-goog-api-key" not in request.headers
    assert request.body["generationConfig"]["temperature"] == 1.0
    assert completion.text == "Fake answer to: Ship it."
    assert (completion.provider, completion.finish_reason) == ("vertex", "stop")


def test_vertex_streaming_and_async(vertex):
    *chunks, completion = stream_prompt("summarize", "a b", provider="vertex")
    assert "".join(chunks) == completion.text == "Fake answer to: a b"
    completion = asyncio.run(acomplete_prompt("summarize", "async", provider="vertex"))
    assert completion.text == "Fake answer to: async"
    assert [r.path for r in vertex.requests] == [
        VERTEX_PATH.replace("generateContent", "streamGenerateContent"),
        VERTEX_PATH,
    ]


def test_vertex_errors_hide_the_access_token(vertex):
    vertex.reply_error(403, "Permission denied for token fake-access-token on project my-project")
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", provider="vertex")
    assert raised.value.status_code == 403 and not raised.value.transient
    assert "fake-access-token" not in str(raised.value)


def test_vertex_dry_run_matches_what_the_sdk_sends(vertex):
    from llmapp.calls.service import prepare_request

    request, backend = prepare_request("summarize", "hi", provider="vertex")
    described = backend.describe_request(request)
    assert described["url"] == f"{vertex.base_url}{VERTEX_PATH}"
    assert "x-goog-api-key" not in described["headers"]
    assert "fake-access-token" not in repr(described)
    backend.complete(request)
    assert described["json"] == vertex.requests[0].body


def test_vertex_express_mode_uses_the_api_key_without_a_project(settings, fake_gemini):
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    settings.LLM_PROVIDERS = {
        "default": {
            "BACKEND": BACKEND,
            "OPTIONS": {"vertexai": True, "api_key": API_KEY, "base_url": fake_gemini.base_url, "timeout": 3},
        }
    }
    complete_prompt("summarize", "hi")
    [request] = fake_gemini.requests
    assert request.path == f"/v1beta1/publishers/google/models/{DEFAULT_MODEL}:generateContent"
    assert request.headers["x-goog-api-key"] == API_KEY


def test_vertex_project_and_location_fall_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    described = GeminiProvider("vertex", options={"vertexai": True}).describe_request(request_for())
    assert described["url"] == (
        "https://aiplatform.googleapis.com/v1beta1/projects/env-project/locations/global/"
        f"publishers/google/models/{DEFAULT_MODEL}:generateContent"
    )
    # No token is fetched for a dry run: that would be a network call.
    assert described["headers"]["authorization"].startswith("Bearer ••••")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "europe-west4")
    described = GeminiProvider("vertex", options={"vertexai": True}).describe_request(request_for())
    assert described["url"].startswith(
        "https://europe-west4-aiplatform.googleapis.com/v1beta1/projects/env-project/"
    )


def test_vertex_without_a_project_names_the_option(settings):
    settings.LLM_PROVIDERS = {"default": {"BACKEND": BACKEND, "OPTIONS": {"vertexai": True}}}
    with pytest.raises(ConfigurationError, match=r"uses Vertex AI but has no project") as raised:
        complete_prompt("summarize", "hi")
    assert "LLM_PROVIDERS['default']['OPTIONS']['project']" in str(raised.value)
    assert "GOOGLE_CLOUD_PROJECT" in str(raised.value)


def test_vertex_without_credentials_says_how_to_get_them(settings, fake_gemini, tmp_path, monkeypatch):
    # A missing credentials file fails at once: Google's auth never looks further (no metadata server).
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    settings.LLM_PROVIDERS = {
        "default": {
            "BACKEND": BACKEND,
            "OPTIONS": {
                "vertexai": True,
                "project": "p",
                "location": "us-central1",
                "base_url": fake_gemini.base_url,
            },
        }
    }
    with pytest.raises(ConfigurationError, match="gcloud auth application-default login"):
        complete_prompt("summarize", "hi")
    assert fake_gemini.requests == []
