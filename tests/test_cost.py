"""What a call cost: PRICES per provider and model, summed over a call's attempts, recorded."""

import io
import json
from decimal import Decimal

import pytest
from django.core.management import call_command

from llmapp import complete_prompt
from llmapp.calls.spend.cost import Price, Tally, parse_prices
from llmapp.calls.types import Completion
from llmapp.exceptions import ConfigurationError, InvalidOutputError
from llmapp.models import CompletionEvent
from llmapp.providers import locmem
from tests.fakes.output_types import TICKET_SCHEMA

MINI = {"INPUT": "0.15", "OUTPUT": "0.60"}


@pytest.fixture
def priced(settings, openai_provider):
    """openai's gpt-4o-mini priced, and the test provider's model at other rates."""
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {**settings.LLM_PROVIDERS["openai"], "PRICES": {"gpt-4o-mini": MINI}},
        "test": {**settings.LLM_PROVIDERS["test"], "PRICES": {"locmem": {"INPUT": "1", "OUTPUT": "2"}}},
    }
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai"}}
    return openai_provider


def llm_json(*args):
    out = io.StringIO()
    call_command("llm", *args, "--json", stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def test_the_cost_is_computed_from_the_servers_token_counts(priced):
    priced.reply("An answer.", prompt_tokens=1000, completion_tokens=500)
    printed = llm_json("summarize", "-m", "hello")
    # 1,000 in at $0.15/M and 500 out at $0.60/M.
    assert printed["cost"] == "0.00045"
    assert Decimal(printed["cost"]) == Decimal("0.00015") + Decimal("0.0003")


def test_a_model_with_no_price_costs_null_never_zero(priced, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {**settings.LLM_PROVIDERS["openai"], "PRICES": {"gpt-4o": MINI}},
    }
    priced.reply("An answer.", prompt_tokens=1000, completion_tokens=500)
    assert llm_json("summarize", "-m", "hello")["cost"] is None


def test_a_free_model_costs_zero(priced, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {**settings.LLM_PROVIDERS["openai"], "PRICES": {"gpt-4o-mini": {"FREE": True}}},
    }
    priced.reply("An answer.", prompt_tokens=1000, completion_tokens=500)
    assert complete_prompt("summarize", "x").cost == Decimal(0)


def test_a_call_costs_the_sum_of_every_attempt_that_answered(priced, settings):
    settings.LLM_USECASES = {
        "summarize": {
            "PROVIDER": "openai",
            "FALLBACKS": ["test"],
            "OUTPUT": TICKET_SCHEMA,
            "OUTPUT_RETRIES": 0,
        }
    }
    priced.reply_error(500, "try again")  # a retry: nothing answered, nothing billed
    priced.reply('{"label": "eggs"}', prompt_tokens=1000, completion_tokens=100)  # billed, then given up
    locmem.queue('{"label": "ham", "score": 1}')
    completion = complete_prompt("summarize", "Buy pills")
    assert (completion.provider, completion.attempts) == ("test", 3)
    request = locmem.outbox[0]
    fallback = Price(Decimal(1), Decimal(2)).cost(completion.input_tokens, completion.output_tokens)
    assert request.model == "locmem"
    assert completion.cost == Decimal("0.00021") + fallback


def test_one_unpriced_attempt_makes_the_sum_unknown(priced, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {"BACKEND": "llmapp.providers.locmem.LocmemProvider"},
    }
    settings.LLM_USECASES = {
        "summarize": {
            "PROVIDER": "openai",
            "FALLBACKS": ["test"],
            "OUTPUT": TICKET_SCHEMA,
            "OUTPUT_RETRIES": 0,
        }
    }
    priced.reply('{"label": "eggs"}', prompt_tokens=1000, completion_tokens=100)
    completion = complete_prompt("summarize", "Buy pills")
    assert completion.provider == "test" and completion.cost is None


@pytest.mark.django_db
def test_the_usage_event_keeps_the_cost_and_the_rates_it_was_priced_at(priced, settings):
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "database", "database"
    priced.reply("An answer.", prompt_tokens=2000, completion_tokens=1000)
    complete_prompt("summarize", "x")
    settings.LLM_USECASES = {
        "summarize": {"PROVIDER": "openai", "OUTPUT": TICKET_SCHEMA, "OUTPUT_RETRIES": 0}
    }
    priced.reply("not json", prompt_tokens=1000, completion_tokens=0)
    with pytest.raises(InvalidOutputError):
        complete_prompt("summarize", "x")
    answered, failed = CompletionEvent.objects.order_by("id")
    assert answered.cost == Decimal("0.0009")
    assert answered.rates == {"openai:gpt-4o-mini": MINI}
    # The call failed, but its answer was billed.
    assert (failed.status, failed.cost) == ("error", Decimal("0.00015"))
    out = io.StringIO()
    call_command("llm", "--usage", stdout=out)
    [row] = [line for line in out.getvalue().splitlines() if line.startswith("summarize")]
    assert row.split()[-1] == "$0.001050"


def test_the_rates_of_a_price_and_its_cached_input():
    price = parse_prices("openai", {"m": {"INPUT": "2.50", "OUTPUT": "10", "CACHED_INPUT": "1.25"}})["m"]
    tally = Tally()
    answer = Completion(
        "x", "u", "openai", "m", input_tokens=1000, output_tokens=100, cached_input_tokens=400
    )
    # 600 fresh at $2.50/M, 400 cached at $1.25/M, 100 out at $10/M.
    assert price.cost(1000, 100, 400) == Decimal("0.0015") + Decimal("0.0005") + Decimal("0.001")
    assert price.as_rates() == {"INPUT": "2.50", "OUTPUT": "10", "CACHED_INPUT": "1.25"}
    assert tally.add("nope", "m", answer) is None and tally.total is None


@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ({"m": {"INPUT": 0.15, "OUTPUT": "1"}}, "is the float 0.15: write it as a string ('0.15')"),
        ({"m": {"INPUT": "-1", "OUTPUT": "1"}}, "must be a price from 0 up"),
        ({"m": {"INPUT": "cheap", "OUTPUT": "1"}}, "must be a decimal string such as '0.15', got 'cheap'"),
        ({"m": {"INPUT": "1"}}, "must have INPUT and OUTPUT"),
        ({"m": {"INPUT": "1", "OUTPUT": "1", "TAX": "1"}}, "unknown key(s): TAX"),
        ({"m": {"FREE": "yes"}}, "must have INPUT and OUTPUT"),
        (["m"], "must be a dict of model name to its price"),
    ],
)
def test_malformed_prices_are_a_check_error_and_one_line(settings, prices, message):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {**settings.LLM_PROVIDERS["test"], "PRICES": prices},
    }
    with pytest.raises(ConfigurationError) as raised:
        parse_prices("test", prices)
    assert message in str(raised.value) and raised.value.check_id == "llmapp.E026"
    with pytest.raises(ConfigurationError, match=r"^LLM_PROVIDERS\['test'\]\['PRICES'\]"):
        complete_prompt("summarize", "x", provider="test")


def test_a_dry_run_shows_the_most_a_call_can_cost(priced):
    out = io.StringIO()
    call_command("llm", "summarize", "-m", "one two three", "--dry-run", stdout=out)
    described = json.loads(out.getvalue())
    # At most 400 tokens out at $0.60/M, plus the estimated input at $0.15/M.
    assert Decimal(described["max_cost_usd"]) > Decimal("0.00024")
    assert Decimal(described["max_cost_usd"]) < Decimal("0.00024") + Decimal("0.0001")
    assert priced.requests == []
