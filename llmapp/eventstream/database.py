"""Usage events as CompletionEvent rows, written off the call path or, if asked, inline."""

import contextlib
import math

from django.db import NotSupportedError, connections, router, transaction

from llmapp.eventstream.base import EventStream
from llmapp.eventstream.writer import EventWriter

DEFAULTS = {
    # Events waiting for the writer; past this many, new ones are dropped and counted.
    "queue_size": 10_000,
    # Rows per INSERT.
    "batch_size": 500,
    # Seconds an event may wait for others to share its INSERT: a server stopped a
    # second after its last request (uvicorn's SIGTERM skips atexit) has written it.
    "max_wait": 0.2,
    # Insert each event on the caller's thread, in its transaction (a savepoint), before
    # the call returns: usage is visible at once, and every call pays the INSERT.
    "synchronous": False,
    # Seconds a caller may wait for the usage database: the statement in synchronous
    # mode, the drain of the queue at exit otherwise.
    "timeout": 1.0,
}


class DatabaseEventStream(EventStream):
    """Insert a CompletionEvent row per call, in batches on a writer thread of its own.

    Options (``LLM_EVENTSTREAM_OPTIONS``): ``queue_size``, ``batch_size``, ``max_wait``,
    ``synchronous`` and ``timeout``; see ``DEFAULTS``.
    """

    writes_to_database = True
    option_names = frozenset(DEFAULTS)

    def __init__(self, **options):
        options = DEFAULTS | options
        self.synchronous = self.blocking = bool(options["synchronous"])
        self.timeout = float(options["timeout"])
        self.writer = EventWriter(
            queue_size=int(options["queue_size"]),
            batch_size=int(options["batch_size"]),
            max_wait=float(options["max_wait"]),
            insert=insert_events,
        )
        sizes = (self.writer.queue_size, self.writer.batch_size)
        if min(sizes) < 1 or not (self.writer.max_wait >= 0 and self.timeout > 0):
            raise ValueError(
                "queue_size and batch_size must be positive whole numbers, max_wait a number of "
                "seconds from 0 and timeout above 0"
            )

    def record(self, event):
        if self.synchronous:
            self.insert(event)
        else:
            self.writer.offer(event)

    def insert(self, event):
        """Insert ``event`` now, on this thread's connection; the statement is bounded by ``timeout``."""
        from llmapp.models import CompletionEvent

        connection = connections[router.db_for_write(CompletionEvent)]
        # A savepoint inside the caller's transaction, so that a failed insert cannot break it.
        with bounded_transaction(connection, self.timeout):
            insert_events(connection, [event])

    def congested(self, headroom=0):
        return not self.synchronous and self.writer.queue.qsize() + headroom > self.writer.queue_size // 2

    def flush(self, timeout):
        return self.writer.flush(timeout)

    def close(self, timeout):
        """Write what is queued within ``timeout``; count and report what could not be."""
        if self.writer.stop(timeout):
            return True
        self.writer.abandon(f"the usage database did not take them within {timeout:g}s")
        return False


def insert_events(connection, events):
    """INSERT ``events`` (UsageEvents) as CompletionEvent rows on ``connection``, in few statements.

    What bulk_create() does, without a model instance per event and without DEBUG's
    query log (which, on SQLite, quotes every parameter again in a query of its own):
    the writer thread shares the GIL with the callers, so each µs it spends per event is
    theirs. On PostgreSQL with psycopg 3, a batch goes in one COPY (see ``_copies``).
    """
    from llmapp.models import CompletionEvent

    fields = [field for field in CompletionEvent._meta.concrete_fields if not field.primary_key]
    table = connection.ops.quote_name(CompletionEvent._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    rows = _rows(connection, fields, events)
    # A cursor without the debug wrapper; the wrapper of database errors stays.
    connection.ensure_connection()
    with connection.wrap_database_errors:
        database_cursor = connection.create_cursor()
    with connection.make_cursor(database_cursor) as cursor:
        if _copies(connection, database_cursor, rows):
            # In a transaction, a savepoint: a COPY the table refuses leaves it usable.
            savepoint = transaction.atomic(using=connection.alias) if connection.in_atomic_block else None
            try:
                with (
                    savepoint or contextlib.nullcontext(),
                    connection.wrap_database_errors,
                    database_cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
                ):
                    for row in rows:
                        copy.write_row(row)
                return
            except NotSupportedError:
                # Row-level security, for one: this database gets INSERTs from now on.
                _no_copy.add(connection.alias)
        row = f"({', '.join(['%s'] * len(fields))})"
        per_statement = max(1, connection.ops.bulk_batch_size(fields, events))
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            values = ", ".join([row] * len(chunk))
            # Quoted names and placeholders only: the values travel as parameters.
            params = [value for row_values in chunk for value in row_values]
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {values}", params)  # noqa: S608


#: The database aliases that refused a COPY into the events table.
_no_copy = set()


def _copies(connection, database_cursor, rows):
    """Whether ``rows`` go in one COPY: on PostgreSQL with psycopg 3, several rows, no wrappers.

    A multi-row INSERT there costs psycopg more than 100 µs of Python per row, quoting
    each value into the query; COPY about 15. One row goes faster as an INSERT (one round
    trip, not two). A COPY would pass by the connection's execute wrappers (a project's
    own, which may rewrite statements or read them as INSERTs): a connection that has any
    gets INSERTs, which they see as they see Django's.
    """
    return (
        len(rows) > 1
        and connection.vendor == "postgresql"
        and hasattr(database_cursor, "copy")
        and not connection.execute_wrappers
        and connection.alias not in _no_copy
    )


#: Model field types whose columns take whole numbers.
WHOLE_NUMBERS = frozenset(
    {
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveBigIntegerField",
        "PositiveSmallIntegerField",
    }
)


def _rows(connection, fields, events):
    """The column values of each event, in the database's own form."""
    names = [field.name for field in fields]
    kinds = [field.get_internal_type() for field in fields]
    # Text may hold a NUL; dates, decimals and JSON need the database's own form; a count a
    # provider sent as 12.0 goes as 12 (COPY refuses "12.0" for an integer); the rest as it is.
    text = [i for i, kind in enumerate(kinds) if kind in {"CharField", "TextField"}]
    json = [(i, fields[i]) for i, kind in enumerate(kinds) if kind == "JSONField"]
    dates = [i for i, kind in enumerate(kinds) if kind == "DateTimeField"]
    decimals = [(i, fields[i]) for i, kind in enumerate(kinds) if kind == "DecimalField"]
    whole = [i for i, kind in enumerate(kinds) if kind in WHOLE_NUMBERS]
    adapt_decimal = connection.ops.adapt_decimalfield_value
    adapt_date = connection.ops.adapt_datetimefield_value
    rows = []
    for event in events:
        values = [getattr(event, name) for name in names]
        for i in text:
            if values[i] is None:  # the columns hold "" for "none"
                values[i] = ""
            elif "\x00" in values[i]:
                values[i] = storable(values[i])
        for i, field in json:
            if values[i] is not None:
                values[i] = field.get_db_prep_save(storable(values[i]), connection)
        for i in dates:
            values[i] = adapt_date(values[i])
        for i, field in decimals:
            if values[i] is not None:
                values[i] = adapt_decimal(values[i], field.max_digits, field.decimal_places)
        for i in whole:
            if isinstance(values[i], float):
                values[i] = round(values[i]) if math.isfinite(values[i]) else None
        rows.append(values)
    return rows


def storable(value):
    """Return ``value`` with every NUL character in its strings replaced by U+FFFD.

    PostgreSQL's text and jsonb cannot hold NUL: one in a message would lose the whole
    event. Replaced on every database, so that stored events read the same everywhere.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value


@contextlib.contextmanager
def bounded_transaction(connection, seconds):
    """A transaction (a savepoint inside the caller's) whose statements wait ``seconds`` at most.

    PostgreSQL: ``statement_timeout`` for this transaction, put back after. SQLite: the
    wait for another writer's lock (its busy timeout, 5 s by Django's default), the
    start of the transaction included. Other databases run the block unbounded.
    Connecting is bounded by the database's own options (``connect_timeout`` in
    ``DATABASES[...]["OPTIONS"]`` for PostgreSQL).
    """
    milliseconds = max(1, int(seconds * 1000))
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            previous = cursor.execute("PRAGMA busy_timeout").fetchone()[0]
            cursor.execute(f"PRAGMA busy_timeout = {milliseconds}")
        try:
            with transaction.atomic(using=connection.alias):
                yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f"PRAGMA busy_timeout = {int(previous)}")
    elif connection.vendor == "postgresql":
        with transaction.atomic(using=connection.alias):
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT current_setting('statement_timeout'), set_config('statement_timeout', %s, true)",
                    [str(milliseconds)],
                )
                previous = cursor.fetchone()[0]
            yield
            # Only after success: a failed statement's rollback undoes the setting itself, and
            # the transaction accepts no statement until then.
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
    else:
        with transaction.atomic(using=connection.alias):
            yield
