"""What a batch may write to: `manage.py llm --input --output` and `llm_batch collect --output`.

A batch loses nothing and destroys nothing: not its input, not another run's results, not
a device, and not what it wrote before a failure.
"""

import io
import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from llmapp import batch
from llmapp.models import Batch, BatchItem
from llmapp.providers import locmem
from tests.conftest import ROOT
from tests.test_batch import read_records, run_batch, write_lines

pytestmark = pytest.mark.django_db(transaction=True)

EARLIER = json.dumps({"id": "1", "text": "from an earlier run"})


def manage_args(*args):
    return [sys.executable, str(ROOT / "manage.py"), *args]


def leftovers(folder, name):
    """Files beside ``name`` that carry its name: what a failed rewrite would leave behind."""
    return sorted(path.name for path in folder.iterdir() if name in path.name and path.name != name)


@pytest.mark.parametrize("how", ["the same path", "a symlink", "a hard link", "standard input"])
def test_an_output_that_is_the_input_is_refused_and_both_are_left_alone(tmp_path, settings, how):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}
    source = write_lines(
        tmp_path / "in.jsonl",
        [json.dumps({"id": f"t-{n}", "message": f"m{n}"}) for n in range(3)] + ['"no id"'],
    )
    before = source.read_bytes()
    output = {"a symlink": tmp_path / "link.jsonl", "a hard link": tmp_path / "hard.jsonl"}.get(how, source)
    if how == "a symlink":
        output.symlink_to(source)
    elif how == "a hard link":
        os.link(source, output)
    message = (
        rf"--output {re.escape(str(output))} is the input file itself; write the results to another file"
    )
    with pytest.raises(CommandError, match=message):
        if how == "standard input":
            with open(source) as stdin:
                run_batch("summarize", "--input", "-", "--output", str(output), stdin=stdin)
        else:
            run_batch("summarize", "--input", str(source), "--output", str(output))
    assert source.read_bytes() == before
    assert locmem.outbox == []


def start_a_run(manage, output):
    """Start a run that resumes ``output``; return it once it has written to it and waits for more input."""
    write_lines(output, [EARLIER])
    run = subprocess.Popen(
        manage_args("llm", "summarize", "--input", "-", "--output", str(output), "--concurrency", "1"),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=manage.env(),
        cwd=ROOT,
    )
    # Item 1 is done already. With one call at a time, taking item 3 waits for item 2,
    # which is then written; the run then waits, holding its output, for line 4.
    run.stdin.write('"one"\n"two"\n"three"\n')
    run.stdin.flush()
    deadline = time.monotonic() + 30
    while len(output.read_text().splitlines()) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, run.stderr.read()
    return run


def finish_the_run(run, output):
    run.stdin.write('"four"\n')
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    records = read_records(output)
    assert [record["id"] for record in records] == ["1", "2", "3", "4"]
    assert records[0]["text"] == "from an earlier run"
    assert leftovers(output.parent, output.name) == []


def test_a_second_run_on_the_same_output_refuses_at_once_and_the_first_loses_nothing(manage, tmp_path):
    output = tmp_path / "out.jsonl"
    first = start_a_run(manage, output)
    other = write_lines(tmp_path / "other.jsonl", ['"not this"', '"nor this"'])
    second = manage("llm", "summarize", "--input", str(other), "--output", str(output))
    finish_the_run(first, output)
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"CommandError: --output {output} is in use by another run; wait for it to finish, "
        "or write to another file."
    ]
    assert "not this" not in output.read_text()


def test_a_symlinked_output_is_written_through_and_stays_a_link(tmp_path):
    target = tmp_path / "results" / "out.jsonl"
    target.parent.mkdir()
    write_lines(target, [EARLIER])
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    source = write_lines(tmp_path / "in.jsonl", ['"one"', '"two"'])
    run_batch("summarize", "--input", str(source), "--output", str(link))
    assert link.is_symlink()
    assert [record["id"] for record in read_records(target)] == ["1", "2"]
    assert read_records(target)[0]["text"] == "from an earlier run"


@pytest.mark.parametrize("kind", ["a directory", "a pipe", "a device"])
def test_an_output_that_is_not_a_regular_file_is_refused_at_once(manage, tmp_path, kind):
    source = write_lines(tmp_path / "in.jsonl", ['"one"'])
    if kind == "a directory":
        output = tmp_path / "out"
        output.mkdir()
    elif kind == "a pipe":
        output = tmp_path / "out.fifo"
        os.mkfifo(output)
    else:
        output = Path("/dev/full")
    result = manage("llm", "summarize", "--input", str(source), "--output", str(output), timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"CommandError: --output {output} is not a regular file; name a file, or '-' for standard output."
    ]
    mode = output.stat().st_mode
    assert stat.S_ISDIR(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)
    if kind == "a directory":
        assert list(output.iterdir()) == []


def test_an_input_that_is_not_utf8_is_refused_naming_its_line(tmp_path, settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}
    source = tmp_path / "in.jsonl"
    source.write_bytes('"fine"\n"café"\n'.encode("latin-1"))
    output = tmp_path / "out.jsonl"
    with pytest.raises(
        CommandError,
        match=rf"^--input {re.escape(str(source))}: line 2 is not UTF-8 text \(byte 0xe9 at offset 4\); "
        r"convert it first, e.g\. with iconv -f LATIN1 -t UTF-8\.$",
    ):
        run_batch("summarize", "--input", str(source), "--output", str(output))
    assert locmem.outbox == []
    assert not output.exists()


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="root writes anywhere")
def test_an_unwritable_output_is_refused_and_left_as_it_was(manage, tmp_path):
    output = write_lines(tmp_path / "out.jsonl", [EARLIER])
    output.chmod(0o444)
    source = write_lines(tmp_path / "in.jsonl", ['"one"', '"two"'])
    # Root may write to any file: take that power away, as a user never had it.
    as_user = ["setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override", "--"]
    args = manage_args("llm", "summarize", "--input", str(source), "--output", str(output))
    result = subprocess.run(
        [*(as_user if os.geteuid() == 0 else []), *args],
        capture_output=True,
        text=True,
        env=manage.env(),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"CommandError: cannot write --output {output}: Permission denied."]
    assert output.read_text() == EARLIER + "\n"
    assert stat.S_IMODE(output.stat().st_mode) == 0o444
    assert leftovers(tmp_path, "out.jsonl") == []


def test_a_full_disk_stops_the_batch_keeping_every_whole_record(manage, tmp_path):
    limit = 64 * 1024
    source = write_lines(
        tmp_path / "in.jsonl", [json.dumps(f"Ticket {n}. " + "It broke. " * 120) for n in range(80)]
    )
    output = tmp_path / "out.jsonl"
    args = manage_args("llm", "summarize", "--input", str(source), "--output", str(output))
    env = manage.env({"LLM_EVENTSTREAM": "null", "LLM_TSDB": "null"})

    def small_disk():
        # Writing past the limit fails with EFBIG, as a full disk fails with ENOSPC.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, preexec_fn=small_disk
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    written = re.fullmatch(
        rf"CommandError: cannot write --output {re.escape(str(output))}: File too large\. It holds every "
        r"record written before \((\d+) by this run\); make room, then run the same command to resume\.",
        line,
    )
    assert written, line
    records = read_records(output)  # every line is a whole record
    assert 0 < len(records) == int(written[1]) < 80
    assert leftovers(tmp_path, "out.jsonl") == []

    rerun = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert [record["id"] for record in read_records(output)] == [str(n) for n in range(1, 81)]


def finished_batch():
    owner = Batch.objects.create(usecase="summarize", total=2)
    for position in range(2):
        record = {"id": str(position + 1), "text": f"answer {position + 1}"}
        BatchItem.objects.create(
            batch=owner,
            position=position,
            item_id=record["id"],
            status=BatchItem.Status.DONE,
            result=batch.dumps(record),
        )
    return owner


def collect(owner, output):
    call_command("llm_batch", "collect", str(owner.pk), "--output", str(output), stderr=io.StringIO())


@pytest.mark.parametrize("output", ["a directory", "/dev/full"])
def test_collect_refuses_an_output_that_is_not_a_regular_file(tmp_path, output):
    if output == "a directory":
        output = tmp_path / "out"
        output.mkdir()
    with pytest.raises(CommandError, match=f"^--output {re.escape(str(output))} is not a regular file"):
        collect(finished_batch(), output)


def test_collect_refuses_an_output_a_run_is_writing(manage, tmp_path):
    output = tmp_path / "out.jsonl"
    run = start_a_run(manage, output)
    with pytest.raises(CommandError, match=f"^--output {re.escape(str(output))} is in use by another run"):
        collect(finished_batch(), output)
    finish_the_run(run, output)


def test_collect_replaces_an_earlier_output_whole(tmp_path):
    output = write_lines(tmp_path / "out.jsonl", [EARLIER] * 3)
    collect(finished_batch(), output)
    assert [record["text"] for record in read_records(output)] == ["answer 1", "answer 2"]
    assert leftovers(tmp_path, "out.jsonl") == []


def test_a_full_disk_stops_the_calls_under_way_too(manage, tmp_path, fake_openai):
    """The output cannot be written: no call under way is waited for (each would be paid and lost)."""
    # The first 4 requests, sent at once, are answered whatever order they arrive in: the first
    # item's is written, whichever it was. 3 kB each: the second record does not fit. Answered
    # after a moment, so that no worker is free to send a fifth item's request (which would
    # take an answer) before the first item's has arrived.
    for _ in range(4):
        fake_openai.reply("A long answer. " * 200, delay=0.5)
    for _ in range(20):
        fake_openai.hang(600)  # longer than the test's bound: waiting for them would time out
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(f"Ticket {n}. " + "x" * 2000) for n in range(40)])
    output = tmp_path / "out.jsonl"
    args = manage_args(
        "llm", "summarize", "--input", str(source), "--output", str(output), "--concurrency", "4"
    )
    env = manage.env(
        {
            "LLM_SUMMARIZE_PROVIDER": "openai",
            "OPENAI_BASE_URL": fake_openai.base_url,
            "OPENAI_API_KEY": "sk-x",
        }
    )

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = subprocess.run(
        args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, preexec_fn=small_disk
    )
    assert result.returncode == 1
    assert "CommandError: cannot write --output" in result.stderr
    assert len(fake_openai.requests) < 40  # the items not started were never sent
