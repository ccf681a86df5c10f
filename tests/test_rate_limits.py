"""Rate limits: requests and tokens a minute, calls at once, across workers, on locmem and Redis."""

import asyncio
import io
import json
import subprocess
import sys
import threading

import pytest
from django.core.management import call_command

from llmapp import acomplete_prompt, complete_prompt
from llmapp.calls import sharedstate
from llmapp.calls.spend import ratelimits
from llmapp.conf.usecases import get_usecase
from llmapp.exceptions import ConfigurationError, ProviderError, RateLimited
from tests.conftest import ROOT
from tests.services import redis_namespace
from tests.timekeeping import simulated_time  # noqa: F401

#: A Unix time 20 s into a minute: the tests' minutes start and end where they say.
START = 1_800_000_000.0 - 1_800_000_000.0 % 60 + 20


@pytest.fixture
def limited(settings, openai_provider, limits_cache, simulated_time, monkeypatch):  # noqa: F811
    """Use case "summarize" on openai, in simulated time that starts 20 s into a minute."""
    monkeypatch.setattr(ratelimits, "clock", lambda: START + simulated_time.now - 1000.0)
    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    return openai_provider


def usecase(settings, rate_limit, **fields):
    settings.LLM_USECASES = {
        "summarize": {"PROVIDER": "openai", "PROMPT": "", "RETRIES": 0, "RATE_LIMIT": rate_limit, **fields}
    }


def test_requests_a_minute_are_held_and_the_error_says_when_to_come_back(limited, settings):
    usecase(settings, {"RPM": 2})
    complete_prompt("summarize", "one")
    complete_prompt("summarize", "two")
    with pytest.raises(RateLimited) as raised:
        complete_prompt("summarize", "three")
    error = raised.value
    assert (error.scope, error.limit, error.retry_after) == ("use case 'summarize'", "RPM", 40.0)
    assert (
        str(error)
        == "use case 'summarize' is rate limited: the RPM of use case 'summarize'; try again in 40.0s"
    )
    assert len(limited.requests) == 2


def test_wait_waits_within_the_deadline_then_raises(limited, settings, simulated_time):  # noqa: F811
    usecase(settings, {"RPM": 1, "ON_LIMIT": "wait"}, TIMEOUT=60)
    complete_prompt("summarize", "one")
    complete_prompt("summarize", "two")  # waits the 40 s to the next minute
    assert simulated_time.waits == [40.0]
    assert len(limited.requests) == 2
    usecase(settings, {"RPM": 1, "ON_LIMIT": "wait"}, TIMEOUT=30)
    with pytest.raises(RateLimited):  # the next minute is 60 s away: more than the deadline
        complete_prompt("summarize", "three")
    assert len(limited.requests) == 2


def test_tokens_a_minute_count_the_estimated_input_and_the_output_limit(limited, settings):
    usecase(settings, {"TPM": 250}, MAX_OUTPUT_TOKENS=100)
    complete_prompt("summarize", "hi")  # 1 + 100
    complete_prompt("summarize", "hi")  # 202
    with pytest.raises(RateLimited, match="the TPM of"):
        complete_prompt("summarize", "hi")


def test_calls_at_once_are_held_and_a_slot_comes_back_when_an_attempt_ends(limited, settings):
    usecase(settings, {"CONCURRENCY": 1})
    limited.reply("slow", delay=0.5)
    started = threading.Event()
    outcome = []

    def first():
        started.set()
        outcome.append(complete_prompt("summarize", "first").text)

    thread = threading.Thread(target=first)
    thread.start()
    started.wait()
    while not limited.requests:  # the first call holds the slot while the server thinks
        threading.Event().wait(0.01)
    with pytest.raises(RateLimited, match="the CONCURRENCY of"):
        complete_prompt("summarize", "second")
    thread.join()
    assert outcome == ["slow"]
    limited.reply_error(500, "boom")
    with pytest.raises(ProviderError):
        complete_prompt("summarize", "third")  # a failed attempt gives its slot back too
    assert complete_prompt("summarize", "fourth").text == "Fake answer to: fourth"


def test_each_subject_has_its_own_limit(limited, settings):
    usecase(settings, {"PER_SUBJECT": {"RPM": 1}})
    complete_prompt("summarize", "x", subject="ann")
    complete_prompt("summarize", "x", subject="bob")
    complete_prompt("summarize", "x")
    with pytest.raises(RateLimited, match="of this subject"):
        complete_prompt("summarize", "x", subject="ann")


def test_a_providers_limit_holds_every_use_case_and_its_429_pauses_it(limited, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {**settings.LLM_PROVIDERS["openai"], "RATE_LIMIT": {"RPM": 100}},
    }
    settings.LLM_USECASES = {
        "summarize": {"PROVIDER": "openai", "RETRIES": 0},
        "example": {"PROVIDER": "openai", "RETRIES": 0},
    }
    limited.reply_error(429, "slow down", headers={"Retry-After": "30"})
    with pytest.raises(ProviderError):
        complete_prompt("summarize", "x")
    sharedstate.get(settings.LLM_LIMITS_CACHE, "limits").run(lambda cache: None)  # the pause is written
    with pytest.raises(RateLimited, match=r"provider 'openai' asked to wait \(HTTP 429\)"):
        complete_prompt("example", "x")
    assert len(limited.requests) == 1


def test_an_async_call_is_held_alike(limited, settings):
    usecase(settings, {"RPM": 1})

    async def twice():
        await acomplete_prompt("summarize", "one")
        await acomplete_prompt("summarize", "two")

    with pytest.raises(RateLimited):
        asyncio.run(twice())
    assert len(limited.requests) == 1


@pytest.fixture
def two_a_minute(limited, settings, monkeypatch, simulated_time):  # noqa: F811
    """Use case "summarize" limited to two calls a minute; a batch's waits in simulated time."""
    from llmapp import batch

    usecase(settings, {"RPM": 2})
    monkeypatch.setattr(batch, "sleep", simulated_time.sleep)
    return limited


def test_a_batch_paces_itself_instead_of_failing_items(two_a_minute, tmp_path, simulated_time):  # noqa: F811
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(f'"item {number}"\n' for number in range(5)))
    call_command(
        "llm", "summarize", "--input", str(source), "--output", str(output), "--quiet", stdout=io.StringIO()
    )
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record.get("error") for record in records] == [None] * 5
    assert len(two_a_minute.requests) == 5
    assert simulated_time.waits == [40.0, 60.0]  # two a minute: 5 items take three minutes


@pytest.mark.django_db(transaction=True)  # its run is saved; its calls run on threads of their own
def test_an_evaluation_waits_for_its_rate_limit_instead_of_failing_cases(
    two_a_minute,
    tmp_path,
    simulated_time,  # noqa: F811
):
    two_a_minute.answer_with = lambda text: text.upper()
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        "".join(json.dumps({"message": f"case {n}", "expected": f"CASE {n}"}) + "\n" for n in range(5))
    )
    out = io.StringIO()
    evaluation = ("--input", str(cases), "--routes", "openai", "--output", str(tmp_path / "out.jsonl"))
    call_command("llm_eval", "summarize", *evaluation, "--concurrency", "1", "--quiet", stdout=out)
    assert out.getvalue().splitlines()[1].split()[1:5] == ["100%", "5", "0", "0"]
    assert len(two_a_minute.requests) == 5
    assert simulated_time.waits == [40.0, 60.0]


@pytest.mark.parametrize(
    ("rate_limit", "message"),
    [
        ({"RPM": 0}, "['RATE_LIMIT']['RPM'] must be a whole number from 1, got 0"),
        ({"RPM": "60"}, "must be a whole number from 1, got '60'"),
        ({"RPS": 1}, "must be a dict of CONCURRENCY, RPM, TPM"),
        ({"RPM": 5, "ON_LIMIT": "queue"}, "['RATE_LIMIT']['ON_LIMIT'] must be 'raise' or 'wait'"),
    ],
)
def test_a_malformed_rate_limit_is_a_check_error_and_one_line(settings, rate_limit, message):
    settings.LLM_USECASES = {"summarize": {"RATE_LIMIT": rate_limit}}
    [problem] = get_usecase("summarize").problems()
    assert message in str(problem) and problem.check_id == "llmapp.E029"
    with pytest.raises(ConfigurationError):
        complete_prompt("summarize", "x")


WORKER = """
from llmapp import complete_prompt
from llmapp.calls.spend import ratelimits
from llmapp.exceptions import RateLimited
ratelimits.clock = lambda: {start}  # both processes in the same minute, whatever the real clock says
sent = 0
for number in range(5):
    try:
        complete_prompt("summarize", f"call {{number}}")
        sent += 1
    except RateLimited:
        pass
print(sent)
"""


def test_two_processes_share_one_limit(manage, fake_openai):
    with redis_namespace() as namespace:
        env = manage.env(
            {
                **namespace.env,
                "LLM_SUMMARIZE_PROVIDER": "openai",
                "OPENAI_BASE_URL": fake_openai.base_url,
                "LLM_SUMMARIZE_RATE_LIMIT": '{"RPM": 5}',
            }
        )
        code = WORKER.format(start=START)
        workers = [
            subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        sent = []
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
            sent.append(int(out.split()[-1]))
    assert sum(sent) == 5 and len(fake_openai.requests) == 5
