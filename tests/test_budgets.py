"""Budgets: reserved before a call is sent, settled after, shared by every worker, on locmem and Redis."""

import asyncio
import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from llmapp import acomplete_prompt, complete_prompt
from llmapp.calls import sharedstate
from llmapp.calls.spend import budgets
from llmapp.conf.usecases import get_usecase
from llmapp.exceptions import BudgetExceeded, ConfigurationError, InvalidRequestError
from llmapp.models import CompletionEvent
from llmapp.providers import locmem

#: $1 per million tokens in and out: a call's most is its tokens in millionths of a dollar.
DOLLAR_A_MILLION = {"INPUT": "1", "OUTPUT": "1"}
#: "hi" is one token in; MAX_OUTPUT_TOKENS 10: each call may cost at most $0.000011.
WORST = Decimal("0.000011")
#: What the fake server bills such a call ("hi" in, "Fake answer to: hi" out): settled, a
#: call leaves room for another worst case in WORST + BILLED.
BILLED = Decimal("0.000005")
TWO_CALLS = str(WORST + BILLED)


@pytest.fixture
def budgeted(settings, openai_provider, limits_cache):
    """Use case "summarize" on a priced openai with at most three worst-case calls a day."""
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {**settings.LLM_PROVIDERS["openai"], "PRICES": {"gpt-4o-mini": DOLLAR_A_MILLION}},
    }
    usecase(settings, {"USD": str(WORST * 3 + Decimal("0.000005")), "PERIOD": "1d"})
    return openai_provider


def usecase(settings, budget, **fields):
    settings.LLM_USECASES = {
        "summarize": {
            "PROVIDER": "openai",
            "PROMPT": "",
            "MAX_OUTPUT_TOKENS": 10,
            "RETRIES": 0,
            "BUDGET": budget,
            **fields,
        }
    }


def test_twenty_threads_racing_for_three_calls_send_three(budgeted):
    for _ in range(20):
        budgeted.reply("ok", delay=0.5)  # no call settles before every thread has reserved
    start = threading.Barrier(20)
    outcomes = []

    def call():
        start.wait()
        try:
            outcomes.append(complete_prompt("summarize", "hi"))
        except BudgetExceeded as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(budgeted.requests) == 3
    assert sum(not isinstance(outcome, BudgetExceeded) for outcome in outcomes) == 3
    assert sum(isinstance(outcome, BudgetExceeded) for outcome in outcomes) == 17


def test_the_error_says_what_was_spent_of_what_and_when_it_resets(budgeted, monkeypatch):
    noon = datetime(2026, 12, 6, 12, 0, tzinfo=UTC).timestamp()
    monkeypatch.setattr(budgets, "clock", lambda: noon)
    with pytest.raises(BudgetExceeded) as raised:
        for _ in range(10):
            complete_prompt("summarize", "hi")
    error = raised.value
    assert (error.usecase, error.scope, error.limit) == ("summarize", "use case", Decimal("0.000038"))
    # Each call was settled to what it cost, not held at its most: six fit, not three.
    assert len(budgeted.requests) == 6
    assert error.spent == sum(CompletionCost.of(request) for request in budgeted.requests) == BILLED * 6
    assert error.resets_at == datetime(2026, 12, 7, tzinfo=UTC)
    assert str(error).endswith(
        "budget per 1d, too little left for this call; it resets at 2026-12-07 00:00 UTC"
    )


class CompletionCost:
    """What the fake server billed for a request: its usage, at a dollar a million tokens."""

    @staticmethod
    def of(request):
        from tests.fakes.http import message_text, words

        prompt = words(" ".join(message_text(m.get("content")) for m in request.body["messages"]))
        return (
            Decimal(prompt + words(f"Fake answer to: {request.body['messages'][-1]['content']}")) / 1_000_000
        )


def test_a_new_period_has_its_whole_budget(budgeted, settings, monkeypatch):
    now = [datetime(2026, 12, 6, 23, 0, tzinfo=UTC).timestamp()]
    monkeypatch.setattr(budgets, "clock", lambda: now[0])
    usecase(settings, {"USD": TWO_CALLS, "PERIOD": "1d"})
    complete_prompt("summarize", "hi")
    complete_prompt("summarize", "hi")  # settled below its most: one more fits
    with pytest.raises(BudgetExceeded):
        complete_prompt("summarize", "hi")
    now[0] += 3600  # past midnight UTC
    complete_prompt("summarize", "hi")
    assert len(budgeted.requests) == 3


def test_fallback_takes_the_first_route_that_fits_and_a_free_one_always_does(budgeted, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {**settings.LLM_PROVIDERS["test"], "PRICES": {"locmem": {"FREE": True}}},
    }
    usecase(settings, {"USD": "0.000001", "ON_EXCEEDED": "fallback"}, FALLBACKS=["test"])
    completion = complete_prompt("summarize", "hi")
    assert completion.provider == "test" and budgeted.requests == []
    assert completion.cost == 0


def test_fallback_with_no_route_that_fits_raises_the_last_refusal(budgeted, settings):
    usecase(settings, {"USD": "0.000001", "ON_EXCEEDED": "fallback"}, FALLBACKS=["openai:gpt-4o-mini"])
    with pytest.raises(BudgetExceeded, match=r"has spent \$0 of its \$0\.000001 budget"):
        complete_prompt("summarize", "hi")
    assert budgeted.requests == []


@pytest.mark.django_db
def test_each_subject_has_its_own_budget_and_is_recorded(budgeted, settings, django_user_model):
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "database", "database"
    usecase(settings, {"PER_SUBJECT": {"USD": TWO_CALLS, "PERIOD": "1h"}})
    ann = django_user_model.objects.create(username="ann")
    complete_prompt("summarize", "hi", subject=ann)
    complete_prompt("summarize", "hi", subject=ann)
    with pytest.raises(BudgetExceeded) as raised:
        complete_prompt("summarize", "hi", subject=ann)
    assert raised.value.scope == "subject" and str(raised.value).startswith("this subject of use case")
    complete_prompt("summarize", "hi", subject="team-blue")  # another subject: its own budget
    complete_prompt("summarize", "hi")  # no subject: no subject's budget
    subjects = list(CompletionEvent.objects.order_by("id").values_list("subject", "status"))
    assert subjects == [
        (f"auth.user:{ann.pk}", "ok"),
        (f"auth.user:{ann.pk}", "ok"),
        (f"auth.user:{ann.pk}", "error"),
        ("team-blue", "ok"),
        ("", "ok"),
    ]
    with pytest.raises(
        InvalidRequestError, match="subject must be a saved model instance or a non-empty string"
    ):
        complete_prompt("summarize", "hi", subject=42)


def test_an_async_call_reserves_alike(budgeted, settings):
    usecase(settings, {"USD": TWO_CALLS})

    async def twice():
        await acomplete_prompt("summarize", "hi")
        await acomplete_prompt("summarize", "hi")
        await acomplete_prompt("summarize", "hi")

    with pytest.raises(BudgetExceeded):
        asyncio.run(twice())
    assert len(budgeted.requests) == 2


def test_a_failed_attempt_gives_back_what_it_held(budgeted, settings):
    usecase(settings, {"USD": str(WORST)})
    budgeted.reply_error(500, "down")
    with pytest.raises(Exception, match="down"):
        complete_prompt("summarize", "hi")
    complete_prompt("summarize", "hi")  # the 500 was not billed: the budget is whole
    assert len(budgeted.requests) == 2


def test_a_limits_cache_that_is_down_lets_calls_through(settings, openai_provider):
    from tests.services import closed_port

    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    settings.CACHES = {
        **settings.CACHES,
        "limits": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_port()}",
        },
    }
    settings.LLM_LIMITS_CACHE = "limits"
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {**settings.LLM_PROVIDERS["openai"], "PRICES": {"gpt-4o-mini": DOLLAR_A_MILLION}},
    }
    usecase(settings, {"USD": "0.000001"})
    try:
        complete_prompt("summarize", "hi")  # the budget cannot be kept: a guard, not a gate
        assert len(openai_provider.requests) == 1
    finally:
        sharedstate.reset()


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"USD": 5.0}, "['BUDGET']['USD'] must be a decimal string such as '50'"),
        ({"USD": "5", "PERIOD": "daily"}, "['BUDGET']['PERIOD'] must be a whole number followed by m"),
        ({"USD": "5", "ON_EXCEEDED": "wait"}, "['BUDGET']['ON_EXCEEDED'] must be 'raise' or 'fallback'"),
        ({"PERIOD": "1d", "LIMIT": 3}, "must be a dict of USD, PERIOD, ON_EXCEEDED and PER_SUBJECT"),
        ({"ON_EXCEEDED": "raise"}, "sets no limit"),
    ],
)
def test_a_malformed_budget_is_a_check_error_and_one_line(settings, budget, message):
    settings.LLM_USECASES = {"summarize": {"BUDGET": budget}}
    [problem] = get_usecase("summarize").problems()
    assert message in str(problem) and problem.check_id == "llmapp.E028"
    with pytest.raises(ConfigurationError) as raised:
        complete_prompt("summarize", "hi")
    assert str(raised.value) == str(problem)


def test_a_budgeted_route_with_no_price_is_a_warning(settings):
    settings.LLM_USECASES = {"summarize": {"BUDGET": {"USD": "5"}, "FALLBACKS": ["test"]}}
    problems = get_usecase("summarize").problems()
    assert [problem.check_id for problem in problems] == ["llmapp.W008", "llmapp.W008"]
    assert "model 'preview' of provider 'default' has no price" in str(problems[0])
    locmem.queue("fine")
    assert complete_prompt("summarize", "hi").text  # unpriced: not held, not refused


def test_text_without_spaces_is_reserved_at_its_length_not_its_words(budgeted, settings):
    # 600 characters of Chinese are one "word", but hundreds of tokens: reserved as such.
    usecase(settings, {"USD": "0.0002"})
    with pytest.raises(BudgetExceeded):
        complete_prompt("summarize", "预算" * 300)
    assert budgeted.requests == []


def test_a_call_that_ends_in_an_error_of_its_own_gives_back_what_it_held(budgeted, settings, monkeypatch):
    from llmapp.providers import providers

    usecase(settings, {"USD": str(WORST)})
    backend = providers["openai"]

    def broken(request):
        raise RuntimeError("a bug below the provider")

    monkeypatch.setattr(backend, "complete", broken)
    with pytest.raises(RuntimeError):
        complete_prompt("summarize", "hi")
    monkeypatch.undo()
    complete_prompt("summarize", "hi")  # the budget is whole again
    assert len(budgeted.requests) == 1


def test_a_stream_cut_after_text_keeps_its_reservation_and_its_cost_is_unknown(budgeted, settings):
    from llmapp import stream_prompt

    usecase(settings, {"USD": TWO_CALLS})
    budgeted.reply_stream(["one ", "two ", "three"], cut_after=2)
    with pytest.raises(Exception, match="cut after 2 chunk"):
        list(stream_prompt("summarize", "hi"))
    # Billed for what is not known: held at its most (given back, a call would fit).
    with pytest.raises(BudgetExceeded):
        complete_prompt("summarize", "hi")
    assert len(budgeted.requests) == 1


def test_a_refused_route_is_no_attempt_and_the_error_has_a_reason(budgeted, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {**settings.LLM_PROVIDERS["test"], "PRICES": {"locmem": {"FREE": True}}},
    }
    usecase(settings, {"USD": "0.000001", "ON_EXCEEDED": "fallback"}, FALLBACKS=["test"])
    assert complete_prompt("summarize", "hi").attempts == 1
    with pytest.raises(BudgetExceeded) as raised:
        usecase(settings, {"USD": "0.000001"})
        complete_prompt("summarize", "hi")
    assert raised.value.reason == str(raised.value)


def test_subjects_anonymous_visitors_and_long_names():
    from django.contrib.auth.models import AnonymousUser

    from llmapp.calls.spend.budgets import subject_key

    assert subject_key(AnonymousUser()) == "anonymous"
    with pytest.raises(InvalidRequestError, match="at most 200 characters, got 201"):
        subject_key("x" * 201)


def test_a_reservation_that_lands_after_its_caller_stopped_waiting_is_given_back(settings, openai_provider):
    import threading

    from django.core.cache import caches

    from tests.fakes import slow_cache

    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    settings.CACHES = {**settings.CACHES, "limits": {"BACKEND": "tests.fakes.slow_cache.SlowLocMemCache"}}
    settings.LLM_LIMITS_CACHE = "limits"
    settings.LLM_CACHE_TIMEOUT = 0.1
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {**settings.LLM_PROVIDERS["openai"], "PRICES": {"gpt-4o-mini": DOLLAR_A_MILLION}},
    }
    usecase(settings, {"USD": "1"})
    slow_cache.release.clear()
    try:
        complete_prompt("summarize", "hi")  # the cache did not answer in time: the call went on
    finally:
        slow_cache.release.set()  # the cache comes back: the held increment lands
        workers = [thread for thread in threading.enumerate() if thread.name == "llmapp-cache-limits"]
        sharedstate.reset()  # the workers end once their jobs have
        for worker in workers:
            worker.join(10)
    assert len(openai_provider.requests) == 1
    [key] = [key.split(":", 2)[2] for key in caches["limits"]._cache if "llmapp:budget:" in key]
    assert caches["limits"].get(key) == 0  # landed, and taken back at once
