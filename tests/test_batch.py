"""`manage.py llm <usecase> --input FILE --output FILE`: order, concurrency, failures, resume."""

import io
import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time

import pytest
from django.core.management import CommandError, call_command

from llmapp.exceptions import ProviderError
from llmapp.providers import locmem
from tests.conftest import ROOT
from tests.environment import interruptible

# Worker threads write usage events through connections of their own, outside a test
# transaction: only a transactional test cleans them up.
pytestmark = pytest.mark.django_db(transaction=True)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_batch(*args, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    options = {"stdout": out, "stderr": err}
    if stdin is not None:
        options["stdin"] = stdin
    call_command("llm", *args, **options)
    return out.getvalue(), err.getvalue()


def test_results_come_out_in_input_order_whatever_finishes_first(tmp_path, openai_provider, settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai"}}
    # The server answers the first items last: with 4 at once, they finish out of order.
    for delay in (0.4, 0.3, 0.2, 0.1, 0, 0, 0, 0):
        openai_provider.reply("answer", delay=delay)
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(f"ticket {n}") for n in range(1, 9)])
    output = tmp_path / "out.jsonl"
    run_batch("summarize", "--input", str(source), "--output", str(output), "--concurrency", "4", "--quiet")
    records = read_records(output)
    assert [record["id"] for record in records] == [str(n) for n in range(1, 9)]
    assert all(record["text"] == "answer" for record in records)
    assert set(records[0]) == {"id", "text", "provider", "model", "usage", "latency_ms"}
    assert records[0]["provider"] == "openai" and records[0]["usage"]["output_tokens"] == 1
    assert len(openai_provider.requests) == 8


def test_objects_with_ids_and_overrides(tmp_path):
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps({"id": "a-1", "message": "first", "provider": "test", "max_output_tokens": 9}),
            json.dumps({"id": "a-2", "message": "second", "provider": "test", "model": "m2"}),
        ],
    )
    output = tmp_path / "out.jsonl"
    run_batch("example", "--input", str(source), "--output", str(output))
    assert [record["id"] for record in read_records(output)] == ["a-1", "a-2"]
    assert [(r.message, r.max_output_tokens, r.model) for r in locmem.outbox] == [
        ("first", 9, "locmem"),
        ("second", 300, "m2"),
    ]


def test_a_failed_item_is_written_with_its_error_and_the_exit_status_says_so(tmp_path):
    locmem.queue("ok one", ProviderError("refused", provider="test", status_code=400), "ok three")
    source = write_lines(
        tmp_path / "in.jsonl",
        ['{"message": "1", "provider": "test"}'] * 3
        + ["{broken", '{"text": "no message"}', '{"message": "x", "tone": 1}'],
    )
    output = tmp_path / "out.jsonl"
    with pytest.raises(CommandError, match="2 done, 4 failed; the failed items are in"):
        run_batch("summarize", "--input", str(source), "--output", str(output))
    records = read_records(output)
    assert [record.get("text") for record in records[:3]] == ["ok one", None, "ok three"]
    assert records[1]["error"]["type"] == "ProviderError"
    assert records[3]["error"]["type"] == "InvalidInput"
    assert records[3]["error"]["message"].startswith("line 4 is not JSON: Expecting property name")
    assert 'must be a JSON string or an object with a "message"' in records[4]["error"]["message"]
    assert "unknown key(s) tone" in records[5]["error"]["message"]


def test_rerunning_skips_what_is_done_and_retries_what_failed(tmp_path):
    source = write_lines(
        tmp_path / "in.jsonl",
        [json.dumps({"id": n, "message": f"m{n}", "provider": "test"}) for n in range(5)],
    )
    output = tmp_path / "out.jsonl"
    locmem.queue("a", "b", ProviderError("down", provider="test", status_code=400), "d", "e")
    with pytest.raises(CommandError):
        run_batch("summarize", "--input", str(source), "--output", str(output))
    locmem.reset()
    _, err = run_batch("summarize", "--input", str(source), "--output", str(output))
    assert [request.message for request in locmem.outbox] == ["m2"]
    assert "1 done, 0 failed, 4 skipped" in err
    records = read_records(output)
    assert sorted(record["id"] for record in records) == ["0", "1", "2", "3", "4"]
    assert all("error" not in record for record in records)


def test_input_from_stdin_and_output_to_stdout():
    out, _ = run_batch(
        "summarize",
        "--input",
        "-",
        "--output",
        "-",
        "--provider",
        "test",
        stdin=io.StringIO('"one"\n\n"two"\n'),
    )
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["1", "3"]


def test_bad_batch_arguments(tmp_path):
    with pytest.raises(CommandError, match="--input needs --output FILE"):
        run_batch("summarize", "--input", "-", stdin=io.StringIO('"x"'))
    with pytest.raises(CommandError, match=r"cannot read --input /nonexistent\.jsonl: No such file"):
        run_batch("summarize", "--input", "/nonexistent.jsonl", "--output", str(tmp_path / "o"))
    with pytest.raises(CommandError, match="--concurrency must be at least 1"):
        run_batch("summarize", "--input", "-", "--output", "-", "--concurrency", "0")
    with pytest.raises(CommandError, match="--output and --enqueue go with --input FILE"):
        run_batch("summarize", "-m", "x", "--output", "o")
    with pytest.raises(CommandError, match="unknown use case 'nope'"):
        run_batch("nope", "--input", "-", "--output", "-", stdin=io.StringIO('"x"'))


def test_progress_bar_on_a_terminal_and_quiet(manage, tmp_path):
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(f"m{n}") for n in range(20)])
    env = manage.env()
    for quiet in (False, True):
        output = tmp_path / f"out-{quiet}.jsonl"
        primary, replica = pty.openpty()
        args = [
            sys.executable,
            str(ROOT / "manage.py"),
            "llm",
            "summarize",
            "--input",
            str(source),
            "--output",
            str(output),
        ]
        process = subprocess.Popen(
            [*args, *(["--quiet"] if quiet else [])],
            stderr=replica,
            stdout=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        os.close(replica)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        process.wait(timeout=30)
        os.close(primary)
        assert process.returncode == 0
        assert len(read_records(output)) == 20
        if quiet:
            assert seen == b""
        else:
            assert b"20/20" in seen and b"item" in seen


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(manage, tmp_path, fake_openai):
    for _ in range(40):
        fake_openai.reply("slow answer", delay=0.2)
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(f"m{n}") for n in range(40)])
    output = tmp_path / "out.jsonl"
    env = manage.env({"LLM_SUMMARIZE_PROVIDER": "openai", "OPENAI_BASE_URL": fake_openai.base_url})
    args = [
        sys.executable,
        str(ROOT / "manage.py"),
        "llm",
        "summarize",
        "--input",
        str(source),
        "--output",
        str(output),
    ]
    process = subprocess.Popen(
        [*args, "--concurrency", "2"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 20
    while (not output.exists() or len(output.read_text().splitlines()) < 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130
    assert "Interrupted: what finished is in" in err and "Traceback" not in err
    finished = read_records(output)
    assert 4 <= len(finished) < 40
    assert all("text" in record for record in finished)

    result = subprocess.run(
        [*args, "--concurrency", "8"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    records = read_records(output)
    assert sorted(int(record["id"]) for record in records) == list(range(1, 41))
    # Interrupted calls may have reached the server without being written; nothing is lost.
    assert len(fake_openai.requests) >= 40


def test_an_unexpected_error_in_one_item_is_recorded_and_the_batch_goes_on(tmp_path):
    locmem.queue("first", RuntimeError("a bug in a plugin"), "third")
    source = write_lines(tmp_path / "in.jsonl", ['{"message": "m", "provider": "test"}'] * 3)
    output = tmp_path / "out.jsonl"
    with pytest.raises(CommandError, match="2 done, 1 failed"):
        run_batch("summarize", "--input", str(source), "--output", str(output))
    records = read_records(output)
    assert [record.get("text") for record in records] == ["first", None, "third"]
    assert records[1]["error"] == {"type": "RuntimeError", "message": "a bug in a plugin"}


@pytest.mark.parametrize(
    ("lines", "refusal"),
    [
        (
            [{"id": "a", "message": "x"}, {"id": "b", "message": "y"}, {"id": "a", "message": "z"}],
            "lines 1 and 3 have the same id 'a'",
        ),
        # An item without an id has its line number for one.
        (["x", {"id": 1, "message": "y"}], "lines 1 and 2 have the same id '1'"),
    ],
)
def test_duplicate_ids_are_refused_before_any_call(tmp_path, settings, lines, refusal):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(line) for line in lines])
    output = tmp_path / "out.jsonl"
    with pytest.raises(CommandError, match=rf"^--input {source}: {refusal}; give each its own\.$"):
        run_batch("summarize", "--input", str(source), "--output", str(output))
    assert locmem.outbox == []
    assert not output.exists()


def test_a_duplicate_id_on_a_pipe_stops_the_batch_where_it_is(manage, tmp_path):
    output = tmp_path / "out.jsonl"
    lines = ["one", "two", {"id": "2", "message": "again"}, "four"]
    result = manage(
        "llm",
        "summarize",
        "--input",
        "-",
        "--output",
        str(output),
        input="".join(json.dumps(line) + "\n" for line in lines),
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "CommandError: --input standard input: lines 2 and 3 have the same id '2'; give each its own. "
        f"The batch stopped there; the results of the lines before it are in {output}."
    ]
    assert [record["id"] for record in read_records(output)] == ["1", "2"]


def test_a_resumed_output_is_in_input_order_and_keeps_its_permissions(tmp_path):
    source = write_lines(
        tmp_path / "in.jsonl",
        [json.dumps({"id": n, "message": f"m{n}", "provider": "test"}) for n in range(5)],
    )
    output = tmp_path / "out.jsonl"
    locmem.queue("a", "b", ProviderError("down", provider="test", status_code=400), "d", "e")
    with pytest.raises(CommandError):
        run_batch("summarize", "--input", str(source), "--output", str(output))
    output.chmod(0o640)
    run_batch("summarize", "--input", str(source), "--output", str(output))
    assert [record["id"] for record in read_records(output)] == ["0", "1", "2", "3", "4"]
    assert stat.S_IMODE(output.stat().st_mode) == 0o640


def test_a_resume_puts_whatever_an_earlier_run_left_in_order_with_one_record_per_id(tmp_path, settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(f"m{n}") for n in range(1, 6)])
    output = tmp_path / "out.jsonl"
    # What runs stopped by crashes can leave: records out of order, an item that failed
    # and then succeeded, a line cut short, and a record of an id the input no longer has.
    previous = [
        {"id": "4", "text": "four"},
        {"id": "2", "error": {"type": "ProviderError", "message": "down"}},
        {"id": "gone", "text": "kept"},
        {"id": "1", "text": "one"},
        {"id": "2", "text": "two"},
    ]
    output.write_text("".join(json.dumps(record) + "\n" for record in previous) + '{"id": "3", "te')
    locmem.queue("three", "five")
    run_batch("summarize", "--input", str(source), "--output", str(output))
    assert [request.message for request in locmem.outbox] == ["m3", "m5"]
    assert [(record["id"], record["text"]) for record in read_records(output)] == [
        ("1", "one"),
        ("2", "two"),
        ("3", "three"),
        ("4", "four"),
        ("5", "five"),
        ("gone", "kept"),
    ]


def test_a_byte_order_mark_before_the_first_line_is_ignored(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'\xef\xbb\xbf"first"\n"second"\n')
    output = tmp_path / "out.jsonl"
    run_batch("summarize", "--input", str(source), "--output", str(output))
    assert [("error" in record) for record in read_records(output)] == [False, False]


def read_until(pipe, text, timeout=30):
    """Read a binary pipe until ``text`` comes; return all that was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{text!r} never came; got {seen!r}"
        if select.select([pipe], [], [], left)[0]:
            chunk = os.read(pipe.fileno(), 4096)
            assert chunk, f"the process ended before {text!r}; got {seen!r}"
            seen += chunk
    return seen


def test_a_second_ctrl_c_stops_waiting_for_hung_calls_at_once(manage, tmp_path, fake_openai):
    fake_openai.reply("fast answer")
    fake_openai.hang(600)
    source = write_lines(tmp_path / "in.jsonl", ['"one"', '"two"'])
    output = tmp_path / "out.jsonl"
    env = manage.env(
        {"LLM_SUMMARIZE_PROVIDER": "openai", "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_TIMEOUT": "600"}
    )
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "llm",
            "summarize",
            "--input",
            str(source),
            "--output",
            str(output),
        ],
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        preexec_fn=interruptible,
    )
    try:
        # One call at a time (the default): item 2 is sent once item 1 has its answer, which is then written.
        deadline = time.monotonic() + 30
        while (not output.exists() or not output.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        seen = read_until(process.stderr, b"press Ctrl-C again to stop now.")
        assert b"Stopping: waiting for 1 call(s) under way" in seen
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        process.kill()
    err = (seen + process.stderr.read()).decode()
    assert "Interrupted: stopped waiting for 1 call(s); what finished is in" in err
    assert "Traceback" not in err
    assert [record["text"] for record in read_records(output)] == ["fast answer"]


def test_a_setting_to_fix_stops_the_batch_at_once_rather_than_fail_every_item(tmp_path):
    from llmapp.exceptions import ConfigurationError

    # The third call finds the setting missing, as every call after it would.
    no_key = ConfigurationError("provider 'test' has no API key: set TEST_API_KEY.")
    locmem.queue("ok one", "ok two", no_key, "never", "never")
    lines = [json.dumps({"id": n, "message": f"m{n}", "provider": "test"}) for n in range(5)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    with pytest.raises(CommandError) as raised:
        run_batch("summarize", "--input", str(source), "--output", str(output))
    message = str(raised.value)
    assert message.startswith("provider 'test' has no API key: set TEST_API_KEY. The batch stopped at once")
    assert "\n" not in message and "run the same command to resume" in message
    assert [record["text"] for record in read_records(output)] == ["ok one", "ok two"]
    assert len(locmem.outbox) == 3  # nothing was sent after it

    locmem.reset()
    _, err = run_batch("summarize", "--input", str(source), "--output", str(output))
    assert [request.message for request in locmem.outbox] == ["m2", "m3", "m4"]
    assert "3 done, 0 failed, 2 skipped" in err


def test_an_item_may_carry_a_conversation(settings):
    from llmapp import batch

    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}
    lines = [
        json.dumps(
            {
                "id": "c-1",
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "the last turn"},
                ],
            }
        ),
        json.dumps({"id": "c-2", "messages": [{"role": "assistant", "content": "b"}]}),
    ]
    records = []
    batch.run_batch("summarize", batch.read_items(lines), records.append)
    assert records[0]["text"] == "locmem answer to: the last turn"
    assert (
        records[1]["error"]["type"] == "InvalidMessageError"
        and "end with a user turn" in records[1]["error"]["message"]
    )
    assert [request.history for request in locmem.outbox] == [(("user", "a"), ("assistant", "b"))]


def test_an_item_with_both_a_message_and_messages_is_its_own_error():
    from llmapp import batch

    [item] = batch.read_items([json.dumps({"message": "", "messages": [{"role": "user", "content": "hi"}]})])
    assert item.problem == 'line 1 has both "message" and "messages": keep one'
