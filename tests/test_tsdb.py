from datetime import timedelta

import pytest
from django.utils import timezone

from llmapp.models import CompletionEvent
from llmapp.tsdb import get_tsdb


def event(usecase, latency_ms, status="ok", age=timedelta(minutes=5), tokens=(10, 2)):
    return CompletionEvent(
        usecase=usecase,
        provider="test",
        model="m",
        status=status,
        latency_ms=latency_ms,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        created_at=timezone.now() - age,
    )


@pytest.mark.django_db
def test_usage_per_usecase_over_the_window():
    rows = [event("summarize", ms, status="error" if ms % 20 == 0 else "ok") for ms in range(1, 101)]
    rows += [event("summarize", 9999, age=timedelta(days=2))]  # outside the 24 hours
    rows += [event("example", 40, tokens=(None, None))]
    CompletionEvent.objects.bulk_create(rows)

    usage = get_tsdb().get_usage()
    summarize = usage["summarize"]
    assert (summarize.calls, summarize.errors, summarize.error_rate) == (100, 5, 0.05)
    assert (summarize.p50_ms, summarize.p95_ms) == (50, 95)
    assert (summarize.input_tokens, summarize.output_tokens) == (1000, 200)
    example = usage["example"]
    assert (example.calls, example.p50_ms, example.p95_ms, example.input_tokens) == (1, 40, 40, 0)

    assert set(get_tsdb().get_usage(usecases=["example"])) == {"example"}
    assert get_tsdb().get_usage(window=timedelta(days=3))["summarize"].calls == 101


def test_null_tsdb_has_no_data(settings):
    settings.LLM_TSDB = "null"
    assert get_tsdb().has_data is False
    assert get_tsdb().get_usage() == {}


@pytest.mark.django_db
def test_cli_usage_table(settings):
    import io

    from django.core.management import call_command

    CompletionEvent.objects.bulk_create([event("summarize", ms) for ms in (10, 20, 30)])
    out = io.StringIO()
    call_command("llm", "--usage", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "USE",
        "CASE",
        "CALLS",
        "24H",
        "ERRORS",
        "P50",
        "P95",
        "TOKENS",
        "IN",
        "TOKENS",
        "OUT",
        "COST",
    ]
    # No price was known for those calls: their cost is said to be unknown, not zero.
    assert lines[1].split() == ["summarize", "3", "0.0%", "20.0ms", "30.0ms", "30", "6", "3", "unpriced"]
    settings.LLM_TSDB = "null"
    out = io.StringIO()
    call_command("llm", "--usage", stdout=out)
    assert out.getvalue().startswith("No data")
