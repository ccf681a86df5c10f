"""`manage.py llm --input FILE --enqueue` and `manage.py llm_batch`: the tasks side of batch runs."""

import io
import json
import re

import pytest
from django.core.management import CommandError, call_command

from llmapp import batch
from llmapp.batch import tasks
from llmapp.models import Batch, BatchItem, CompletionEvent
from llmapp.providers import locmem

try:  # Django 6
    from django.tasks import task_backends

    TASKS_PACKAGE = "django.tasks"
except ImportError:
    from django_tasks import task_backends

    TASKS_PACKAGE = "django_tasks"

IMMEDIATE = f"{TASKS_PACKAGE}.backends.immediate.ImmediateBackend"
DUMMY = f"{TASKS_PACKAGE}.backends.dummy.DummyBackend"

# Tasks are enqueued when the batch commits: these tests commit, as the command does.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def immediate(settings):
    """Run each task in-process as it is enqueued; summarize goes to locmem."""
    settings.TASKS = {"default": {"BACKEND": IMMEDIATE}}
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}


@pytest.fixture
def dummy(settings):
    """Keep enqueued tasks without running them; return the list of their results."""
    settings.TASKS = {"default": {"BACKEND": DUMMY}}
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}
    return task_backends["default"].results


def command(*args, **options):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def enqueue(path):
    out, _ = command("llm", "summarize", "--input", str(path), "--enqueue")
    return int(re.match(r"Enqueued batch (\d+): ", out).group(1))


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_latency(records):
    return [{key: value for key, value in record.items() if key != "latency_ms"} for record in records]


def test_enqueued_batch_collects_to_what_a_local_run_writes(tmp_path, immediate):
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps("first ticket"),
            json.dumps({"id": "t-2", "message": "second ticket", "max_output_tokens": 9}),
            "{broken",
            json.dumps("fourth ticket"),
            json.dumps(
                {
                    "id": "c-5",
                    "messages": [
                        {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "b"},
                        {"role": "user", "content": "fifth"},
                    ],
                }
            ),
        ],
    )
    local = tmp_path / "local.jsonl"
    with pytest.raises(CommandError, match="1 failed"):
        command("llm", "summarize", "--input", str(source), "--output", str(local), "--quiet")
    del locmem.outbox[:]

    out, _ = command("llm", "summarize", "--input", str(source), "--enqueue")
    created = Batch.objects.get()
    assert out.startswith(f"Enqueued batch {created.pk}: 5 item(s).")
    assert (created.usecase, created.total) == ("summarize", 5)
    assert [request.message for request in locmem.outbox] == [
        "first ticket",
        "second ticket",
        "fourth ticket",
        "fifth",
    ]
    assert locmem.outbox[3].history == (("user", "a"), ("assistant", "b"))
    assert locmem.outbox[1].max_output_tokens == 9

    out, _ = command("llm_batch", "status", str(created.pk))
    assert re.search(r"^  done +4$", out, re.M) and re.search(r"^  failed +1$", out, re.M)
    assert re.search(r"^  pending +0$", out, re.M)
    assert "100.0% finished (5 of 5)" in out

    collected = tmp_path / "collected.jsonl"
    with pytest.raises(CommandError, match=r"^1 of 5 item\(s\) failed; their errors are in "):
        command("llm_batch", "collect", str(created.pk), "--output", str(collected))
    assert without_latency(read_records(collected)) == without_latency(read_records(local))
    assert [list(record) for record in read_records(collected)] == [
        list(record) for record in read_records(local)
    ]
    assert [record["id"] for record in read_records(collected)] == ["1", "t-2", "3", "4", "c-5"]
    assert read_records(collected)[-1]["text"] == "locmem answer to: fifth"
    assert read_records(collected)[2]["error"]["type"] == "InvalidInput"


def test_collect_of_a_clean_batch_succeeds_and_can_write_to_stdout(tmp_path, immediate):
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(f"ticket {n}") for n in range(1, 6)])
    batch_id = enqueue(source)

    output = tmp_path / "out.jsonl"
    _, err = command("llm_batch", "collect", str(batch_id), "--output", str(output))
    assert err == f"Wrote 5 record(s) to {output}.\n"
    records = read_records(output)
    assert [record["text"] for record in records] == [f"locmem answer to: ticket {n}" for n in range(1, 6)]
    assert set(records[0]) == {"id", "text", "provider", "model", "usage", "latency_ms"}

    out, _ = command("llm_batch", "collect", str(batch_id), "--output", "-")
    assert [json.loads(line) for line in out.splitlines()] == records
    assert BatchItem.objects.filter(status="done", attempts=1, finished_at__isnull=False).count() == 5


def test_one_task_per_readable_item_in_input_order(tmp_path, dummy):
    source = write_lines(tmp_path / "in.jsonl", ['"a"', "[1]", '"c"', '"d"'])
    batch_id = enqueue(source)
    items = BatchItem.objects.filter(batch_id=batch_id)
    assert [result.args for result in dummy] == [
        [pk] for pk in items.exclude(position=1).values_list("pk", flat=True)
    ]
    assert dummy[0].task.queue_name == "default"
    assert list(items.values_list("status", flat=True)) == ["pending", "failed", "pending", "pending"]
    assert locmem.outbox == []


def test_a_task_delivered_twice_runs_its_item_once(tmp_path, dummy):
    batch_id = enqueue(write_lines(tmp_path / "in.jsonl", ['"only once"']))
    item = BatchItem.objects.get(batch_id=batch_id)
    events = CompletionEvent.objects.count()

    assert tasks.run_batch_item.call(item.pk) == "done"
    assert tasks.run_batch_item.call(item.pk) is None

    assert [request.message for request in locmem.outbox] == ["only once"]
    assert CompletionEvent.objects.count() == events + 1
    item.refresh_from_db()
    assert (item.status, item.attempts, json.loads(item.result)["text"]) == (
        "done",
        2,
        "locmem answer to: only once",
    )


def test_pending_items_make_collect_fail_and_resume_enqueues_them_again(tmp_path, dummy):
    batch_id = enqueue(write_lines(tmp_path / "in.jsonl", ['"one"', '"two"', '"three"']))
    first = BatchItem.objects.get(batch_id=batch_id, position=0)
    tasks.run_batch_item.call(first.pk)

    out, _ = command("llm_batch", "status", str(batch_id))
    assert re.search(r"^  pending +2$", out, re.M) and "33.3% finished (1 of 3)" in out
    output = tmp_path / "out.jsonl"
    with pytest.raises(
        CommandError, match=r"^2 of 3 item\(s\) still pending or running; wrote the 1 finished"
    ):
        command("llm_batch", "collect", str(batch_id), "--output", str(output))
    assert [record["id"] for record in read_records(output)] == ["1"]

    dummy.clear()
    out, _ = command("llm_batch", "resume", str(batch_id))
    assert out == f"Enqueued 2 pending item(s) of batch {batch_id} again.\n"
    for result in dummy:
        tasks.run_batch_item.call(*result.args)
    command("llm_batch", "collect", str(batch_id), "--output", str(output))
    assert [record["id"] for record in read_records(output)] == ["1", "2", "3"]


def test_an_unexpected_error_fails_the_item_and_reaches_the_backend(tmp_path, dummy, monkeypatch):
    batch_id = enqueue(write_lines(tmp_path / "in.jsonl", ['"boom"']))
    item = BatchItem.objects.get(batch_id=batch_id)

    def broken(usecase, item):
        raise RuntimeError("database went away")

    monkeypatch.setattr(batch, "run_item", broken)
    with pytest.raises(RuntimeError):
        tasks.run_batch_item.call(item.pk)
    item.refresh_from_db()
    assert item.status == "failed"
    assert json.loads(item.result) == {
        "id": "1",
        "error": {"type": "RuntimeError", "message": "database went away"},
    }


def test_unknown_batch(immediate):
    with pytest.raises(CommandError, match=r"^no batch 999; there are none yet\.$"):
        command("llm_batch", "status", "999")
    created = Batch.objects.create(usecase="summarize")
    with pytest.raises(CommandError, match=rf"^no batch 999; the latest is {created.pk}\.$"):
        command("llm_batch", "collect", "999", "--output", "-")


def test_a_queue_the_backend_lacks_is_one_line_naming_the_setting(tmp_path, immediate, settings):
    settings.LLM_BATCH_QUEUE = "llm-batches"
    with pytest.raises(
        CommandError, match=r"^LLM_BATCH_QUEUE is 'llm-batches', which the TASKS backend refuses"
    ):
        enqueue(write_lines(tmp_path / "in.jsonl", ['"x"']))
    assert not Batch.objects.exists()


def test_the_cli_enqueues_with_the_default_backend_and_collects(manage, tmp_path):
    """As a user runs it: no TASKS setting at all, so the immediate backend runs each item."""
    source = write_lines(tmp_path / "in.jsonl", ['"alpha"', '"beta"'])
    result = manage("llm", "summarize", "--input", str(source), "--enqueue")
    assert result.returncode == 0, result.stderr
    batch_id = re.match(r"Enqueued batch (\d+): 2 item\(s\)\.", result.stdout).group(1)

    result = manage("llm_batch", "status", batch_id)
    assert result.returncode == 0, result.stderr
    assert "100.0% finished (2 of 2)" in result.stdout

    output = tmp_path / "out.jsonl"
    result = manage("llm_batch", "collect", batch_id, "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert [record["id"] for record in read_records(output)] == ["1", "2"]

    result = manage("llm_batch", "collect", "99", "--output", str(output))
    assert (result.returncode, result.stderr) == (
        1,
        f"CommandError: no batch 99; the latest is {batch_id}.\n",
    )


def test_a_tasks_backend_that_is_down_leaves_the_batch_to_resume(tmp_path, immediate, settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}
    settings.RQ_QUEUES = {"default": {"URL": "redis://127.0.0.1:1/0"}}  # nothing listens there
    with pytest.raises(CommandError) as failed:
        enqueue(write_lines(tmp_path / "in.jsonl", ['"one"', '"two"']))
    created = Batch.objects.get()
    assert re.fullmatch(
        rf"batch {created.pk} is stored, but enqueuing its tasks failed after 0 \(ConnectionError: .*\); "
        rf"once the tasks backend works again, run `manage.py llm_batch resume {created.pk}`\.",
        str(failed.value),
    )
    assert created.counts()["pending"] == 2

    settings.TASKS = {"default": {"BACKEND": IMMEDIATE}}
    out, _ = command("llm_batch", "resume", str(created.pk))
    assert out == f"Enqueued 2 pending item(s) of batch {created.pk} again.\n"
    assert created.counts()["done"] == 2


def test_resume_stale_after_runs_again_what_a_dead_worker_left_running(tmp_path, dummy):
    from datetime import timedelta

    from django.utils import timezone

    batch_id = enqueue(write_lines(tmp_path / "in.jsonl", ['"one"', '"two"']))
    # A worker claimed both items; one died two hours ago, the other is still busy.
    BatchItem.objects.filter(batch_id=batch_id, position=0).update(
        status=BatchItem.Status.RUNNING, started_at=timezone.now() - timedelta(hours=2)
    )
    BatchItem.objects.filter(batch_id=batch_id, position=1).update(
        status=BatchItem.Status.RUNNING, started_at=timezone.now()
    )
    dummy.clear()
    out, _ = command("llm_batch", "resume", str(batch_id), "--stale-after", "1h")
    assert out.splitlines() == [
        "1 item(s) running for over 1h are pending again.",
        f"Enqueued 1 pending item(s) of batch {batch_id} again.",
    ]
    [result] = dummy
    assert result.args == [BatchItem.objects.get(batch_id=batch_id, position=0).pk]

    with pytest.raises(CommandError, match="--stale-after must be a whole number followed by m"):
        command("llm_batch", "resume", str(batch_id), "--stale-after", "soon")
    with pytest.raises(CommandError, match="--stale-after goes with resume"):
        command("llm_batch", "status", str(batch_id), "--stale-after", "1h")


def test_an_argument_error_is_one_line(manage):
    result = manage("llm_batch", "bogus", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("CommandError: argument action: invalid choice: 'bogus'")
    assert result.stderr.count("\n") == 1


def test_a_setting_every_item_would_fail_on_stops_the_enqueue_with_one_line(tmp_path, dummy, settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {"BACKEND": "llmapp.providers.openai.OpenAIProvider"},  # no key anywhere
    }
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai"}}
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(f"ticket {n}") for n in range(5)])
    with pytest.raises(CommandError) as raised:
        command("llm", "summarize", "--input", str(source), "--enqueue")
    assert str(raised.value).startswith("provider 'openai' has no API key: set OPENAI_API_KEY")
    assert "\n" not in str(raised.value)
    assert not Batch.objects.exists() and dummy == []
    # Items that name a provider of their own are checked on theirs.
    routed = write_lines(tmp_path / "routed.jsonl", [json.dumps({"message": "hi", "provider": "test"})] * 3)
    batch_id = enqueue(routed)
    assert Batch.objects.get(pk=batch_id).total == 3 and len(dummy) == 3


def test_a_nul_in_an_item_is_stored_as_u_fffd_not_a_failed_batch(tmp_path, dummy):
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps("first\u0000ticket"),
            json.dumps({"id": "n\u0000", "messages": [{"role": "user", "content": "second\u0000ticket"}]}),
        ],
    )
    enqueue(source)
    first, second = BatchItem.objects.order_by("position")
    assert first.message == "first\ufffdticket"
    assert (second.item_id, second.overrides["messages"][0]["content"]) == ("n\ufffd", "second\ufffdticket")
