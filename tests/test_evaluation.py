"""`manage.py llm_eval`: a use case over a dataset on several routes, and how each route did."""

import io
import json
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from llmapp.conf import overrides
from llmapp.models import EvaluationRun
from tests.conftest import ROOT
from tests.environment import interruptible

# Calls run on threads of their own, whose connections write outside the test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)

CASES = 20


def number(text):
    return int(re.search(r"\d+", text).group())


def capital(text):
    return f"City {number(text)}"


def write_cases(path, count=CASES, **extra):
    path.write_text(
        "".join(
            json.dumps(
                {"id": f"c{n}", "message": f"Capital of country {n}?", "expected": f"City {n}", **extra}
            )
            + "\n"
            for n in range(count)
        )
    )
    return path


def evaluate(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("llm_eval", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_one_route_right_on_every_case_the_other_on_half(two_servers, tmp_path, settings):
    fast, slow = two_servers
    settings.LLM_PROVIDERS["fast"]["PRICES"] = {"fast-model": {"INPUT": "1", "OUTPUT": "2"}}
    fast.answer_with = capital
    slow.answer_with = lambda text: capital(text) if number(text) % 2 == 0 else "Somewhere else"
    cases = write_cases(tmp_path / "cases.jsonl")
    report = tmp_path / "report.json"

    out, _ = evaluate(
        "summarize",
        "--input",
        str(cases),
        "--routes",
        "fast,slow",
        "--output",
        str(tmp_path / "out.jsonl"),
        "--report",
        str(report),
        "--concurrency",
        "6",
    )

    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows["fast"][1:5] == ["100%", "20", "0", "0"]
    assert rows["slow"][1:5] == ["50%", "10", "10", "0"]
    odd = [f"c{n}" for n in range(1, CASES, 2)]
    assert f"slow failed on: {', '.join(odd)}" in out
    assert "10 case(s) where the routes disagree." in out

    written = json.loads(report.read_text())
    [fast_figures, slow_figures] = written["routes"]
    assert (fast_figures["accuracy"], slow_figures["accuracy"]) == (1.0, 0.5)
    assert slow_figures["failing"] == odd and fast_figures["failing"] == []
    assert 0 < fast_figures["latency_p50_ms"] <= fast_figures["latency_p95_ms"]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for figures in (fast_figures, slow_figures):
        usage = [record["usage"] for record in records if record["route"] == figures["route"]]
        assert figures["input_tokens"] == sum(tokens["input_tokens"] for tokens in usage) > 0
        assert figures["output_tokens"] == sum(tokens["output_tokens"] for tokens in usage) > 0
    # Priced on the fast route: its tokens at $1 in and $2 out per million; the slow one is not.
    expected = Decimal(fast_figures["input_tokens"] + 2 * fast_figures["output_tokens"]) / 1_000_000
    assert Decimal(fast_figures["cost"]) == expected and slow_figures["cost"] is None
    assert [case["case"] for case in written["disagreements"]] == odd
    assert written["disagreements"][0]["routes"]["slow"] == {
        "outcome": "failed",
        "answer": "Somewhere else",
        "why": "the answer is not the expected one",
    }

    run = EvaluationRun.objects.get()
    assert (run.usecase, run.cases, run.routes) == ("summarize", CASES, ["fast", "slow"])
    assert run.summary == written["routes"] and len(run.disagreements) == 10
    assert len(fast.requests) == len(slow.requests) == CASES
    # Each case on each route once, fallbacks off: a route's row is its own.
    assert all(request.body["model"] == "slow-model" for request in slow.requests)


def test_a_rerun_sends_nothing_already_answered(two_servers, tmp_path):
    fast, _ = two_servers
    fast.answer_with = capital
    cases = write_cases(tmp_path / "cases.jsonl", count=6)
    output = tmp_path / "out.jsonl"
    args = ("summarize", "--input", str(cases), "--routes", "fast", "--output", str(output))
    evaluate(*args)
    out, _ = evaluate(*args)
    assert len(fast.requests) == 6  # all six were in the output already
    assert out.splitlines()[1].split()[1] == "100%"
    assert EvaluationRun.objects.count() == 2


@pytest.mark.parametrize(
    ("check", "expected", "answers", "passes"),
    [
        ("exact", "City 1", "City 1", True),
        ("exact", "City 1", "City 1, of course", False),
        ("contains", "city 1", "It is City 1.", True),
        ("regex", r"^City \d+$", "City 1", True),
        ("regex", r"^City \d+$", "The City 1", False),
        ("fields", {"label": "bug"}, '{"label": "bug", "score": 3}', True),
        ("fields", {"label": "bug"}, '{"label": "billing"}', False),
        ("fields", {"label": "bug"}, "not json", False),
    ],
)
def test_each_check(two_servers, tmp_path, check, expected, answers, passes):
    fast, _ = two_servers
    fast.reply(answers)
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        json.dumps({"id": "one", "message": "Capital of country 1?", "expected": expected, "check": check})
    )
    evaluate(
        "summarize",
        "--input",
        str(cases),
        "--routes",
        "fast",
        "--output",
        str(tmp_path / "out.jsonl"),
        "--json",
    )
    [record] = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert record["passed"] is passes


def test_a_judge_use_case_rules_with_a_typed_verdict(two_servers, tmp_path, settings):
    fast, slow = two_servers
    fast.answer_with = capital
    settings.LLM_USECASES = {"grader": {"PROVIDER": "slow", "PROMPT": "You grade answers."}}

    def verdict(text):
        answer = text.split("Answer:\n", 1)[1].split("\n\n")[0]
        return json.dumps({"passed": answer.endswith("2") is False, "reason": "checked"})

    slow.answer_with = verdict
    cases = write_cases(tmp_path / "cases.jsonl", count=4)
    out, _ = evaluate(
        "summarize",
        "--input",
        str(cases),
        "--routes",
        "fast",
        "--output",
        str(tmp_path / "out.jsonl"),
        "--judge",
        "grader",
        "--json",
    )
    [figures] = json.loads(out)["routes"]
    assert (figures["passed"], figures["failing"]) == (3, ["c2"])
    # What judging cost is counted apart from what the route cost.
    judge_tokens = sum(request.body and len(request.body["messages"]) for request in slow.requests)
    assert figures["judge"]["input_tokens"] > 0 and judge_tokens == 8  # 4 rulings, system and user each
    assert "judged for" not in out  # --json prints the report alone
    # The judge was asked for the verdict's schema, with the expectation and the answer.
    judged = slow.requests[0].body
    assert judged["response_format"]["json_schema"]["schema"]["required"] == ["passed", "reason"]
    assert judged["messages"][0]["content"].startswith("You grade answers.")


def test_a_resume_asks_a_judge_that_failed_again_without_calling_the_route_again(
    two_servers, tmp_path, settings
):
    fast, slow = two_servers
    fast.answer_with = capital
    settings.LLM_USECASES = {"grader": {"PROVIDER": "slow", "PROMPT": "You grade answers.", "RETRIES": 0}}
    slow.answer_with = lambda text: json.dumps({"passed": True, "reason": "fine"})
    slow.reply_error(400, "the judge refused this once")  # the first ruling: c0's, one call at a time
    cases = write_cases(tmp_path / "cases.jsonl", count=2)
    output = tmp_path / "out.jsonl"
    args = (
        "summarize",
        "--input",
        str(cases),
        "--routes",
        "fast",
        "--output",
        str(output),
        "--judge",
        "grader",
    )

    out, _ = evaluate(*args, "--concurrency", "1", "--json")
    [figures] = json.loads(out)["routes"]
    assert (figures["passed"], figures["errored"]) == (1, 1)
    first = json.loads(output.read_text().splitlines()[0])
    assert first["error"]["type"] == "judge ProviderError" and first["answer"]["text"] == "City 0"

    out, _ = evaluate(*args, "--json")
    [figures] = json.loads(out)["routes"]
    assert (figures["passed"], figures["errored"], figures["input_tokens"]) == (
        2,
        0,
        first["answer"]["usage"]["input_tokens"] * 2,
    )
    assert len(fast.requests) == 2  # each case's answer once: the resume judged the kept one
    assert len(slow.requests) == 3


def test_a_prompt_version_runs_the_use_case_as_that_revision_had_it(two_servers, tmp_path, settings):
    fast, _ = two_servers
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "fast"}}
    first = overrides.save_override("summarize", {"PROMPT": "The first prompt."})
    overrides.save_override("summarize", {"PROMPT": "The second prompt."})
    cases = write_cases(tmp_path / "cases.jsonl", count=2)
    evaluate(
        "summarize",
        "--input",
        str(cases),
        "--output",
        str(tmp_path / "a.jsonl"),
        "--prompt-version",
        str(first.pk),
    )
    evaluate("summarize", "--input", str(cases), "--output", str(tmp_path / "b.jsonl"))
    systems = [request.body["messages"][0]["content"] for request in fast.requests]
    assert systems == ["The first prompt."] * 2 + ["The second prompt."] * 2
    assert EvaluationRun.objects.order_by("pk").first().revision == first.pk


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ([{"id": "a", "message": "x"}], 'line 1 must be a JSON object with "expected"'),
        ([{"id": "a", "message": "x", "expected": "y", "check": "close"}], "check 'close'"),
        (
            [{"id": "a", "message": "x", "expected": "("}, {"id": "a", "message": "x", "expected": "y"}],
            "same id 'a'",
        ),
        ([{"id": "a", "message": "x", "expected": "(", "check": "regex"}], "not a regular expression"),
        ([{"id": "a", "message": "x", "expected": "y", "colour": "red"}], "unknown key(s) colour"),
    ],
)
def test_bad_cases_stop_before_any_call_in_one_line(two_servers, tmp_path, lines, says):
    fast, _ = two_servers
    cases = tmp_path / "cases.jsonl"
    cases.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(CommandError, match=re.escape(says)):
        evaluate(
            "summarize", "--input", str(cases), "--routes", "fast", "--output", str(tmp_path / "o.jsonl")
        )
    assert fast.requests == []


def test_an_unknown_route_or_judge_is_one_line(two_servers, tmp_path):
    cases = write_cases(tmp_path / "cases.jsonl", count=1)
    with pytest.raises(CommandError, match="unknown provider 'nope'"):
        evaluate(
            "summarize", "--input", str(cases), "--routes", "fast,nope", "--output", str(tmp_path / "o.jsonl")
        )
    with pytest.raises(CommandError, match="unknown use case 'nojudge'"):
        evaluate(
            "summarize", "--input", str(cases), "--output", str(tmp_path / "o.jsonl"), "--judge", "nojudge"
        )
    assert two_servers[0].requests == []


def test_cases_run_concurrently(two_servers, tmp_path):
    fast, _ = two_servers
    fast.answer_with = capital
    fast.answer_delay = 1.0
    cases = write_cases(tmp_path / "cases.jsonl", count=4)
    args = ("summarize", "--input", str(cases), "--routes", "fast", "--output", str(tmp_path / "out.jsonl"))
    evaluate(*args, "--concurrency", "4")
    arrivals = sorted(request.received_at for request in fast.requests)
    assert len(arrivals) == 4 and arrivals[-1] < arrivals[0] + 1.0  # all sent before the first answer


def test_a_case_that_errored_is_sent_again_on_a_resume(two_servers, tmp_path):
    fast, slow = two_servers
    fast.answer_with = slow.answer_with = capital
    fast.reply_error(400, "refused this once")  # the first request: c0, with one call at a time
    cases = write_cases(tmp_path / "cases.jsonl", count=3)
    output = tmp_path / "out.jsonl"
    args = ("summarize", "--input", str(cases), "--routes", "fast,slow", "--output", str(output))

    out, _ = evaluate(*args, "--concurrency", "1")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows["fast"][1:5] == ["67%", "2", "0", "1"] and rows["slow"][1:5] == ["100%", "3", "0", "0"]
    assert "fast failed on: c0" in out and "1 case(s) where the routes disagree." in out

    out, _ = evaluate(*args)
    # Only the errored call was sent again; the finished ones were not.
    assert len(fast.requests) == 4 and len(slow.requests) == 3
    assert fast.requests[-1].body["messages"][-1]["content"] == "Capital of country 0?"
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows["fast"][1:5] == ["100%", "3", "0", "0"]


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes_without_sending_finished_cases(
    manage, tmp_path, fake_openai
):
    # Two routes on one server: one right on every case, one on half of them.
    def answer(model, text):
        right = model == "right-model" or number(text) % 2 == 0
        return capital(text) if right else "Somewhere else"

    fake_openai.answer_for_model = answer
    fake_openai.answer_delay = 0.2
    cases = write_cases(tmp_path / "cases.jsonl")
    output = tmp_path / "out.jsonl"
    env = manage.env({"OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_API_KEY": "sk-test-key-000000"})
    args = [
        sys.executable,
        str(ROOT / "manage.py"),
        "llm_eval",
        "summarize",
        "--input",
        str(cases),
        "--routes",
        "openai:right-model,openai:half-model",
        "--output",
        str(output),
        "--concurrency",
        "2",
    ]
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=interruptible,
    )
    while not output.exists() or len(output.read_text().splitlines()) < 4:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Interrupted: what finished is in" in err and "Traceback" not in err
    finished = len(output.read_text().splitlines())
    assert 4 <= finished < 2 * CASES
    sent_before = len(fake_openai.requests)

    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:3]}
    assert rows["openai:right-model"][1:5] == ["100%", "20", "0", "0"]
    assert rows["openai:half-model"][1:5] == ["50%", "10", "10", "0"]
    odd = ", ".join(f"c{n}" for n in range(1, CASES, 2))
    assert f"openai:half-model failed on: {odd}" in result.stdout
    # Only what had no record was sent again: the finished cases were not.
    assert len(fake_openai.requests) - sent_before == 2 * CASES - finished


def test_the_admin_pages_need_their_permissions(
    two_servers, tmp_path, client, django_user_model, admin_client
):
    from django.contrib.auth.models import Permission

    fast, _ = two_servers
    fast.answer_with = capital
    evaluate(
        "summarize",
        "--input",
        str(write_cases(tmp_path / "cases.jsonl", count=2)),
        "--routes",
        "fast",
        "--output",
        str(tmp_path / "out.jsonl"),
    )
    run = EvaluationRun.objects.get()
    page = admin_client.get(f"/admin/llmapp/evaluationrun/{run.pk}/change/")
    assert page.status_code == 200 and b"<svg" in page.content and b"fast" in page.content
    assert admin_client.get("/admin/llmapp/evaluationrun/999/change/").status_code in (302, 404)

    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(f"/admin/llmapp/evaluationrun/{run.pk}/change/").status_code == 403
    assert client.get("/admin/llmapp/usecase/summarize/compare/").status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_evaluationrun"))
    assert client.get(f"/admin/llmapp/evaluationrun/{run.pk}/change/").status_code == 200
    staff.user_permissions.add(
        Permission.objects.get(codename="test_usecase"), Permission.objects.get(codename="view_usecase")
    )
    fast.answer_with = None
    fast.reply("Compared.")
    page = client.post("/admin/llmapp/usecase/summarize/compare/", {"routes": "fast", "message": "Hi"})
    assert page.status_code == 200 and b"Compared." in page.content
    page = client.post("/admin/llmapp/usecase/summarize/compare/", {"routes": "fast,nope", "message": "Hi"})
    assert b"unknown provider" in page.content


def test_a_resume_runs_again_what_an_edit_of_its_case_or_prompt_made_stale(two_servers, tmp_path, settings):
    fast, _ = two_servers
    fast.answer_with = capital
    cases = write_cases(tmp_path / "cases.jsonl", count=2)
    output = tmp_path / "out.jsonl"
    args = ("summarize", "--input", str(cases), "--routes", "fast", "--output", str(output), "--json")
    first, _ = evaluate(*args)
    assert json.loads(first)["routes"][0]["accuracy"] == 1.0

    # c1 now expects another answer: it is run and judged again; c0 is not.
    cases.write_text(
        json.dumps({"id": "c0", "message": "Capital of country 0?", "expected": "City 0"})
        + "\n"
        + json.dumps({"id": "c1", "message": "Capital of country 1?", "expected": "City 9"})
        + "\n"
    )
    again, _ = evaluate(*args)
    assert json.loads(again)["routes"][0]["failing"] == ["c1"]
    assert len(fast.requests) == 3

    # Another prompt: every case again.
    settings.LLM_USECASES = {"summarize": {"PROMPT": "Answer with the city only."}}
    evaluate(*args)
    assert len(fast.requests) == 5


def test_a_model_with_an_at_sign_and_a_number_expected_exactly(two_servers, tmp_path):
    fast, _ = two_servers
    fast.answer_with = lambda text: "42"
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"id": "n", "message": "Six times seven?", "expected": 42}) + "\n")
    out, _ = evaluate(
        "summarize",
        "--input",
        str(cases),
        "--routes",
        "fast:@cf/meta/llama-3",
        "--output",
        str(tmp_path / "o.jsonl"),
        "--json",
    )
    [figures] = json.loads(out)["routes"]
    assert (figures["route"], figures["passed"]) == ("fast:@cf/meta/llama-3", 1)
    assert fast.requests[0].body["model"] == "@cf/meta/llama-3"


def test_a_judge_that_cannot_run_stops_before_any_call(two_servers, tmp_path, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "keyless": {"BACKEND": "llmapp.providers.openai.OpenAIProvider", "OPTIONS": {"api_key": ""}},
    }
    settings.LLM_USECASES = {"grader": {"PROVIDER": "keyless"}}
    cases = write_cases(tmp_path / "cases.jsonl", count=3)
    with pytest.raises(CommandError, match="no API key"):
        evaluate(
            "summarize",
            "--input",
            str(cases),
            "--routes",
            "fast",
            "--output",
            str(tmp_path / "o.jsonl"),
            "--judge",
            "grader",
        )
    assert two_servers[0].requests == []


def test_the_report_file_is_checked_before_any_call(two_servers, tmp_path):
    cases = write_cases(tmp_path / "cases.jsonl", count=1)
    output = tmp_path / "out.jsonl"
    for report, says in (
        (output, "is the input or the output"),
        (cases, "is the input or the output"),
        (tmp_path / "missing" / "r.json", "its folder does not exist"),
    ):
        with pytest.raises(CommandError, match=says):
            evaluate(
                "summarize",
                "--input",
                str(cases),
                "--routes",
                "fast",
                "--output",
                str(output),
                "--report",
                str(report),
            )
    assert two_servers[0].requests == []


def test_every_disagreement_is_counted_and_the_run_keeps_the_first_ones():
    from llmapp.batch import Item
    from llmapp.batch.evaluation.cases import Case
    from llmapp.batch.evaluation.report import MAX_DISAGREEMENTS, summarize
    from llmapp.calls.compare import Route

    cases = [Case(Item(f"c{n}", "q"), "a", "exact") for n in range(MAX_DISAGREEMENTS + 5)]
    records = [
        {
            "id": f"{case.id}@{route}",
            "passed": route == "a",
            "latency_ms": 1.0,
            "text": "x",
            "usage": {},
            "cost": None,
        }
        for case in cases
        for route in ("a", "b")
    ]
    summary, disagreeing = summarize(cases, [Route("a"), Route("b")], records)
    assert len(disagreeing) == MAX_DISAGREEMENTS + 5
    assert [route["accuracy"] for route in summary] == [1.0, 0.0]
    assert summary[1]["cost"] is None  # no answer had a price
