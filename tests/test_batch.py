"""`manage.py llm <usecase> --input FILE --output FILE`: order, concurrency, failures, resume."""

import io
import json
import os
import pty
import signal
import subprocess
import sys
import time

import pytest
from django.core.management import CommandError, call_command

from llmapp.exceptions import ProviderError
from llmapp.providers import locmem
from tests.conftest import ROOT

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
        [*args, "--concurrency", "2"], stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
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
