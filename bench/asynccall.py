"""Per-call overhead, async: acomplete_prompt against raw ``openai.AsyncOpenAI``, one call at a time.

As bench/percall.py, but awaited on one event loop that lives through the benchmark,
as a server's does: the same fake server, the same payload, batches interleaved
round by round, on a SQLite file in this process and on PostgreSQL in a child
process. The target applies to the default ``database`` event stream; ``null`` is
shown beside it. Where llmapp has ``astream_prompt``, a streamed call is timed against
the raw SDK's stream too (its usage chunk included, as the provider asks for it).
"""

import asyncio
import time

from .harness import (
    CHILD_CONNECTIONS,
    MESSAGE,
    USECASE,
    FakeServer,
    Unavailable,
    database_label,
    in_child,
    interleaved,
    median,
    paired,
    setup_django,
)
from .percall import DATABASE, NULL, Events, fake_provider, raw_payload
from .report import Result, skipped

NAME = "async"
TARGET = 1.10


def abatch(loop, call, calls, warmup, settings=None, events=None):
    """Return a callable awaiting ``call()`` ``calls`` times on ``loop`` under ``settings``; µs per call."""
    from django.test import override_settings

    async def timed():
        # A change of settings rebuilds providers: warm the new client's connection.
        for _ in range(warmup):
            await call()
        started = time.perf_counter()
        for _ in range(calls):
            await call()
        return time.perf_counter() - started

    def run():
        with override_settings(**(settings or {})):
            if events:
                events.start()
            elapsed = loop.run_until_complete(timed())
            if events:
                events.done(warmup + calls)
        return elapsed / calls * 1e6

    return run


def astream_prompt():
    """Return llmapp's astream_prompt, or None where llmapp has none yet."""
    import llmapp
    from llmapp.calls import service

    try:
        return llmapp.astream_prompt
    except AttributeError:
        return getattr(service, "astream_prompt", None)


def bench(workspace, quick=False):
    setup_django(workspace)
    results = measure(quick)
    try:
        database = workspace.postgres(connections=CHILD_CONNECTIONS)
    except Unavailable as exc:
        results.append(
            skipped(
                NAME, _complete_name("database", "PostgreSQL"), exc, unit="µs", value_unit="x", target=TARGET
            )
        )
    else:
        results += in_child(workspace, database, f"{__name__}:measure_database", quick=quick)
    return results


def measure_database(quick=False):
    """The ``database`` row alone, on this process's database (a bench.child on PostgreSQL)."""
    return measure(quick, streams=("database",), streamed=False)


def measure(quick, streams=("null", "database"), streamed=True):
    """Time the async calls on this process's database; a Result per event stream (and the stream's)."""
    import openai
    from django.test import override_settings

    loop = asyncio.new_event_loop()
    try:
        with FakeServer() as server, override_settings(LLM_PROVIDERS=fake_provider(server)):
            client = openai.AsyncOpenAI(
                base_url=server.base_url, api_key="sk-bench", max_retries=0, timeout=30
            )
            try:
                results = _complete(loop, client, quick, streams)
                if streamed:
                    results.append(_stream(loop, client, quick))
            finally:
                loop.run_until_complete(client.close())
    finally:
        loop.close()
    return results


def _complete_name(stream, label=None):
    where = f" ({label})" if label else ""
    return f"openai acomplete_prompt vs raw AsyncOpenAI, one at a time, event stream {stream}{where}"


def _complete(loop, client, quick, streams):
    from llmapp import acomplete_prompt

    rounds, calls, warmup = (6, 100, 20) if quick else (15, 100, 20)
    payload = raw_payload()

    async def raw():
        return await client.chat.completions.create(**payload)

    async def llm():
        return await acomplete_prompt(USECASE, MESSAGE)

    events = Events()
    candidates = {"raw": abatch(loop, raw, calls, warmup)}
    if "null" in streams:
        candidates["null"] = abatch(loop, llm, calls, warmup, NULL)
    if "database" in streams:
        candidates["database"] = abatch(loop, llm, calls, warmup, DATABASE, events=events)
    figures = interleaved(candidates, rounds)
    raw_us = median(figures["raw"])
    common = f"medians of {rounds} interleaved batches of {calls} awaited calls"
    results = []
    for stream in ("database", "null"):
        if stream not in streams:
            continue
        measured = median(figures[stream])
        ratio, spread = paired(figures[stream], figures["raw"])
        database = stream == "database"
        results.append(
            Result(
                NAME,
                _complete_name(stream, database_label() if database else None),
                measured,
                raw_us,
                "µs",
                ratio,
                "x",
                target=TARGET if database else None,
                notes=f"{common}; {spread}; overhead {measured - raw_us:+.0f} µs per call"
                + (f"; {events.note()}" if database else ""),
                extra={"raw_us": figures["raw"], f"{stream}_us": figures[stream]}
                | ({"events": events.as_dict()} if database else {}),
            )
        )
    return results


def _stream(loop, client, quick):
    name = f"openai astream_prompt vs raw AsyncOpenAI stream, event stream database ({database_label()})"
    astream = astream_prompt()
    if astream is None:
        return skipped(NAME, name, "llmapp has no astream_prompt yet", unit="µs", value_unit="x")
    rounds, calls, warmup = (4, 50, 10) if quick else (10, 100, 20)
    payload = raw_payload() | {"stream": True, "stream_options": {"include_usage": True}}

    async def raw():
        chunks = await client.chat.completions.create(**payload)
        async for _ in chunks:
            pass

    async def llm():
        async for _ in astream(USECASE, MESSAGE):
            pass

    events = Events()
    figures = interleaved(
        {
            "raw": abatch(loop, raw, calls, warmup),
            "database": abatch(loop, llm, calls, warmup, DATABASE, events=events),
        },
        rounds,
    )
    measured, raw_us = median(figures["database"]), median(figures["raw"])
    ratio, spread = paired(figures["database"], figures["raw"])
    return Result(
        NAME,
        name,
        measured,
        raw_us,
        "µs",
        ratio,
        "x",
        notes=f"medians of {rounds} interleaved batches of {calls} streamed calls, read to the end; "
        f"{spread}; {events.note()}",
        extra={"raw_us": figures["raw"], "database_us": figures["database"], "events": events.as_dict()},
    )
