import asyncio
import os
import threading

import pytest

from llmapp import acomplete_prompt, complete_prompt, stream_prompt
from llmapp.calls.types import Completion
from llmapp.exceptions import (
    ConfigurationError,
    InvalidMaxOutputTokens,
    InvalidMessageError,
    InvalidModelError,
    InvalidProviderError,
    InvalidTemperature,
    InvalidUsecaseError,
    LLMError,
    ProviderError,
)
from llmapp.providers import locmem, providers


def test_complete_prompt_sends_the_usecase_config_to_its_provider(settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test", "TEMPERATURE": 0.3, "MAX_OUTPUT_TOKENS": 99}}
    completion = complete_prompt("summarize", "Long text.")
    [request] = locmem.outbox
    assert request.message == "Long text."
    assert "summary" in request.prompt
    assert (request.provider, request.model, request.temperature, request.max_output_tokens) == (
        "test",
        "locmem",
        0.3,
        99,
    )
    assert completion.text == "locmem answer to: Long text."
    assert (completion.provider, completion.model, completion.usecase) == ("test", "locmem", "summarize")
    assert completion.input_tokens > 0 and completion.output_tokens > 0
    assert completion.latency_ms > 0


def test_call_overrides_win_over_the_usecase():
    complete_prompt(
        "example",
        "hi",
        provider="test",
        model="other",
        prompt="Be terse.",
        temperature=1,
        max_output_tokens=5,
    )
    [request] = locmem.outbox
    assert (request.model, request.prompt, request.temperature, request.max_output_tokens) == (
        "other",
        "Be terse.",
        1.0,
        5,
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"usecase": "nope"}, InvalidUsecaseError, "known use cases: example, summarize"),
        ({"provider": "nope"}, InvalidProviderError, "LLM_PROVIDERS has: default, test"),
        ({"temperature": 1.5}, InvalidTemperature, "from 0 to 1, got 1.5"),
        ({"temperature": -0.1}, InvalidTemperature, "got -0.1"),
        ({"temperature": "0.5"}, InvalidTemperature, "got '0.5'"),
        ({"temperature": True}, InvalidTemperature, "got True"),
        ({"max_output_tokens": 0}, InvalidMaxOutputTokens, "positive whole number, got 0"),
        ({"max_output_tokens": 2.5}, InvalidMaxOutputTokens, "got 2.5"),
        ({"max_output_tokens": "10"}, InvalidMaxOutputTokens, "got '10'"),
        ({"message": "   "}, InvalidMessageError, "the message is empty"),
    ],
)
def test_bad_input_is_rejected_before_any_call(kwargs, error, text):
    call = {"usecase": "summarize", "message": "hi", "provider": "test"} | kwargs
    with pytest.raises(error, match=text) as raised:
        complete_prompt(call.pop("usecase"), call.pop("message"), **call)
    assert isinstance(raised.value, LLMError)
    assert locmem.outbox == []


def test_usecase_naming_an_unknown_provider_says_where_it_came_from(settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "opanai"}}
    with pytest.raises(InvalidProviderError, match=r"from LLM_USECASES\['summarize'\]"):
        complete_prompt("summarize", "hi")


def test_model_outside_the_allow_list_is_rejected(settings):
    settings.LLM_PROVIDERS = {
        "default": {"BACKEND": "llmapp.providers.locmem.LocmemProvider", "MODELS": ["small", "large"]},
    }
    assert complete_prompt("summarize", "hi").model == "small"
    with pytest.raises(InvalidModelError, match="its MODELS allow: small, large"):
        complete_prompt("summarize", "hi", model="huge")
    assert len(locmem.outbox) == 1


def test_provider_errors_reach_the_caller_unchanged():
    locmem.queue(ProviderError("overloaded", provider="test", status_code=503, request_id="req_1"))
    with pytest.raises(ProviderError) as raised:
        complete_prompt("summarize", "hi", provider="test")
    assert (raised.value.status_code, raised.value.request_id) == (503, "req_1")
    assert str(raised.value) == "overloaded (provider 'test', HTTP 503, request id req_1)"


def test_stream_prompt_yields_chunks_then_the_completion():
    locmem.queue("one two three")
    items = list(stream_prompt("summarize", "hi", provider="test"))
    *chunks, completion = items
    assert "".join(chunks) == "one two three"
    assert len(chunks) == 3
    assert isinstance(completion, Completion) and completion.text == "one two three"


def test_acomplete_prompt_is_the_async_twin():
    locmem.queue("async answer")
    completion = asyncio.run(acomplete_prompt("summarize", "hi", provider="test"))
    assert completion.text == "async answer"
    assert locmem.outbox[0].message == "hi"


def test_one_provider_instance_per_alias_shared_by_threads_and_rebuilt_on_change(settings):
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(providers["test"])) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(provider) for provider in seen}) == 1
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "extra": {"BACKEND": "llmapp.providers.locmem.LocmemProvider"},
    }
    assert providers["test"] is not seen[0]


@pytest.mark.parametrize(
    ("config", "text"),
    [
        (
            {"BACKEND": "llmapp.providers.nope.Nope"},
            r"LLM_PROVIDERS\['bad'\]\['BACKEND'\] = 'llmapp.providers.nope.Nope' cannot be imported",
        ),
        (
            {"BACKEND": "llmapp.providers.locmem.LocmemProvider", "OPTIONS": {"colour": 1}},
            r"unknown key\(s\) colour .*known: model, response",
        ),
        ({"BACKEND": "llmapp.providers.locmem.LocmemProvider", "OPTION": {}}, r"unknown key\(s\) OPTION"),
    ],
)
def test_misconfigured_provider_names_the_setting(settings, config, text):
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "bad": config}
    with pytest.raises(ConfigurationError, match=text):
        complete_prompt("summarize", "hi", provider="bad")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_builds_its_own_providers():
    parent = providers["test"]
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it got a provider of its own
        os._exit(0 if providers["test"] is not parent else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class SteppedClock:
    """A clock that moves only when told."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.mark.django_db
def test_the_sdks_import_and_client_construction_are_not_latency(openai_provider, settings, monkeypatch):
    from llmapp.calls import recording as tracking
    from llmapp.providers import base
    from llmapp.providers.openai import OpenAIProvider

    clock = SteppedClock()
    monkeypatch.setattr(tracking, "clock", clock)
    monkeypatch.setattr(base, "clock", clock)
    build_client = OpenAIProvider.build_client

    def slow_build(self, *args, **kwargs):
        clock.now += 2.766  # what the anthropic SDK's first import and client took, measured
        return build_client(self, *args, **kwargs)

    monkeypatch.setattr(OpenAIProvider, "build_client", slow_build)
    first = complete_prompt("summarize", "hi", provider="openai")
    second = complete_prompt("summarize", "hi", provider="openai")
    assert first.latency_ms == second.latency_ms == 0.0  # the clock moved only while building
    assert clock.now == 102.766  # the client was built, once
