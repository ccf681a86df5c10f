"""Run a batch through Django's Tasks framework: one task per item, results in the database.

The deployment's ``TASKS`` setting decides where the tasks run: in the enqueuing
process (the immediate backend, the framework's default), on RQ workers
(django-tasks-rq) or on database workers (django-tasks-db). Tasks go to the queue
named by ``LLM_BATCH_QUEUE`` (the framework's "default" unless set).

A task claims its item with one conditional UPDATE before calling the provider, so a
task delivered twice, or by two workers, runs its item once.
"""

from itertools import islice

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from llmapp import batch, conf, eventstream
from llmapp.conf.secrets import redact
from llmapp.eventstream.database import storable
from llmapp.exceptions import ConfigurationError, LLMError
from llmapp.models import Batch, BatchItem

try:  # Django 6
    from django.tasks import task
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
except ImportError:
    try:  # Django 5.2: the django-tasks backport
        from django_tasks import task
        from django_tasks.exceptions import InvalidTaskError
    except ImportError:
        raise ConfigurationError(
            "batch tasks need Django's Tasks framework, built into Django 6 and backported to "
            'Django 5.2 by django-tasks: run pip install "llmapp[tasks]"'
        ) from None

#: Items written, or enqueued, per database round trip: memory stays flat.
CHUNK_SIZE = 500

PENDING, RUNNING, DONE, FAILED = (
    BatchItem.Status.PENDING,
    BatchItem.Status.RUNNING,
    BatchItem.Status.DONE,
    BatchItem.Status.FAILED,
)


def batch_queue():
    """The Tasks queue that batch items go to: LLM_BATCH_QUEUE."""
    return conf.get_setting("LLM_BATCH_QUEUE")


def _on_batch_queue(make):
    """Return ``make(queue)`` for LLM_BATCH_QUEUE; a queue the backend refuses says what to set."""
    queue = batch_queue()
    try:
        return make(queue)
    except InvalidTaskError as exc:
        raise ConfigurationError(
            f"LLM_BATCH_QUEUE is {queue!r}, which the TASKS backend refuses ({exc}): add it to the "
            "backend's QUEUES (and to RQ_QUEUES for RQ), or set LLM_BATCH_QUEUE to one of its queues."
        ) from None


def batch_task(function):
    """Make ``function`` a Task on LLM_BATCH_QUEUE, like ``@task(queue_name=...)``."""
    return _on_batch_queue(lambda queue: task(queue_name=queue)(function))


def _current_task():
    """run_batch_item on today's LLM_BATCH_QUEUE, which settings may have changed since import."""
    return _on_batch_queue(lambda queue: run_batch_item.using(queue_name=queue))


@batch_task
def run_batch_item(item_pk):
    """Run one BatchItem, unless another delivery of this task has claimed it already.

    Returns the item's status, or None when there was nothing to do.
    """
    claimed = BatchItem.objects.filter(pk=item_pk, status=PENDING).update(
        status=RUNNING, started_at=timezone.now(), attempts=F("attempts") + 1
    )
    if not claimed:
        # Redelivered, or its batch was deleted: count the delivery, run nothing.
        BatchItem.objects.filter(pk=item_pk).update(attempts=F("attempts") + 1)
        return None
    item = BatchItem.objects.select_related("batch").get(pk=item_pk)
    try:
        record = batch.run_item(item.batch.usecase, _item_of(item))
    except Exception as exc:
        # run_item returns provider errors as records; anything else is a bug or an outage,
        # recorded on the item so that it does not stay "running", and raised for the backend.
        _finish(item, batch.error_record(item.item_id, type(exc).__name__, redact(str(exc))))
        raise
    _finish(item, record)
    # A worker may end its process without exit handlers (RQ's forked work horse does).
    eventstream.flush(timeout=batch.FLUSH_TIMEOUT)
    return item.status


def _item_of(row):
    """The batch.Item that a stored BatchItem was made from."""
    # Stored as "" when the item carries "messages" instead.
    return batch.Item(row.item_id, row.message or None, row.overrides)


def _finish(item, record):
    item.result = batch.dumps(record)
    item.status = FAILED if "error" in record else DONE
    item.finished_at = timezone.now()
    item.save(update_fields=["result", "status", "finished_at"])


def enqueue_batch(usecase, items):
    """Store ``items`` (batch.Item) as a Batch of ``usecase``; enqueue one task per item on commit.

    Items are written in chunks, so memory stays flat however long the input is. An item
    whose input line could not be read is stored failed, with its error record, and gets
    no task. The tasks are enqueued once the batch is committed, so that a worker never
    looks for an item it cannot see yet. Returns the Batch; ``total`` counts its items.

    Raises ConfigurationError, storing nothing, when every item would fail on a setting
    (``batch.check_callable``).
    """
    queued = _current_task()  # a bad LLM_BATCH_QUEUE fails before anything is stored
    routes_checked = set()

    def checked(item):
        # So does a setting the items on a route would all fail on (no key...): one error,
        # not one per item; raised inside the transaction, it stores nothing.
        route = (item.overrides.get("provider"), item.overrides.get("model"))
        if not item.problem and route not in routes_checked:
            batch.check_callable(usecase, *route)
            routes_checked.add(route)
        return item

    with transaction.atomic():
        created = Batch.objects.create(usecase=usecase)
        rows = (_row(created, position, checked(item)) for position, item in enumerate(items))
        while chunk := list(islice(rows, CHUNK_SIZE)):
            BatchItem.objects.bulk_create(chunk)
            created.total += len(chunk)
        created.save(update_fields=["total"])
        transaction.on_commit(lambda: enqueue_pending(created, queued))
    return created


def _row(owner, position, item):
    # PostgreSQL's text and jsonb cannot hold a NUL, which would fail the whole batch: stored
    # (and so sent) as U+FFFD, as usage events store it.
    row = BatchItem(
        batch=owner,
        position=position,
        item_id=storable(item.id),
        message=storable(item.message or ""),
        overrides=storable(item.overrides),
    )
    if item.problem:
        row.status = FAILED
        row.result = batch.dumps(batch.run_item(owner.usecase, item))  # its error; nothing is called
        row.finished_at = timezone.now()
    return row


def release_stale(owner, started_before):
    """Make pending again the items of ``owner`` claimed before ``started_before`` and never finished.

    For items whose worker died mid-call (killed, out of memory, a deploy): without
    this they would stay running forever. Returns how many were released.
    """
    return BatchItem.objects.filter(batch=owner, status=RUNNING, started_at__lt=started_before).update(
        status=PENDING, started_at=None
    )


def enqueue_pending(owner, queued=None):
    """Enqueue a task for every pending item of ``owner``, in input order; return how many.

    Safe to repeat: an item already queued is run by whichever of its tasks comes first.
    """
    queued = queued or _current_task()
    count, after = 0, -1
    while True:
        # By position, a chunk at a time, rather than one open cursor: with the immediate
        # backend each task writes to the table being read.
        chunk = list(
            BatchItem.objects.filter(batch=owner, status=PENDING, position__gt=after)
            .order_by("position")
            .values_list("pk", "position")[:CHUNK_SIZE]
        )
        if not chunk:
            return count
        after = chunk[-1][1]
        for item_pk, _position in chunk:
            try:
                queued.enqueue(item_pk)
            except Exception as exc:
                raise LLMError(
                    f"batch {owner.pk} is stored, but enqueuing its tasks failed after {count} "
                    f"({type(exc).__name__}: {redact(str(exc))}); once the tasks backend works again, "
                    f"run `manage.py llm_batch resume {owner.pk}`."
                ) from exc
            count += 1
