"""The response cache: identical calls at temperature 0 answered once, on locmem and on Redis."""

import asyncio
import io
import json
from decimal import Decimal

import pytest
from django.core.management import call_command

from llmapp import acomplete_prompt, astream_prompt, complete_prompt, stream_prompt
from llmapp.calls import sharedstate
from llmapp.exceptions import ConfigurationError, InvalidRequestError
from llmapp.models import CompletionEvent
from tests.fakes.output_types import TICKET_SCHEMA
from tests.services import CACHE_KINDS, cache_of_kind


@pytest.fixture(params=CACHE_KINDS)
def answers_cache(request, settings):
    """The CACHES alias "answers": a local-memory cache, or a namespace on the machine's Redis."""
    with cache_of_kind(request.param, settings, "answers"):
        yield request.param


@pytest.fixture
def cached(settings, openai_provider, answers_cache):
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    settings.LLM_USECASES = {
        "summarize": {"PROVIDER": "openai", "TEMPERATURE": 0, "CACHE": {"ALIAS": "answers", "TTL": 60}}
    }
    return openai_provider


def llm_json(*args):
    out = io.StringIO()
    call_command("llm", *args, "--json", stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def test_two_identical_calls_send_one_request(cached):
    cached.reply("The summary.", prompt_tokens=100, completion_tokens=10)
    first = llm_json("summarize", "-m", "A long text.")
    second = llm_json("summarize", "-m", "A long text.")
    assert len(cached.requests) == 1
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["text"] == first["text"] == "The summary."
    assert second["attempts"] == 0 and second["usage"] == first["usage"]


def test_anything_that_shapes_the_answer_makes_another_call(cached):
    for _ in range(5):
        cached.reply("An answer.")
    complete_prompt("summarize", "A text.")
    complete_prompt("summarize", "Another text.")
    complete_prompt("summarize", "A text.", prompt="Be brief.")
    complete_prompt("summarize", "A text.", max_output_tokens=50)
    complete_prompt("summarize", "A text.", model="gpt-4o")
    assert len(cached.requests) == 5
    assert complete_prompt("summarize", "A text.").cached


def test_only_temperature_zero_unless_any_temperature(cached, settings):
    cached.reply("one")
    cached.reply("two")
    complete_prompt("summarize", "x", temperature=0.5)
    assert not complete_prompt("summarize", "x", temperature=0.5).cached
    settings.LLM_USECASES = {
        "summarize": {"PROVIDER": "openai", "CACHE": {"ALIAS": "answers", "ANY_TEMPERATURE": True}}
    }
    cached.reply("three")
    complete_prompt("summarize", "x", temperature=0.5)
    assert complete_prompt("summarize", "x", temperature=0.5).cached
    assert len(cached.requests) == 3


def test_a_call_may_refresh_the_cache_or_leave_it_alone(cached):
    cached.reply("old")
    cached.reply("new")
    cached.reply("not kept")
    complete_prompt("summarize", "x")
    assert complete_prompt("summarize", "x", cache="refresh").text == "new"
    assert complete_prompt("summarize", "x", cache="off").text == "not kept"
    assert complete_prompt("summarize", "x").text == "new"
    assert len(cached.requests) == 3
    with pytest.raises(InvalidRequestError, match="cache must be one of 'use', 'refresh', 'off'"):
        complete_prompt("summarize", "x", cache="yes")


def test_the_cli_skips_or_refreshes_the_cache(cached):
    cached.reply("old")
    cached.reply("not kept")
    cached.reply("new")
    llm_json("summarize", "-m", "x")
    assert llm_json("summarize", "-m", "x", "--no-cache")["text"] == "not kept"
    assert llm_json("summarize", "-m", "x")["text"] == "old"
    assert llm_json("summarize", "-m", "x", "--refresh-cache")["text"] == "new"
    assert llm_json("summarize", "-m", "x")["text"] == "new"


def test_errors_and_cut_answers_are_never_kept(cached):
    cached.reply_error(400, "bad")
    cached.reply("cut sho", finish_reason="length")
    cached.reply("whole")
    with pytest.raises(Exception, match="bad"):
        complete_prompt("summarize", "x")
    assert complete_prompt("summarize", "x").text == "cut sho"
    assert complete_prompt("summarize", "x").text == "whole"
    assert complete_prompt("summarize", "x").cached
    assert len(cached.requests) == 3


def test_a_typed_answer_is_parsed_again_and_its_type_is_part_of_the_key(cached):
    cached.reply('{"label": "spam", "score": 1}')
    cached.reply('{"value": ["a"]}')
    complete_prompt("summarize", "x", output=TICKET_SCHEMA)
    hit = complete_prompt("summarize", "x", output=TICKET_SCHEMA)
    assert hit.cached and hit.parsed == {"label": "spam", "score": 1}
    assert complete_prompt("summarize", "x", output=list[str]).parsed == ["a"]
    assert len(cached.requests) == 2


def test_streams_and_async_calls_share_it(cached):
    cached.reply_stream(["The ", "answer."])
    *chunks, first = stream_prompt("summarize", "x")
    assert "".join(chunks) == "The answer." and not first.cached
    *chunks, again = stream_prompt("summarize", "x")
    assert chunks == ["The answer."] and again.cached

    async def both():
        completion = await acomplete_prompt("summarize", "x")
        items = [item async for item in astream_prompt("summarize", "x")]
        return completion, items

    completion, items = asyncio.run(both())
    assert completion.cached and items[-1].cached and items[0] == "The answer."
    assert len(cached.requests) == 1


@pytest.mark.django_db
def test_a_hit_is_recorded_as_cached_using_no_tokens_and_costing_nothing(cached, settings):
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "database", "database"
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {
            **settings.LLM_PROVIDERS["openai"],
            "PRICES": {"gpt-4o-mini": {"INPUT": "1", "OUTPUT": "1"}},
        },
    }
    cached.reply("An answer.", prompt_tokens=100, completion_tokens=10)
    complete_prompt("summarize", "x")
    hit = complete_prompt("summarize", "x")
    assert (hit.cached, hit.cost, hit.attempts) == (True, Decimal(0), 0)
    made, served = CompletionEvent.objects.order_by("id")
    assert (made.cached, made.input_tokens, made.cost) == (False, 100, Decimal("0.00011"))
    assert (served.cached, served.input_tokens, served.output_tokens, served.cost) == (True, 0, 0, Decimal(0))


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"ALIAS": "nope"}, "['CACHE']['ALIAS'] is 'nope', which is not in CACHES"),
        ({"ALIAS": "default", "TTL": 0}, "['CACHE']['TTL'] must be a number of seconds from 1"),
        ({"ALIAS": "default", "SIZE": 3}, "must be a dict of ALIAS, TTL and ANY_TEMPERATURE"),
        ("default", "must be a dict of ALIAS, TTL and ANY_TEMPERATURE"),
    ],
)
def test_a_cache_that_cannot_work_is_a_check_error(settings, cache, message):
    from llmapp.conf.usecases import get_usecase

    settings.LLM_USECASES = {"summarize": {"CACHE": cache}}
    [problem] = get_usecase("summarize").problems()
    assert message in str(problem) and problem.check_id == "llmapp.E027"
    with pytest.raises(ConfigurationError) as raised:
        complete_prompt("summarize", "x", temperature=0)
    assert str(raised.value) == str(problem)


@pytest.mark.parametrize("down", ["refused", "hung"])
def test_a_cache_that_is_down_or_hung_is_a_miss_never_a_failure(settings, openai_provider, down):
    from tests.services import BlackHole, closed_port

    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    settings.LLM_CACHE_TIMEOUT = 0.5
    settings.LLM_USECASES = {
        "summarize": {"PROVIDER": "openai", "TEMPERATURE": 0, "CACHE": {"ALIAS": "answers"}}
    }
    with BlackHole() as hole:
        port = hole.port if down == "hung" else closed_port()
        settings.CACHES = {
            **settings.CACHES,
            "answers": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": f"redis://127.0.0.1:{port}",
            },
        }
        try:
            openai_provider.reply("one")
            openai_provider.reply("two")
            assert complete_prompt("summarize", "x").text == "one"
            assert complete_prompt("summarize", "x").text == "two"  # nothing kept, nothing failed
        finally:
            sharedstate.reset()


def test_a_fallbacks_answer_is_not_kept_for_the_primary(cached, settings):
    settings.LLM_USECASES = {
        "summarize": {**settings.LLM_USECASES["summarize"], "FALLBACKS": ["test"], "RETRIES": 0}
    }
    cached.reply_error(503, "overloaded")
    assert complete_prompt("summarize", "x").provider == "test"
    cached.reply("from openai")
    completion = complete_prompt("summarize", "x")
    assert (completion.provider, completion.cached, completion.text) == ("openai", False, "from openai")


def test_a_provider_set_up_otherwise_is_another_key(cached, settings):
    cached.reply("one")
    cached.reply("two")
    complete_prompt("summarize", "x")
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {
            **settings.LLM_PROVIDERS["openai"],
            "OPTIONS": {**settings.LLM_PROVIDERS["openai"]["OPTIONS"], "structured_output": "prompted"},
        },
    }
    assert complete_prompt("summarize", "x").text == "two"
