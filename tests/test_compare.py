"""`manage.py llm <usecase> --compare`: one message on several routes at once, side by side."""

import io
import json

import pytest
from django.core.management import CommandError, call_command

from llmapp.calls.compare import compare_routes, parse_routes
from llmapp.exceptions import InvalidProviderError, InvalidRequestError

# Calls run on threads of their own, whose connections write outside the test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE = "The checkout page fails for Canadian customers since Tuesday's deploy."


def llm(*args, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    call_command("llm", *args, stdout=out, stderr=err, **({"stdin": stdin} if stdin else {}))
    return out.getvalue(), err.getvalue()


def test_both_routes_answer_in_one_table_and_run_at_the_same_time(two_servers, settings):
    fast, slow = two_servers
    settings.LLM_PROVIDERS["fast"]["PRICES"] = {"fast-model": {"INPUT": "1", "OUTPUT": "2"}}
    fast.reply("Checkout fails in Canada since the deploy.", delay=0.5, prompt_tokens=30, completion_tokens=9)
    slow.reply(
        "Canadian checkout broke after Tuesday's release.", delay=1.0, prompt_tokens=31, completion_tokens=8
    )

    out, _ = llm("summarize", "--compare", "fast,slow", "-m", MESSAGE)

    lines = out.splitlines()
    assert lines[0].split() == ["ROUTE", "MODEL", "LATENCY", "IN", "OUT", "COST", "FINISH", "ANSWER"]
    assert lines[1].split()[:2] == ["fast", "fast-model"] and "Checkout fails in Canada" in lines[1]
    assert lines[2].split()[:2] == ["slow", "slow-model"] and "Canadian checkout broke" in lines[2]
    assert lines[1].split()[4:6] == ["30", "9"] and lines[2].split()[7] == "stop"  # "1,000 ms": two words
    # Each row's latency is its own route's: at least the delay its server held the answer.
    latencies = [int(line.split()[2].replace(",", "")) for line in lines[1:3]]
    assert latencies[0] >= 500 and latencies[1] >= 1000 and lines[1].split()[3] == "ms"
    # Priced on the fast route only: 30 tokens in at $1, 9 out at $2 per million.
    assert lines[1].split()[6] == "$0.000048" and lines[2].split()[6] == "-"
    # Each request arrived while the other was still unanswered: the routes ran at once,
    # so the comparison takes about as long as the slower one, not both.
    [fast_request], [slow_request] = fast.requests, slow.requests
    assert slow_request.received_at < fast_request.received_at + 0.5  # before fast answered
    assert fast_request.received_at < slow_request.received_at + 1.0  # before slow answered
    # Each with the use case's prompt.
    for request in (fast_request, slow_request):
        assert request.body["messages"][0]["content"].startswith("You summarize text.")


def test_a_failing_route_is_a_row_and_the_command_still_succeeds(two_servers):
    fast, slow = two_servers
    fast.reply("Fine.")
    slow.reply_error(400, "This model does not exist")

    out, _ = llm("summarize", "--compare", "fast,slow", "-m", MESSAGE)

    [fast_row] = [line for line in out.splitlines() if line.startswith("fast ")]
    [slow_row] = [line for line in out.splitlines() if line.startswith("slow ")]
    assert "Fine." in fast_row
    assert "failed" in slow_row and "This model does not exist" in slow_row
    assert len(slow.requests) == 1


def test_each_route_has_the_use_cases_limits_retries_and_deadline_and_no_fallback(two_servers, settings):
    fast, slow = two_servers
    settings.LLM_USECASES = {
        "summarize": {"FALLBACKS": ["fast"], "MAX_OUTPUT_TOKENS": 77, "RETRIES": 1, "TIMEOUT": 2}
    }
    fast.reply_error(500, "a passing failure", headers={"retry-after": "0"})
    fast.reply("Recovered.")
    slow.hang(10)  # past the use case's deadline

    out, _ = llm("summarize", "--compare", "fast,slow", "-m", MESSAGE, "--json")

    [answered, timed_out] = json.loads(out)
    assert (answered["route"], answered["text"], answered["attempts"]) == ("fast", "Recovered.", 2)
    assert timed_out["route"] == "slow" and timed_out["error"]["type"] == "ProviderTimeout"
    # The failed route's row is its own: its fallback (fast) got no third request.
    assert len(fast.requests) == 2 and len(slow.requests) == 1
    assert {request.body["max_tokens"] for request in [*fast.requests, *slow.requests]} == {77}


def test_every_route_failing_exits_non_zero_with_the_rows_printed(two_servers):
    fast, slow = two_servers
    fast.reply_error(400, "bad request one")
    slow.reply_error(400, "bad request two")
    out = io.StringIO()
    with pytest.raises(CommandError, match="every route failed"):
        call_command("llm", "summarize", "--compare", "fast,slow", "-m", MESSAGE, stdout=out)
    assert "bad request one" in out.getvalue() and "bad request two" in out.getvalue()


def test_json_prints_one_record_per_route(two_servers):
    fast, slow = two_servers
    fast.reply("One.")
    slow.reply_error(400, "nope")
    out, _ = llm("summarize", "--compare", "fast,slow", "-m", MESSAGE, "--json")
    [first, second] = json.loads(out)
    assert (first["route"], first["text"], first["model"]) == ("fast", "One.", "fast-model")
    assert second["route"] == "slow" and second["error"]["type"] == "ProviderError"
    assert "nope" in second["error"]["message"]


def test_long_answers_are_cut_unless_full(two_servers):
    fast, slow = two_servers
    long_answer = " ".join(f"word{n}" for n in range(120))
    for _ in range(2):
        fast.reply(long_answer)
        slow.reply("Short.")
    out, _ = llm("summarize", "--compare", "fast,slow", "-m", MESSAGE)
    assert "word119" not in out and "…" in out
    out, _ = llm("summarize", "--compare", "fast,slow", "-m", MESSAGE, "--full")
    assert "word119" in out


def test_schema_messages_and_stdin_go_to_every_route(two_servers):
    fast, slow = two_servers
    for server in (fast, slow):
        server.reply('{"label": "bug"}')
    out, _ = llm(
        "summarize",
        "--compare",
        "fast,slow",
        "-m",
        MESSAGE,
        "--json",
        "--schema",
        '{"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}',
    )
    assert [record["parsed"] for record in json.loads(out)] == [{"label": "bug"}, {"label": "bug"}]
    assert all(
        server.requests[-1].body["response_format"]["type"] == "json_schema" for server in (fast, slow)
    )

    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Summarize our chat."},
    ]
    for server in (fast, slow):
        server.reply("We said hello.")
    llm("summarize", "--compare", "fast,slow", "--messages", "-", stdin=io.StringIO(json.dumps(conversation)))
    assert all(len(server.requests[-1].body["messages"]) == 4 for server in (fast, slow))

    for server in (fast, slow):
        server.reply("Piped.")
    out, _ = llm("summarize", "--compare", "fast,slow", stdin=io.StringIO("A message from a pipe."))
    assert out.count("Piped.") == 2
    assert all(
        server.requests[-1].body["messages"][-1]["content"] == "A message from a pipe."
        for server in (fast, slow)
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--compare", "fast,nope"), "unknown provider 'nope'"),
        (("--compare", "fast,fast"), "route 'fast' is given twice"),
        (("--compare", " , "), "name the routes to compare"),
        (("--compare", "fast", "--provider", "slow"), "cannot be combined with --provider"),
        (("--full",), "--full goes with --compare"),
    ],
)
def test_bad_routes_are_one_line_and_nothing_is_sent(two_servers, args, says):
    fast, slow = two_servers
    with pytest.raises(CommandError, match=says):
        call_command("llm", "summarize", *args, "-m", MESSAGE, stdout=io.StringIO())
    assert fast.requests == [] and slow.requests == []


def test_the_service_refuses_bad_routes_before_sending(two_servers):
    with pytest.raises(InvalidProviderError):
        compare_routes("summarize", MESSAGE, ["fast", "nope"])
    with pytest.raises(InvalidRequestError, match="at most"):
        parse_routes(",".join(f"fast:m{n}" for n in range(17)))
    assert [str(route) for route in parse_routes("fast, slow:slow-2")] == ["fast", "slow:slow-2"]


def test_two_routes_to_one_model_are_refused(two_servers):
    with pytest.raises(InvalidRequestError, match="are the same model"):
        compare_routes("summarize", MESSAGE, ["fast", "fast:fast-model"])
    assert two_servers[0].requests == []


def test_a_first_comparison_in_a_process_sends_the_saved_override(two_servers):
    from llmapp.conf import overrides

    fast, slow = two_servers
    overrides.save_override("summarize", {"PROMPT": "Overridden prompt."})
    overrides.forget()  # as a fresh process: nothing read yet
    compare_routes("summarize", MESSAGE, ["fast", "slow"])
    assert [server.requests[0].body["messages"][0]["content"] for server in (fast, slow)] == [
        "Overridden prompt."
    ] * 2
