"""Signals sent when a call ends: for sync, streamed and async calls alike; a receiver never fails a call."""

import asyncio
import logging

import pytest

from llmapp import acomplete_prompt, complete_prompt, stream_prompt
from llmapp.exceptions import BudgetExceeded, ProviderError, RateLimited
from llmapp.providers import locmem
from llmapp.signals import budget_exceeded, completion_failed, completion_finished, rate_limited


@pytest.fixture
def received(settings):
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    seen = []

    def receiver(signal_name):
        def receive(sender, **kwargs):
            seen.append((signal_name, sender, kwargs))

        return receive

    receivers = {name: receiver(name) for name in ("finished", "failed", "budget", "rate")}
    pairs = [
        (completion_finished, receivers["finished"]),
        (completion_failed, receivers["failed"]),
        (budget_exceeded, receivers["budget"]),
        (rate_limited, receivers["rate"]),
    ]
    for signal, receive in pairs:
        signal.connect(receive)
    yield seen
    for signal, receive in pairs:
        signal.disconnect(receive)


def test_every_kind_of_call_sends_completion_finished_with_its_completion(received):
    complete_prompt("summarize", "one", provider="test")
    *_, streamed = stream_prompt("summarize", "two", provider="test")
    asyncio.run(acomplete_prompt("summarize", "three", provider="test"))
    assert [(name, sender) for name, sender, _ in received] == [("finished", "summarize")] * 3
    assert [kwargs["request"].message for _, _, kwargs in received] == ["one", "two", "three"]
    assert received[1][2]["completion"] is streamed


def test_a_failed_call_sends_completion_failed_with_its_error(received):
    locmem.queue(ProviderError("down", provider="test", status_code=400))
    with pytest.raises(ProviderError):
        complete_prompt("summarize", "x", provider="test")
    [(name, sender, kwargs)] = received
    assert (name, sender, str(kwargs["error"])) == ("failed", "summarize", "down (provider 'test', HTTP 400)")


def test_budgets_and_rate_limits_send_their_own_signal_too(received, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {
            **settings.LLM_PROVIDERS["test"],
            "PRICES": {"locmem": {"INPUT": "1000000", "OUTPUT": "1000000"}},
        },
    }
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test", "BUDGET": {"USD": "1"}}}
    with pytest.raises(BudgetExceeded):
        complete_prompt("summarize", "x")
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test", "RATE_LIMIT": {"RPM": 1}}}
    complete_prompt("summarize", "x")
    with pytest.raises(RateLimited):
        asyncio.run(acomplete_prompt("summarize", "x"))
    assert [name for name, _, _ in received] == ["failed", "budget", "finished", "failed", "rate"]


def test_a_receiver_that_raises_is_logged_and_the_call_goes_on(received, caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    completion_finished.connect(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="llmapp"):
            assert complete_prompt("summarize", "x", provider="test").text == "locmem answer to: x"
    finally:
        completion_finished.disconnect(broken)
    [record] = [r for r in caplog.records if "llmapp signal" in r.getMessage()]
    assert "RuntimeError: receiver bug" in record.getMessage()
