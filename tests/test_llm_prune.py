from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from llmapp.conf.durations import parse_age
from llmapp.models import CompletionEvent


def make_events(*ages):
    CompletionEvent.objects.bulk_create(
        [
            CompletionEvent(
                usecase="summarize",
                provider="test",
                model="m",
                status="ok",
                latency_ms=10,
                created_at=timezone.now() - age,
            )
            for age in ages
        ]
    )


def prune(*args):
    out = StringIO()
    call_command("llm_prune", *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_ages(text, expected):
    assert parse_age(text, "--older-than") == expected


@pytest.mark.parametrize("text", ["30", "d", "30x", "-1d", "0d", "1.5h", "30 days", ""])
def test_bad_ages_name_the_format(text):
    expected = r"--older-than must be .*m \(minutes\), h \(hours\), d \(days\) or w \(weeks\)"
    with pytest.raises(CommandError, match=expected):
        parse_age(text, "--older-than")


@pytest.mark.django_db
def test_prunes_only_older_events_and_says_how_many():
    make_events(timedelta(days=40), timedelta(days=31), timedelta(days=29), timedelta(hours=1))
    output = prune("--older-than", "30d")
    assert output.startswith("Removed 2 completion event(s) older than 30d (recorded before ")
    assert CompletionEvent.objects.count() == 2

    assert prune("--older-than", "90m").startswith("Removed 1 completion event(s) older than 90m")
    assert prune("--older-than", "2w").startswith("Removed 0 completion event(s)")
    assert CompletionEvent.objects.count() == 1


@pytest.mark.django_db
def test_verbosity_zero_is_quiet():
    make_events(timedelta(days=3))
    assert prune("--older-than", "1d", "--verbosity", "0") == ""
    assert not CompletionEvent.objects.exists()


@pytest.mark.django_db
def test_the_age_is_required_and_checked():
    with pytest.raises(CommandError, match="--older-than"):
        prune()
    with pytest.raises(CommandError, match=r"e\.g\. 30d; got 'soon'"):
        prune("--older-than", "soon")


def test_from_the_command_line(manage):
    result = manage("llm_prune", "--older-than", "30d")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Removed 0 completion event(s) older than 30d")

    result = manage("llm_prune", "--older-than", "month")
    assert result.returncode == 1
    assert "--older-than must be a whole number followed by m (minutes)" in result.stderr
