import asyncio
import logging
import time

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connection, connections, transaction

from llmapp import acomplete_prompt, complete_prompt, eventstream, metrics, stream_prompt
from llmapp.conf import overrides
from llmapp.eventstream.base import EventStream
from llmapp.exceptions import ProviderError
from llmapp.metrics import locmem as sent_metrics
from llmapp.models import CompletionEvent
from llmapp.providers import locmem


class BrokenStream(EventStream):
    def record(self, event):
        raise RuntimeError("the event store is down")


@pytest.fixture
def metrics_sent(settings):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.locmem.LocmemMetricsBackend"
    sent_metrics.reset()

    def read():
        metrics.flush()
        return list(sent_metrics.sent)

    yield read
    sent_metrics.reset()


@pytest.mark.django_db
def test_a_completion_becomes_one_row_without_content_by_default():
    locmem.queue("The answer.")
    completion = complete_prompt("summarize", "A private message.", provider="test")
    event = CompletionEvent.objects.get()
    assert (event.usecase, event.provider, event.model, event.status) == ("summarize", "test", "locmem", "ok")
    assert event.input_tokens == completion.input_tokens and event.output_tokens == 3
    assert event.latency_ms == pytest.approx(completion.latency_ms)
    assert event.finish_reason == "stop" and event.attempts == 1
    assert (event.prompt, event.message, event.response) == ("", "", "")


@pytest.mark.django_db
def test_content_is_kept_only_with_llm_log_content(settings):
    settings.LLM_LOG_CONTENT = True
    locmem.queue("The answer.")
    complete_prompt("summarize", "A message.", provider="test", prompt="Be brief.")
    event = CompletionEvent.objects.get()
    assert (event.prompt, event.message, event.response) == ("Be brief.", "A message.", "The answer.")


@pytest.mark.django_db
def test_a_failed_call_is_recorded_with_its_error():
    locmem.queue(ProviderError("rate limited", provider="test", status_code=429, request_id="req_9"))
    with pytest.raises(ProviderError):
        complete_prompt("example", "hi", provider="test")
    event = CompletionEvent.objects.get()
    assert (event.status, event.error_type, event.status_code, event.request_id) == (
        "error",
        "ProviderError",
        429,
        "req_9",
    )
    assert event.error_message == "rate limited (provider 'test', HTTP 429, request id req_9)"


@pytest.mark.django_db
def test_streams_are_recorded_when_they_end_or_are_abandoned():
    locmem.queue("one two three", "four five six")
    list(stream_prompt("summarize", "hi", provider="test"))
    stream = stream_prompt("summarize", "hi", provider="test")
    next(stream)
    stream.close()
    assert list(CompletionEvent.objects.order_by("id").values_list("status", "error_type")) == [
        ("ok", ""),
        ("error", "StreamAbandoned"),
    ]


@pytest.mark.django_db(transaction=True)
def test_the_caller_sends_no_query_and_a_flush_makes_the_event_visible(settings, django_assert_num_queries):
    settings.LLM_EVENTSTREAM_OPTIONS = {"synchronous": False}
    overrides.refresh()  # reads the overrides, then only within a second on a per-process cache
    overrides._state.clock = lambda: 0.0
    try:
        with django_assert_num_queries(0):
            complete_prompt("summarize", "hi", provider="test")
    finally:
        overrides._state.clock = time.monotonic
    assert eventstream.flush(timeout=10)
    assert CompletionEvent.objects.get().usecase == "summarize"


@pytest.mark.django_db(transaction=True)
def test_synchronous_mode_inserts_before_the_call_returns(settings):
    settings.LLM_EVENTSTREAM_OPTIONS = {"synchronous": True}
    complete_prompt("summarize", "hi", provider="test")
    assert CompletionEvent.objects.get().usecase == "summarize"


@pytest.mark.django_db(transaction=True)
def test_async_calls_are_recorded():
    async def call():
        try:
            await acomplete_prompt("summarize", "hi", provider="test")
        finally:
            # The event was written from asgiref's worker thread: close its connection,
            # as Django does at the end of a request.
            await sync_to_async(connections.close_all)()

    asyncio.run(call())
    assert CompletionEvent.objects.get().status == "ok"


def test_logging_stream_logs_each_call(settings, caplog):
    settings.LLM_EVENTSTREAM = "logging"
    settings.LLM_TSDB = "null"
    with caplog.at_level(logging.INFO, logger="llmapp.usage"):
        complete_prompt("summarize", "hi", provider="test")
    [record] = caplog.records
    assert "usecase=summarize provider=test model=locmem status=ok" in record.getMessage()
    assert record.usage_event["usecase"] == "summarize"


@pytest.mark.django_db
def test_null_stream_keeps_nothing(settings):
    settings.LLM_EVENTSTREAM = "null"
    complete_prompt("summarize", "hi", provider="test")
    assert not CompletionEvent.objects.exists()


def test_a_failure_to_record_is_logged_and_counted_never_raised(settings, caplog, metrics_sent):
    settings.LLM_EVENTSTREAM = "tests.test_eventstream.BrokenStream"
    completion = complete_prompt("summarize", "hi", provider="test")
    assert completion.text == "locmem answer to: hi"
    assert "Could not record the usage event of use case 'summarize'" in caplog.text
    assert ("incr", "llmapp.eventstream.failed", 1, {"usecase": "summarize"}) in metrics_sent()


@pytest.mark.django_db(transaction=True)
def test_a_missing_table_is_one_warning_line_and_spares_the_callers_transaction(caplog):
    with connection.schema_editor() as editor:
        editor.delete_model(CompletionEvent)
    try:
        with transaction.atomic():
            completion = complete_prompt("summarize", "hi", provider="test")
            # The failed insert was inside a savepoint: the caller's transaction still works.
            assert User.objects.count() == 0
        assert completion.text == "locmem answer to: hi"
        [record] = [r for r in caplog.records if r.name == "llmapp.eventstream"]
        assert "run manage.py migrate" in record.getMessage()
        assert record.exc_info is None
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(CompletionEvent)


def test_each_call_emits_count_latency_and_tokens(metrics_sent):
    locmem.queue("three word answer", ProviderError("down", provider="test", status_code=503))
    complete_prompt("summarize", "hi", provider="test")
    with pytest.raises(ProviderError):
        complete_prompt("summarize", "hi", provider="test")
    sent = metrics_sent()
    ok = {"usecase": "summarize", "provider": "test", "model": "locmem", "status": "ok"}
    error = ok | {"status": "error"}
    assert ("incr", "llmapp.complete_prompt.calls", 1, ok) in sent
    assert ("incr", "llmapp.complete_prompt.calls", 1, error) in sent
    assert ("incr", "llmapp.complete_prompt.output_tokens", 3, ok) in sent
    assert [kind for kind, key, _, tags in sent if key == "llmapp.complete_prompt.latency_ms"] == [
        "timing"
    ] * 2


@pytest.mark.django_db
def test_closing_a_stream_after_its_completion_records_one_success():
    stream = stream_prompt("summarize", "hi", provider="test")
    for item in stream:
        if not isinstance(item, str):
            break
    stream.close()
    assert list(CompletionEvent.objects.values_list("status", flat=True)) == ["ok"]


@pytest.mark.django_db
def test_an_interrupted_call_is_recorded():
    locmem.queue(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        complete_prompt("summarize", "hi", provider="test")
    assert CompletionEvent.objects.get().error_type == "KeyboardInterrupt"


@pytest.mark.django_db
@pytest.mark.parametrize("with_content", [False, True])
def test_the_event_of_a_conversation_counts_its_turns_and_keeps_them_only_with_content(
    settings, with_content
):
    settings.LLM_LOG_CONTENT = with_content
    turns = [
        {"role": "user", "content": "My order never came."},
        {"role": "assistant", "content": "When did you order?"},
        {"role": "user", "content": "Tuesday."},
    ]
    complete_prompt("summarize", provider="test", messages=turns)
    event = CompletionEvent.objects.get()
    assert event.messages == 3
    if with_content:
        assert (event.conversation, event.message) == (turns[:2], "Tuesday.")
    else:
        assert (event.conversation, event.message) == (None, "")
    complete_prompt("summarize", "one message", provider="test")
    assert CompletionEvent.objects.order_by("-id").first().messages == 1


def test_a_priced_call_counts_its_cost_in_millionths_of_a_dollar(metrics_sent, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {**settings.LLM_PROVIDERS["test"], "PRICES": {"locmem": {"INPUT": "1000", "OUTPUT": "2000"}}},
    }
    locmem.queue("three word answer")
    completion = complete_prompt("summarize", "hi", provider="test")
    ok = {"usecase": "summarize", "provider": "test", "model": "locmem", "status": "ok"}
    assert (
        "incr",
        "llmapp.complete_prompt.cost_microusd",
        round(completion.cost * 1_000_000),
        ok,
    ) in metrics_sent()
