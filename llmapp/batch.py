"""Run a use case over many inputs: JSON Lines in, JSON Lines out, in input order.

An input line is a JSON string (the message) or an object with ``message`` and
optionally ``id`` and per-item overrides. Memory stays flat however long the input
is: lines are read as they are needed, and at most a small window of results waits
to be written in order.
"""

import contextlib
import json
import logging
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from django.db import close_old_connections

from .exceptions import LLMError
from .redaction import redact
from .service import complete_prompt

logger = logging.getLogger("llmapp.batch")

#: Keys an input object may carry besides ``id`` and ``message``.
ITEM_OVERRIDES = frozenset(
    {"prompt", "temperature", "max_output_tokens", "provider", "model", "timeout", "retries"}
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
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return Item(
            str(number), None, problem=f'line {number} must be a JSON string or an object with a "message"'
        )
    item_id = str(data.get("id", number))
    unknown = sorted(set(data) - ITEM_OVERRIDES - {"id", "message"})
    if unknown:
        return Item(
            item_id,
            None,
            problem=f"line {number} has unknown key(s) {', '.join(unknown)}; "
            f"known: id, message, {', '.join(sorted(ITEM_OVERRIDES))}",
        )
    overrides = {key: data[key] for key in ITEM_OVERRIDES if key in data}
    return Item(item_id, data["message"], overrides)


def read_items(lines):
    """Yield an Item for each non-blank line."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield parse_line(line, number)


def run_item(usecase, item):
    """Run one item; return its output record (an error is a record too, never raised)."""
    if item.problem:
        return error_record(item.id, "InvalidInput", item.problem)
    try:
        completion = complete_prompt(usecase, item.message, **item.overrides)
    except LLMError as exc:
        return error_record(item.id, type(exc).__name__, str(exc))
    except Exception as exc:
        # A bug met by one item must not end a batch of thousands: record it and go on.
        logger.exception("Item %r of a batch of use case %r failed", item.id, usecase)
        return error_record(item.id, type(exc).__name__, redact(str(exc)))
    return completion_record(item.id, completion)


def _run_in_worker(usecase, item):
    try:
        return run_item(usecase, item)
    finally:
        # Each item is like a request: the worker thread's connection follows CONN_MAX_AGE.
        close_old_connections()


def completion_record(item_id, completion):
    return {
        "id": item_id,
        "text": completion.text,
        "provider": completion.provider,
        "model": completion.model,
        "usage": completion.usage,
        "latency_ms": round(completion.latency_ms, 1),
    }


def error_record(item_id, error_type, message):
    return {"id": item_id, "error": {"type": error_type, "message": message}}


def dumps(record):
    return json.dumps(record, ensure_ascii=False) + "\n"


def completed_ids(path):
    """Keep only the successful records of a previous run's output; return their ids.

    Failed items are dropped from the file, so that a re-run tries them again and
    every id appears in the output once.
    """
    if not os.path.exists(path):
        return set()
    done, kept = set(), []
    with open(path, encoding="utf-8") as previous:
        for line in previous:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if isinstance(record, dict) and "error" not in record and "id" in record:
                done.add(str(record["id"]))
                kept.append(line if line.endswith("\n") else line + "\n")
    temporary = f"{path}.resume"
    with open(temporary, "w", encoding="utf-8") as compacted:
        compacted.writelines(kept)
    os.replace(temporary, path)
    return done


@dataclass
class BatchStats:
    done: int = 0
    failed: int = 0
    skipped: int = 0


def run_batch(usecase, items, write, *, concurrency=1, skip=frozenset(), progress=None):
    """Run ``items`` with ``concurrency`` calls at once; ``write(record)`` each result in input order.

    On KeyboardInterrupt, stops taking items, lets the running calls finish (a second
    interrupt stops waiting), writes every finished result and re-raises.
    ``progress(record)`` is called once per written record.
    """
    stats = BatchStats()
    window = max(4, concurrency * 4)  # results that may wait for an earlier, slower item
    pending = deque()

    def emit(future):
        record = future.result()
        write(record)
        if "error" in record:
            stats.failed += 1
        else:
            stats.done += 1
        if progress is not None:
            progress(record)

    # A slot per running call: taking one waits for any call to finish, with no scan of
    # the pending futures per item.
    slots = threading.Semaphore(concurrency)

    def free_slot(future):
        slots.release()

    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llm-batch")
    try:
        for item in items:
            if item.id in skip:
                stats.skipped += 1
                continue
            slots.acquire()
            future = executor.submit(_run_in_worker, usecase, item)
            future.add_done_callback(free_slot)
            pending.append(future)
            if len(pending) >= window:
                emit(pending.popleft())  # blocks on the oldest item, which bounds memory
            while pending and pending[0].done():
                emit(pending.popleft())
        while pending:
            emit(pending.popleft())
    except KeyboardInterrupt:
        for future in pending:
            future.cancel()
        with contextlib.suppress(KeyboardInterrupt):
            wait(pending)
        for future in pending:
            if future.done() and not future.cancelled():
                emit(future)
        raise
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    return stats
