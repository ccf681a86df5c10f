"""Run a use case over many inputs: JSON Lines in, JSON Lines out, in input order.

An input line is a JSON string (the message) or an object with ``message`` and
optionally ``id`` and per-item overrides. Memory stays flat however long the input
is: lines are read as they are needed, at most a small window of results waits to be
written in order, and what is kept per item is its id and line number.
"""

import contextlib
import itertools
import json
import logging
import threading
import time
from array import array
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from django.db import close_old_connections

from llmapp import eventstream
from llmapp.calls.service import complete_prompt, prepare_request
from llmapp.calls.types import jsonable
from llmapp.conf.secrets import redact
from llmapp.exceptions import (
    ConfigurationError,
    InvalidRequestError,
    LLMError,
    RateLimited,
)

logger = logging.getLogger("llmapp.batch")
#: How a batch waits out a rate limit (tests replace it).
sleep = time.sleep

#: Keys an input object may carry besides ``id`` and ``message``.
#: The name of a batch's worker threads.
WORKER_PREFIX = "llm-batch"
#: Seconds the end of a batch waits for its usage events to be written.
FLUSH_TIMEOUT = 5.0
ITEM_OVERRIDES = frozenset(
    {"messages", "prompt", "temperature", "max_output_tokens", "provider", "model", "timeout", "retries"}
)


@dataclass(frozen=True)
class Item:
    id: str
    message: str | None
    overrides: dict = field(default_factory=dict)
    #: Why the input line could not be read; such an item is written as an error.
    problem: str | None = None


def parse_line(line, number):
    """Return the Item of input line ``number`` (1-based); its id defaults to the number."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        return Item(str(number), None, problem=f"line {number} is not JSON: {exc}")
    if isinstance(data, str):
        return Item(str(number), data)
    if not isinstance(data, dict) or not (isinstance(data.get("message"), str) or "messages" in data):
        return Item(
            str(number),
            None,
            problem=f'line {number} must be a JSON string or an object with a "message" (or "messages")',
        )
    item_id = str(data.get("id", number))
    if "message" in data and "messages" in data:
        return Item(item_id, None, problem=f'line {number} has both "message" and "messages": keep one')
    unknown = sorted(set(data) - ITEM_OVERRIDES - {"id", "message"})
    if unknown:
        return Item(
            item_id,
            None,
            problem=f"line {number} has unknown key(s) {', '.join(unknown)}; "
            f"known: id, message, {', '.join(sorted(ITEM_OVERRIDES))}",
        )
    overrides = {key: data[key] for key in ITEM_OVERRIDES if key in data}
    # A conversation is checked when the item runs, as a call checks it: its record says what is wrong.
    return Item(item_id, data.get("message"), overrides)


class InputError(ValueError):
    """An input line that stops the whole batch: it is not UTF-8, or another line has its id."""


def read_items(lines, positions=None):
    """Yield an Item for each non-blank line of ``lines`` (bytes, or str from a text stream).

    ``positions`` maps the ids seen so far to their line numbers. A line whose id another
    line has already, or that is not UTF-8, raises InputError: a first pass over a file
    with the same dict checks the whole file before any call is made.
    """
    positions = {} if positions is None else positions
    for number, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode()
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"line {number} is not UTF-8 text (byte {line[exc.start]:#04x} at offset {exc.start}); "
                    "convert it first, e.g. with iconv -f LATIN1 -t UTF-8"
                ) from None
        if number == 1:
            line = line.removeprefix("\ufeff")  # the byte-order mark some editors write
        if not line.strip():
            continue
        item = parse_line(line, number)
        first = positions.setdefault(item.id, number)
        if first != number:
            # A resume goes by id: two items with one id would pass for each other.
            raise InputError(f"lines {first} and {number} have the same id {item.id!r}; give each its own")
        yield item


def check_callable(usecase, provider=None, model=None):
    """Raise the ConfigurationError every item of ``usecase`` on ``provider`` would meet, if any.

    A use case or provider that is misconfigured, an SDK not installed or too old, a key that
    is missing: a setting to fix, said once, before any item runs. Nothing is sent. An
    item's own bad argument is not one: its record says so when it runs.
    """
    try:
        _, backend = prepare_request(usecase, "-", provider=provider, model=model)
    except InvalidRequestError:
        return
    if (problem := backend.sdk_problem(backend.alias)) is not None:
        raise problem
    backend.check_connection()


def run_item(usecase, item, stop_on=()):
    """Run one item; return its output record (an error is a record too, never raised).

    Except the LLMErrors of the classes ``stop_on``, which are raised.
    """
    if item.problem:
        return error_record(item.id, "InvalidInput", item.problem)
    try:
        completion = paced(usecase, item)
    except LLMError as exc:
        if isinstance(exc, stop_on):
            raise
        return error_record(item.id, type(exc).__name__, str(exc))
    except Exception as exc:
        # A bug met by one item must not end a batch of thousands: record it and go on.
        logger.exception("Item %r of a batch of use case %r failed", item.id, usecase)
        return error_record(item.id, type(exc).__name__, redact(str(exc)))
    return completion_record(item.id, completion)


def paced(usecase, item):
    """Run ``item``'s call, waiting as long as a rate limit says rather than failing the item."""
    while True:
        try:
            return complete_prompt(usecase, item.message, **item.overrides)
        except RateLimited as exc:
            sleep(exc.retry_after)


def _run_in_worker(usecase, item, stopped, run):
    if stopped.is_set():
        # An item before this one met a setting to fix: the batch ends there, and this
        # item's result, after it, is never written.
        return None
    try:
        # A setting to fix (no key, no SDK) would fail every item alike: it stops the batch.
        # Its usage event may wait for room in the writer's queue rather than be dropped.
        with eventstream.may_wait(FLUSH_TIMEOUT):
            return run(usecase, item, stop_on=ConfigurationError)
    except ConfigurationError:
        stopped.set()
        raise
    finally:
        # Each item is like a request: the worker thread's connection follows CONN_MAX_AGE.
        close_old_connections()


def completion_record(item_id, completion):
    record = {"id": item_id, "text": completion.text}
    if completion.parsed is not None:  # a typed use case's
        record["parsed"] = jsonable(completion.parsed)
    return record | {
        "provider": completion.provider,
        "model": completion.model,
        "usage": completion.usage,
        "latency_ms": round(completion.latency_ms, 1),
    }


def error_record(item_id, error_type, message):
    return {"id": item_id, "error": {"type": error_type, "message": message}}


def dumps(record):
    return json.dumps(record, ensure_ascii=False) + "\n"


def parse_record(line):
    """The record of an output line (a dict with an ``id``), or None for a line that is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None  # a line cut short by a crash
    return record if isinstance(record, dict) and "id" in record else None


def finished_ids(lines):
    """Return the ids of the successful records among a previous run's output ``lines``."""
    done = set()
    for line in lines:
        record = parse_record(line)
        if record is not None and "error" not in record:
            done.add(str(record["id"]))
    return done


def in_input_order(previous, positions):
    """Yield the lines of a previous output in input order, one record per id.

    ``previous`` is a binary file object that can seek; ``positions`` maps ids to input
    line numbers. Of an id's records, a success wins over a failure, then the later one.
    Lines that are not records are dropped; records of ids not in ``positions`` (an input
    edited since, or read only in part) come last, in their order. Memory is 8 bytes per
    input line: where each kept record starts, then the records are read in order.
    """
    # Each entry is the record's offset times two, plus one for a success; -1 for none.
    starts = array("q", [-1]) * (max(positions.values(), default=0) + 1)
    others = {}
    offset = 0
    for line in previous:
        record = parse_record(line)
        if record is not None:
            item_id = str(record["id"])
            entry = offset * 2 + ("error" not in record)
            number = positions.get(item_id)
            kept = starts[number] if number is not None else others.get(item_id, -1)
            if kept < 0 or entry % 2 or not kept % 2:
                if number is None:
                    others[item_id] = entry
                else:
                    starts[number] = entry
        offset += len(line)
    for entry in itertools.chain(starts, others.values()):
        if entry >= 0:
            previous.seek(entry // 2)
            line = previous.readline()
            yield line if line.endswith(b"\n") else line + b"\n"


@dataclass
class BatchStats:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    #: Ctrl-C stopped the batch before its end.
    interrupted: bool = False
    #: Calls still under way when a second Ctrl-C stopped the wait for them.
    running: int = 0


def run_batch(
    usecase,
    items,
    write,
    *,
    concurrency=1,
    skip=frozenset(),
    progress=None,
    waiting=None,
    read_ahead=True,
    run=run_item,
):
    """Run ``items`` with ``concurrency`` calls at once; ``write(record)`` each result in input order.

    With ``read_ahead``, a window of items waits in the workers' queue, so that a worker
    that finishes takes the next at once (under the GIL, waiting for this thread to hand
    it over cost 0.4 ms an item). Without it, the next item is read only once a call has
    finished and its result is written: for ``items`` that may block (a pipe), so that
    a result is never held back by input that has not come yet.

    On KeyboardInterrupt, stops taking items, calls ``waiting(count)`` with the number of
    calls under way, lets them finish, writes every finished result and returns with
    ``interrupted`` set. A second interrupt stops the wait; ``running`` then counts the
    calls left behind. An InputError from ``items`` stops the batch after the items before
    it, and is raised; so does an item's ConfigurationError, at once, the results of the
    items before it written. ``progress(record)`` is called once per written record.
    ``run(usecase, item, stop_on=...)`` makes an item's record (``run_item``, or an
    evaluation's, which checks the answer too).
    """
    stats = BatchStats()
    window = max(4, concurrency * 4)  # results that may wait for an earlier, slower item
    pending = deque()

    def emit(record):
        write(record)
        if "error" in record:
            stats.failed += 1
        else:
            stats.done += 1
        if progress is not None:
            progress(record)

    # Items taken but not yet written: a slot each; taking one waits for a call to finish.
    slots = threading.Semaphore(window if read_ahead else concurrency)

    def free_slot(future):
        slots.release()

    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=WORKER_PREFIX)
    stopped = threading.Event()

    def emit_oldest():
        record = pending[0].result()  # an interrupt while waiting leaves the item pending
        pending.popleft()
        emit(record)

    try:
        for item in items:
            if item.id in skip:
                stats.skipped += 1
                continue
            slots.acquire()
            eventstream.wait_for_room(FLUSH_TIMEOUT, headroom=window)
            future = executor.submit(_run_in_worker, usecase, item, stopped, run)
            future.add_done_callback(free_slot)
            pending.append(future)
            # Waiting on the oldest item once the window is full bounds memory.
            while pending and (len(pending) >= window or pending[0].done()):
                emit_oldest()
        while pending:
            emit_oldest()
    except InputError:
        _finish(pending, emit)  # every line before the bad one gets its result
        raise
    except KeyboardInterrupt:
        for future in pending:
            future.cancel()  # those not started yet
        stats.interrupted = True
        with contextlib.suppress(KeyboardInterrupt):  # once more, while writing what finished
            _finish(pending, emit, waiting)
        stats.running = sum(not future.done() for future in pending)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        # The batch's usage is in the database when it returns, not only at exit.
        eventstream.flush(timeout=FLUSH_TIMEOUT)
    return stats


def _finish(pending, emit, waiting=None):
    """Wait for the pending items, until an interrupt, and emit those that finished."""
    with contextlib.suppress(KeyboardInterrupt):
        running = [future for future in pending if not future.done()]
        if running and waiting is not None:
            waiting(len(running))
        wait(running)
    for future in pending:
        if future.done() and not future.cancelled():
            emit(future.result())
