"""Usage events off the call path: the writer thread's batches, drains, drops, forks and bounds."""

import contextlib
import dataclasses
import logging
import os
import sqlite3
import textwrap
import threading

import pytest
from django.db import connection
from django.db.backends.signals import connection_created

from llmapp import complete_prompt, eventstream
from llmapp.eventstream import writer as writer_module
from llmapp.eventstream.database import DatabaseEventStream, insert_events
from llmapp.eventstream.writer import EventWriter
from llmapp.metrics import locmem as sent_metrics
from llmapp.models import CompletionEvent
from tests.services import BlackHole

BACKGROUND = {"synchronous": False}


@pytest.fixture
def inserts():
    """Count the INSERT statements the writer thread's connections send to the database."""
    sent = []

    def count(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("INSERT"):
            sent.append(threading.current_thread().name)
        return execute(sql, params, many, context)

    def on_connect(sender, connection, **kwargs):
        if threading.current_thread().name == "llmapp-events":
            connection.execute_wrappers.append(count)

    connection_created.connect(on_connect)
    yield sent
    connection_created.disconnect(on_connect)


@pytest.mark.django_db(transaction=True)
def test_many_calls_become_a_few_multi_row_inserts_from_one_thread(settings, inserts):
    settings.LLM_EVENTSTREAM_OPTIONS = BACKGROUND | {"batch_size": 500, "max_wait": 5}
    for _ in range(30):
        complete_prompt("summarize", "hi", provider="test")
    assert CompletionEvent.objects.count() == 0  # still queued: nothing waited on the database
    assert eventstream.flush(timeout=10)
    assert CompletionEvent.objects.count() == 30
    # One batch (30 < batch_size), written by the writer thread alone: one INSERT on SQLite
    # and PostgreSQL alike (30 rows fit in one statement's parameters, SQLite's 999 too; a
    # connection with an execute wrapper, as here, gets INSERTs where a bare one gets a COPY).
    assert inserts == ["llmapp-events"]


@pytest.mark.django_db(transaction=True)
def test_a_full_batch_is_written_without_waiting_for_max_wait(settings):
    settings.LLM_EVENTSTREAM_OPTIONS = BACKGROUND | {"batch_size": 5, "max_wait": 600}
    stream = eventstream.get_eventstream()
    for _ in range(5):
        complete_prompt("summarize", "hi", provider="test")
    # No flush: the fifth event wakes the writer, which writes the batch at once, long
    # before max_wait. (A regression fails here, not by waiting 600 s.)
    for _ in range(1000):
        if stream.writer.written == 5:
            break
        threading.Event().wait(0.01)
    assert stream.writer.written == 5
    assert CompletionEvent.objects.count() == 5


@pytest.mark.django_db(transaction=True)
def test_a_full_queue_drops_events_counts_them_and_logs_once(settings, caplog):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.locmem.LocmemMetricsBackend"
    sent_metrics.reset()
    writer_module.reset_dropped_count()
    release = threading.Event()

    def stuck_insert(connection, events):
        release.wait()  # the usage database hangs
        insert_events(connection, events)

    writer = EventWriter(queue_size=3, batch_size=1, max_wait=0, insert=stuck_insert)
    usage = _usage_event()
    with caplog.at_level(logging.WARNING, logger="llmapp.eventstream"):
        accepted = [writer.offer(usage) for _ in range(10)]
        # The writer holds the first event (stuck in the database); the queue takes three more.
        assert accepted.count(False) >= 6
        dropped = accepted.count(False)
        assert writer_module.dropped_count() == dropped
        writer.offer(usage)
    # Said once, however many were dropped within the interval.
    [said] = caplog.records
    assert "Dropped 1 usage event(s): the queue of 3 events is full" in said.getMessage()
    release.set()
    assert writer.stop(timeout=10)
    assert writer.written + writer_module.dropped_count() == 11
    from llmapp import metrics

    metrics.flush()
    assert sum(amount for _, key, amount, _ in sent_metrics.sent if key.endswith("eventstream.dropped")) == (
        dropped + 1
    )


@pytest.mark.django_db(transaction=True)
def test_a_producer_that_may_wait_waits_for_room_rather_than_drop(settings):
    writer_module.reset_dropped_count()
    release = threading.Event()

    def held_insert(connection, events):
        release.wait()  # the usage database is a moment behind
        insert_events(connection, events)

    writer = EventWriter(queue_size=3, batch_size=1, max_wait=0, insert=held_insert)
    usage = _usage_event()
    accepted = []

    def batch_worker():
        with eventstream.may_wait(30):
            accepted.extend(writer.offer(usage) for _ in range(10))

    worker = threading.Thread(target=batch_worker)
    worker.start()
    # One event held by the stuck database, three in the queue: the fifth waits for room.
    while len(accepted) < 4 or writer.queue.qsize() < 3:
        threading.Event().wait(0.005)
    assert worker.is_alive() and writer_module.dropped_count() == 0
    release.set()
    worker.join(30)
    assert accepted == [True] * 10
    assert writer.stop(timeout=10)
    assert (writer.written, writer_module.dropped_count()) == (10, 0)
    # A caller that may not wait (a request) still drops at once rather than wait.
    assert writer.offer(usage) is False


@pytest.mark.django_db(transaction=True)
def test_a_bad_row_loses_only_itself(settings):
    good = _usage_event()
    bad = dataclasses.replace(good, input_tokens=-1)  # violates the column's CHECK constraint
    writer_module.reset_dropped_count()
    writer = EventWriter(queue_size=10, batch_size=10, max_wait=5, insert=insert_events)
    for usage in (good, bad, good):
        writer.offer(usage)
    assert writer.stop(timeout=10)  # written, and the writer's connection closed
    assert CompletionEvent.objects.count() == 2
    assert writer_module.dropped_count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_stopped_writer_has_closed_its_connection_and_ended(closes):
    # A process exits as soon as the stop returns: a SQLite connection closed after that,
    # as the interpreter finalizes, crashed it.
    writer = EventWriter(queue_size=10, batch_size=10, max_wait=5, insert=insert_events)
    writer.offer(_usage_event())
    assert writer.stop(timeout=10)
    assert not writer.thread.is_alive()
    assert closes == ["llmapp-events"]
    assert CompletionEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_debug_keeps_no_queries_on_the_writers_connection(settings):
    settings.DEBUG = True
    # The insert itself logs no query (the debug cursor would quote every parameter again)...
    insert_events(connection, [_usage_event()] * 3)
    assert list(connection.queries_log) == []
    # ...and what else the writer sends is let go after each batch.
    writer = EventWriter(queue_size=10, batch_size=10, max_wait=0, insert=insert_events)
    writer._write([_usage_event()])  # on this thread, as the writer thread runs it
    assert list(connection.queries_log) == []
    assert CompletionEvent.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_a_change_of_settings_writes_what_the_old_stream_held(settings):
    settings.LLM_EVENTSTREAM_OPTIONS = BACKGROUND | {"max_wait": 600}
    complete_prompt("summarize", "hi", provider="test")
    settings.LLM_EVENTSTREAM_OPTIONS = BACKGROUND | {"max_wait": 0}
    assert CompletionEvent.objects.count() == 1


def _usage_event():
    from llmapp.calls.service import prepare_request
    from llmapp.calls.types import Completion
    from llmapp.eventstream.events import build_event

    request, _ = prepare_request("summarize", "hi", provider="test")
    completion = Completion(text="ok", usecase="summarize", provider="test", model="locmem")
    return build_event(request, 1.0, completion=completion)


def _statements(sent):
    """An execute wrapper that notes each statement's first word: COPY bypasses it (INSERTs are used)."""

    def note(execute, sql, params, many, context):
        sent.append(sql.split(None, 1)[0].upper())
        return execute(sql, params, many, context)

    return note


def _stored(events):
    """What the database should hold of ``events``: the same, with NUL made U+FFFD."""
    return [
        dataclasses.asdict(event) | {"error_message": event.error_message.replace("\x00", "\ufffd")}
        for event in events
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "execute-wrapper"])
def test_every_kind_of_value_is_stored_as_it_was_recorded(wrapped):
    """Run also with DATABASE_URL=postgres://...: there a bare connection's rows go in one COPY,
    and a connection with execute wrappers (a project's own) gets INSERTs, which they see."""
    from decimal import Decimal

    awkward = "tab\there, a newline\nand a backslash \\N, quotes ' \" and é中"
    first = dataclasses.replace(
        _usage_event(),
        message=awkward,
        response="\\.",  # the end of COPY's text data, as a line of its own
        error_message="nul \x00 inside",
        input_tokens=None,
        output_tokens=7,
        cost=Decimal("0.0000123"),
        rates={"test:locmem": {"input": "0.15", "nested": [1, None, "\t"]}},
        conversation=[{"role": "user", "content": awkward}],
        exception={"type": "ProviderError", "frames": [{"line": 3}]},
        cached=True,
    )
    second = dataclasses.replace(_usage_event(), status="error", latency_ms=0.25, attempts=3)
    sent = []
    with connection.execute_wrapper(_statements(sent)) if wrapped else contextlib.nullcontext():
        insert_events(connection, [first, second])
    expected = _stored([first, second])
    stored = [
        {name: getattr(row, name) for name in expected[0]} for row in CompletionEvent.objects.order_by("id")
    ]
    assert stored == expected
    assert sent == (["INSERT"] if wrapped else [])


@pytest.mark.django_db
def test_token_counts_sent_as_floats_are_stored_as_whole_numbers():
    # The OpenAI SDK keeps what an OpenAI-compatible server sends: 12.0 stays a float, which
    # PostgreSQL's COPY would refuse for an integer column, losing the event.
    events = [
        dataclasses.replace(_usage_event(), input_tokens=12.0, output_tokens=3.0),
        dataclasses.replace(_usage_event(), input_tokens=float("nan"), output_tokens=7),
    ]
    insert_events(connection, events)
    assert list(CompletionEvent.objects.order_by("id").values_list("input_tokens", "output_tokens")) == [
        (12, 3),
        (None, 7),
    ]


@pytest.mark.django_db
def test_a_table_that_refuses_copy_gets_inserts_and_loses_nothing():
    """Row-level security refuses COPY FROM: the batch goes in INSERTs, and so do the next ones."""
    if connection.vendor != "postgresql":
        pytest.skip("row-level security is PostgreSQL's, which only the PostgreSQL run of the suite has")
    from llmapp.eventstream import database

    role = f"llmapp_rls_{os.getpid()}"
    table = CompletionEvent._meta.db_table
    with connection.cursor() as cursor:
        # All in the test's transaction, rolled back with it: the role too.
        cursor.execute(f"CREATE ROLE {role}")
        cursor.execute(f"GRANT ALL ON {table} TO {role}")
        cursor.execute(f"GRANT ALL ON SEQUENCE {table}_id_seq TO {role}")
        cursor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        cursor.execute(f"CREATE POLICY everything ON {table} USING (true) WITH CHECK (true)")
        cursor.execute(f"SET LOCAL ROLE {role}")
    try:
        insert_events(connection, [_usage_event(), _usage_event()])
        assert connection.alias in database._no_copy
        insert_events(connection, [_usage_event(), _usage_event()])
        assert CompletionEvent.objects.count() == 4
    finally:
        database._no_copy.discard(connection.alias)


# -- whole processes: exit, fork, and a usage database that hangs ---------------------------

FORKS = """
import os
from llmapp import complete_prompt, eventstream
complete_prompt("summarize", "from the parent, before the fork")
pid = os.fork()
if pid == 0:
    complete_prompt("summarize", "from the child")
    eventstream.flush(timeout=10)
    os._exit(0)
os.waitpid(pid, 0)
complete_prompt("summarize", "from the parent, after the fork")
"""


def count_rows(database):
    with sqlite3.connect(database) as db:
        return db.execute("SELECT count(*) FROM llmapp_completionevent").fetchone()[0]


def test_a_cli_run_writes_its_event_before_it_exits(manage):
    result = manage("llm", "summarize", "-m", "Recorded at exit.")
    assert result.returncode == 0, result.stderr
    assert count_rows(manage.database) == 1


def test_a_forked_child_writes_its_own_events_and_the_parent_its(manage):
    result = manage("shell", "-c", textwrap.dedent(FORKS))
    assert result.returncode == 0, result.stderr
    assert count_rows(manage.database) == 3


def test_a_locked_usage_database_delays_no_answer(manage):
    holder = sqlite3.connect(manage.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the file
    try:
        result = manage("llm", "summarize", "-m", "Locked but answered.", "--timeout", "2", timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 0, result.stderr
    assert "Locked but answered." in result.stdout
    assert "Dropped 1 usage event(s): the usage database did not take them within 1s" in result.stderr
    assert count_rows(manage.database) == 0


def test_a_hung_postgresql_delays_no_answer(manage):
    with BlackHole() as hole:
        database = f"postgres://postgres@127.0.0.1:{hole.port}/never"
        result = manage(
            "llm", "summarize", "-m", "Hung but answered.", env={"DATABASE_URL": database}, timeout=60
        )
    assert result.returncode == 0, result.stderr
    assert "Hung but answered." in result.stdout
    assert "Dropped 1 usage event(s)" in result.stderr


def test_synchronous_mode_bounds_the_wait_for_a_locked_database(manage):
    holder = sqlite3.connect(manage.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    settings = manage.database.parent / "sync_settings.py"
    settings.write_text(
        'from settings.dev import *\nLLM_EVENTSTREAM_OPTIONS = {"synchronous": True, "timeout": 0.2}\n'
    )
    try:
        result = manage(
            "llm",
            "summarize",
            "-m",
            "Answered all the same.",
            env={"DJANGO_SETTINGS_MODULE": "sync_settings", "PYTHONPATH": str(settings.parent)},
            timeout=60,
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 0, result.stderr
    assert "Answered all the same." in result.stdout
    assert "database is locked" in result.stderr  # logged as a failure to record, never raised


def test_options_that_make_no_sense_are_refused():
    for options in ({"queue_size": 0}, {"batch_size": -1}, {"max_wait": -1}, {"timeout": 0}):
        with pytest.raises(ValueError):
            DatabaseEventStream(**options)


@pytest.mark.django_db(transaction=True)
def test_a_batch_waits_for_the_writer_rather_than_lose_events(settings):
    from llmapp import batch

    # A queue far smaller than the batch: callers that cannot wait would drop events.
    settings.LLM_EVENTSTREAM_OPTIONS = BACKGROUND | {"queue_size": 20, "batch_size": 5}
    writer_module.reset_dropped_count()
    items = [batch.Item(str(n), f"item {n}") for n in range(200)]
    records = []
    stats = batch.run_batch("summarize", iter(items), records.append, concurrency=8)
    assert stats.done == 200
    # The batch's own flush waits 5s at most: a loaded machine may need longer, which loses nothing.
    assert eventstream.flush(timeout=60)
    assert CompletionEvent.objects.count() == 200
    assert writer_module.dropped_count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_writer_keeps_one_connection_from_batch_to_batch(settings):
    # The test database has CONN_MAX_AGE 0, Django's default: a request would reconnect each time.
    settings.LLM_EVENTSTREAM_OPTIONS = BACKGROUND
    opened = []

    def on_connect(sender, connection, **kwargs):
        if threading.current_thread().name == "llmapp-events":
            opened.append(connection.alias)

    connection_created.connect(on_connect)
    try:
        for _ in range(3):
            complete_prompt("summarize", "hi", provider="test")
            assert eventstream.flush(timeout=10)
    finally:
        connection_created.disconnect(on_connect)
    assert CompletionEvent.objects.count() == 3
    assert opened == ["default"]


@pytest.mark.parametrize("options", [{"queue_sise": 100}, {"batch_size": 0}])
def test_a_misconfigured_stream_fails_no_call_and_counts_what_it_drops(settings, caplog, options):
    settings.LLM_EVENTSTREAM_OPTIONS = options
    writer_module.reset_dropped_count()
    with caplog.at_level(logging.WARNING, logger="llmapp.eventstream"):
        for _ in range(3):
            assert complete_prompt("summarize", "hi", provider="test").text == "locmem answer to: hi"
    assert writer_module.dropped_count() == 3
    # Said once, not once per call.
    [record] = [record for record in caplog.records if record.name == "llmapp.eventstream"]
    assert "the event stream is misconfigured (LLM_EVENTSTREAM_OPTIONS" in record.getMessage()


@pytest.mark.django_db(transaction=True)
def test_a_use_case_with_no_prompt_records_its_content(settings):
    settings.LLM_LOG_CONTENT = True
    settings.LLM_EVENTSTREAM_OPTIONS = BACKGROUND
    settings.LLM_USECASES = {"bare": {"PROVIDER": "test", "PROMPT": None}}
    writer_module.reset_dropped_count()
    complete_prompt("bare", "hi")
    assert eventstream.flush(timeout=10)
    assert CompletionEvent.objects.get().message == "hi"
    assert writer_module.dropped_count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_connection_the_server_dropped_costs_no_batch(settings):
    """PostgreSQL ends the writer's idle connection (a restart, an idle timeout); the next batch is kept."""
    if connection.vendor != "postgresql":
        pytest.skip("ends a server-side session, which only the PostgreSQL run of the suite has")
    settings.LLM_EVENTSTREAM_OPTIONS = BACKGROUND
    writer_module.reset_dropped_count()
    complete_prompt("summarize", "first", provider="test")
    assert eventstream.flush(timeout=10)
    with connection.cursor() as cursor:  # every other session on this test database: the writer's
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchall()
    complete_prompt("summarize", "second", provider="test")
    assert eventstream.flush(timeout=10)
    assert CompletionEvent.objects.count() == 2
    assert writer_module.dropped_count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_writer_given_up_on_still_ends_and_takes_no_more_events(closes):
    writer_module.reset_dropped_count()
    release = threading.Event()

    def stuck_insert(connection, events):
        release.wait()
        insert_events(connection, events)

    writer = EventWriter(queue_size=10, batch_size=1, max_wait=0, insert=stuck_insert)
    for _ in range(3):
        writer.offer(_usage_event())
    assert writer.stop(timeout=0.05) is False  # its database hangs
    writer.abandon("the process is going")  # what exit does then
    assert writer.offer(_usage_event()) is False  # closed: counted, not queued for nobody
    release.set()
    writer.thread.join(timeout=30)
    assert not writer.thread.is_alive()  # it ended once its write came back
    # Closing then could overlap the interpreter's finalization at exit: the OS closes it.
    assert "llmapp-events" not in closes
    # Given up on at exit, the batch under way is counted lost (the process ends with it).
    assert writer_module.dropped_count() == 4
