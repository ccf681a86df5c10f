"""Check the fake OpenAI server speaks the wire format the real openai SDK expects."""

import contextlib
import json
import threading
from collections.abc import Iterator

import httpx2
import openai
import pytest

from tests.fakes.openai_server import FakeOpenAIServer, fake_openai

# Listing the imported fixture as used keeps ruff from reporting F401 on the import
# and F811 on every test that takes it as an argument.
__all__ = ["fake_openai"]

MODEL = "gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is Django?"},
]


@pytest.fixture
def client(fake_openai: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    """Yield a real SDK client pointed at the fake server, without retries."""
    with openai.OpenAI(api_key="sk-test-fake", base_url=fake_openai.base_url, max_retries=0) as sdk_client:
        yield sdk_client


def create(client: openai.OpenAI, **kwargs):
    """Create a chat completion with the module's model and messages."""
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, **kwargs)


def test_default_reply_echoes_the_last_user_message(client):
    completion = create(client)

    assert completion.id == "chatcmpl-fake-1"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Fake answer to: What is Django?"
    assert choice.finish_reason == "stop"
    # Words: "Be brief. What is Django?" -> 5; "Fake answer to: What is Django?" -> 6.
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == 11
    # The SDK copies the x-request-id response header onto the parsed model.
    assert completion._request_id == "req_fake_1"


def test_raw_response_exposes_the_request_id_header(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)

    assert raw.headers["x-request-id"] == "req_fake_1"
    assert raw.request_id == "req_fake_1"
    assert raw.parse().choices[0].message.content == "Fake answer to: What is Django?"


def test_records_the_request(client, fake_openai):
    create(client, temperature=0.2, max_tokens=50)

    [request] = fake_openai.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-fake"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "model": MODEL,
        "messages": MESSAGES,
        "temperature": 0.2,
        "max_tokens": 50,
    }


def test_replies_are_used_in_order_then_the_default(client, fake_openai):
    fake_openai.reply("First.", finish_reason="length", prompt_tokens=40, completion_tokens=7)
    fake_openai.reply("Second.")

    first, second, third = create(client), create(client), create(client)

    assert first.choices[0].message.content == "First."
    assert first.choices[0].finish_reason == "length"
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (40, 7)
    assert first.usage.total_tokens == 47
    assert second.choices[0].message.content == "Second."
    assert third.choices[0].message.content.startswith("Fake answer to: ")
    assert [c._request_id for c in (first, second, third)] == [
        "req_fake_1",
        "req_fake_2",
        "req_fake_3",
    ]


def test_reset_forgets_requests_and_queued_replies(client, fake_openai):
    fake_openai.reply("Scripted.")
    create(client, max_tokens=1)
    fake_openai.reply("Never sent.")

    fake_openai.reset()

    assert fake_openai.requests == []
    assert create(client).choices[0].message.content.startswith("Fake answer to: ")


def test_stream_with_include_usage(client):
    stream = create(client, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Fake answer to: What is Django?"
    assert chunks[-2].choices[0].finish_reason == "stop"
    # The usage chunk comes last, with no choices; the others carry usage=None.
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.prompt_tokens == 5
    assert usage_chunk.usage.completion_tokens == 6
    assert usage_chunk.usage.total_tokens == 11
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {"chatcmpl-fake-1"}
    assert stream.response.headers["x-request-id"] == "req_fake_1"


def test_scripted_stream_without_include_usage(client, fake_openai):
    fake_openai.reply_stream(["Hel", "lo", " world"], finish_reason="length")

    chunks = list(create(client, stream=True))

    deltas = [c.choices[0].delta.content for c in chunks]
    assert deltas == ["", "Hel", "lo", " world", None]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


def test_plain_reply_is_streamed_word_by_word(client, fake_openai):
    fake_openai.reply("One two  three.")

    chunks = list(create(client, stream=True))

    deltas = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert deltas == ["One ", "two  ", "three."]


@pytest.mark.parametrize(
    ("status", "error_class", "error_type", "code"),
    [
        (400, openai.BadRequestError, "invalid_request_error", None),
        (401, openai.AuthenticationError, "invalid_request_error", "invalid_api_key"),
        (429, openai.RateLimitError, "requests", "rate_limit_exceeded"),
        (500, openai.InternalServerError, "server_error", None),
    ],
)
def test_error_replies_map_to_sdk_exceptions(client, fake_openai, status, error_class, error_type, code):
    fake_openai.reply_error(status, "Something went wrong.", code=code)

    with pytest.raises(error_class) as excinfo:
        create(client)

    error = excinfo.value
    assert error.status_code == status
    assert error.request_id == "req_fake_1"
    # The SDK unwraps {"error": {...}} into .body, .type and .code.
    assert error.body["message"] == "Something went wrong."
    assert error.type == error_type
    assert error.code == code
    assert error.message == f"Error code: {status} - Something went wrong."


def test_error_headers_reach_the_sdk(client, fake_openai):
    fake_openai.reply_error(429, "Slow down.", headers={"Retry-After": "7"})

    with pytest.raises(openai.RateLimitError) as excinfo:
        create(client)

    assert excinfo.value.response.headers["retry-after"] == "7"


def test_malformed_json_is_not_wrapped_by_the_sdk(client, fake_openai):
    fake_openai.reply_raw(200, b'{"id": "chatcmpl-1", "choices": [')

    # Surprising but true: on a 2xx response the SDK calls response.json() unguarded,
    # so a plain json.JSONDecodeError escapes, not an openai.APIError.
    with pytest.raises(json.JSONDecodeError):
        create(client)


def test_non_json_error_body_keeps_the_raw_text(client, fake_openai):
    fake_openai.reply_raw(502, b"<html>Bad gateway</html>", content_type="text/html")

    with pytest.raises(openai.InternalServerError) as excinfo:
        create(client)

    assert excinfo.value.status_code == 502
    assert excinfo.value.body == "<html>Bad gateway</html>"
    assert excinfo.value.request_id == "req_fake_1"


def test_cut_stream_raises_a_connection_error(client, fake_openai):
    fake_openai.reply_stream(["Hel", "lo", " world"], cut_after=2)
    received = []

    # The body is chunked, so closing before the terminating chunk is a protocol error:
    # the SDK yields the chunks it got, then raises APIConnectionError (not a silent end).
    with pytest.raises(openai.APIConnectionError) as excinfo:
        for chunk in create(client, stream=True):
            received.append(chunk.choices[0].delta.content)

    assert received == ["", "Hel", "lo"]
    assert isinstance(excinfo.value.__cause__, httpx2.RemoteProtocolError)


def test_hanging_server_times_out_the_client(client, fake_openai):
    fake_openai.hang(10)

    with pytest.raises(openai.APITimeoutError):
        create(client, timeout=0.5)
    assert fake_openai.wait_for_hangup(5)  # noticed while the reply was held back


def test_stop_wakes_a_reply_that_is_held_back(client, fake_openai):
    fake_openai.hang(60)

    def call():
        with contextlib.suppress(openai.APIError):
            create(client, timeout=120)

    caller = threading.Thread(target=call)
    caller.start()
    while not fake_openai.requests:
        threading.Event().wait(0.01)
    fake_openai.stop()  # does not wait the 60 seconds out, nor for the caller
    caller.join(30)
    assert not caller.is_alive()


def test_lists_models(client):
    models = client.models.list()

    assert [m.id for m in models] == ["gpt-4o-mini", "gpt-4o"]


def test_unknown_path_is_a_not_found_error(client, fake_openai):
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.get("/embeddings-nope", cast_to=object)

    assert excinfo.value.message == "Error code: 404 - Invalid URL (GET /v1/embeddings-nope)"
    assert fake_openai.requests[0].path == "/v1/embeddings-nope"


def test_accepts_paths_without_the_v1_prefix(fake_openai):
    base_url = fake_openai.base_url.removesuffix("/v1")
    with openai.OpenAI(api_key="sk-test-fake", base_url=base_url, max_retries=0) as sdk_client:
        completion = create(sdk_client)

    assert completion.choices[0].message.content == "Fake answer to: What is Django?"
    assert fake_openai.requests[0].path == "/chat/completions"


def test_stopped_server_refuses_connections():
    with FakeOpenAIServer() as server:
        base_url = server.base_url

    with (
        openai.OpenAI(api_key="sk-test-fake", base_url=base_url, max_retries=0) as sdk_client,
        pytest.raises(openai.APIConnectionError),
    ):
        create(sdk_client)
