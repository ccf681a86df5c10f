"""The RQ path for real: Redis, two `manage.py rqworker` processes and the test's own database.

Redis is the machine's on 127.0.0.1:6379, or a redis-server the test starts; without
either the test is skipped (failed instead under LLM_REQUIRE_SERVICES=1, as in CI).
Run with DATABASE_URL=postgres://... to prove the PostgreSQL path; SQLite otherwise.
"""

import io
import json
import re
import time
from collections import Counter

import pytest
from django.core.management import call_command
from django.db.models import Sum

from llmapp.models import Batch, BatchItem, CompletionEvent
from tests.fakes.rq_workers import redis_url, rq_workers, shared_database  # noqa: F401

ITEMS = 300
#: Seconds the workers get for the whole batch; a few suffice on a laptop.
DEADLINE = 60

pytestmark = pytest.mark.django_db(transaction=True)


def command(*args):
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def user_message(request):
    return [message["content"] for message in request.body["messages"] if message["role"] == "user"][-1]


@pytest.fixture
def on_rq(settings, rq_workers, openai_provider):  # noqa: F811
    """Send batch tasks to the workers' queue; summarize goes to the fake OpenAI server."""
    queue = rq_workers.queue
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai"}}
    settings.LLM_BATCH_QUEUE = queue
    settings.TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": [queue]}}
    settings.RQ_QUEUES = {queue: {"URL": rq_workers.redis_url, "DEFAULT_TIMEOUT": 60}}
    settings.RQ = {"JOB_CLASS": "django_tasks_rq.Job"}
    return rq_workers


def test_two_workers_run_every_item_exactly_once_and_collect_keeps_input_order(
    on_rq, openai_provider, settings, tmp_path
):
    for _ in range(ITEMS):
        openai_provider.hang(0.01)  # each answer takes a little while, as a real one does
    on_rq.start(2, settings)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(f"ticket {n}") + "\n" for n in range(1, ITEMS + 1)))

    out = command("llm", "summarize", "--input", str(source), "--enqueue")
    created = Batch.objects.get(pk=re.match(r"Enqueued batch (\d+): ", out).group(1))
    assert created.total == ITEMS
    # A second delivery of every task still queued, as a broker may redeliver: none may run twice.
    out = command("llm_batch", "resume", str(created.pk))
    redelivered = int(re.match(r"Enqueued (\d+) pending item", out).group(1))

    items = BatchItem.objects.filter(batch=created)
    deadline = time.monotonic() + DEADLINE
    while True:
        counts = created.counts()
        deliveries = items.aggregate(n=Sum("attempts"))["n"]
        if Batch.finished(counts) == ITEMS and deliveries == ITEMS + redelivered:
            break
        on_rq.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(
                f"after {DEADLINE}s: {counts}, {deliveries} of {ITEMS + redelivered} deliveries; "
                f"failed jobs: {on_rq.failed_jobs()}\n{on_rq.report()}"
            )
        time.sleep(0.2)

    assert counts["done"] == ITEMS, on_rq.report()
    assert on_rq.failed_jobs() == []
    jobs = on_rq.jobs_done()
    assert len(jobs) == 2 and all(jobs.values()), jobs  # both workers took part
    assert sum(jobs.values()) == ITEMS + redelivered

    # Exactly once: one request per item reached the provider, and one usage event was recorded.
    messages = Counter(user_message(request) for request in openai_provider.requests)
    assert messages == Counter(f"ticket {n}" for n in range(1, ITEMS + 1))
    events = CompletionEvent.objects.filter(created_at__gte=created.created_at, usecase="summarize")
    assert events.filter(status="ok", provider="openai").count() == ITEMS
    assert set(items.values_list("attempts", flat=True)) <= {1, 2}

    output = tmp_path / "out.jsonl"
    command("llm_batch", "collect", str(created.pk), "--output", str(output))
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["id"] for record in records] == [str(n) for n in range(1, ITEMS + 1)]
    assert [record["text"] for record in records] == [
        f"Fake answer to: ticket {n}" for n in range(1, ITEMS + 1)
    ]
