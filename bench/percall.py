"""Per-call overhead, sync: complete_prompt against the raw SDK, and on the locmem provider.

On bench.settings, in this process on a SQLite file and, for PostgreSQL, in a child
process (bench/child.py): Django has one default database per process. The fake
OpenAI server runs in a process of its own, so it takes no CPU or GIL from the client
being measured. Candidates run in batches of calls, interleaved round by round; each
time is the median over the rounds of the mean time per call in a batch, after
warm-up calls, and each ratio the median of the rounds' own ratios (candidate over
baseline, run next to each other), which cancels the drift of a shared machine best.

Both event streams are measured: ``database`` (the default; a user's, with its
default options) and ``null``, which records nothing. The baseline is the SDK's own
``chat.completions.create()``; llmapp's provider posts the same request through the SDK
client's ``client.post()`` and reads the JSON itself, which skips the SDK's per-call
walk of the request's types and its pydantic answer, so ``null`` is also timed against
that same ``client.post()`` call alone: llmapp's own overhead. After each
``database`` batch, untimed, the events are flushed (``llmapp.eventstream.flush``,
where llmapp has it) and counted: a writer thread's INSERTs land in no other
candidate's batch, and every call must have stored its event.
"""

import json
import time

from .harness import (
    CHILD_CONNECTIONS,
    MESSAGE,
    USECASE,
    FakeServer,
    Unavailable,
    count_events,
    database_label,
    flush_events,
    in_child,
    interleaved,
    median,
    paired,
    setup_django,
)
from .report import Result, skipped

NAME = "percall"
NULL_TARGET = 1.05
DATABASE_TARGET = 1.10
# llmapp's overhead on the in-memory provider, as a multiple of the provider's own call
# (the 50 µs of the earlier absolute target, over the 10.6 µs that call took then).
LOCMEM_TARGET = 4.7
NULL = {"LLM_EVENTSTREAM": "null", "LLM_TSDB": "null"}
DATABASE = {"LLM_EVENTSTREAM": "database", "LLM_TSDB": "database"}


class Events:
    """The usage events of the ``database`` batches: flushed after each, untimed, and counted."""

    def __init__(self):
        self.calls = 0
        self.stored = 0
        self.flush_s = 0.0
        self.flushed = False
        self._before = 0

    def start(self):
        self._before = count_events()

    def done(self, calls):
        started = time.perf_counter()
        self.flushed = flush_events()
        self.flush_s += time.perf_counter() - started
        self.calls += calls
        self.stored += count_events() - self._before

    def note(self):
        stored = f"{self.stored} of {self.calls} events stored"
        if not self.flushed:
            return f"{stored}; no eventstream.flush in this llmapp: each call inserted its own"
        per_event = self.flush_s / self.calls * 1e6 if self.calls else 0
        return f"{stored}; the flush after each batch (untimed) took {per_event:.0f} µs per event"

    def as_dict(self):
        return {"calls": self.calls, "stored": self.stored, "flush_s": self.flush_s}


def batch(call, calls, warmup, settings=None, after=None, events=None):
    """Return a callable that runs ``call`` ``calls`` times under ``settings``; µs per call."""
    from django.test import override_settings

    def run():
        with override_settings(**(settings or {})):
            if events:
                events.start()
            # A change of settings rebuilds providers: warm the new client's connection.
            for _ in range(warmup):
                call()
            started = time.perf_counter()
            for _ in range(calls):
                call()
            elapsed = time.perf_counter() - started
            if events:
                events.done(warmup + calls)
        if after:
            after()
        return elapsed / calls * 1e6

    return run


def fake_provider(server):
    """Return LLM_PROVIDERS with the openai provider pointed at ``server``."""
    from django.conf import settings

    openai = settings.LLM_PROVIDERS["openai"]
    return settings.LLM_PROVIDERS | {
        "openai": openai | {"OPTIONS": openai["OPTIONS"] | {"base_url": server.base_url}}
    }


def raw_payload():
    """The keyword arguments the openai provider passes the SDK, but its per-attempt timeout."""
    from llmapp.calls.service import prepare_request

    request, backend = prepare_request(USECASE, MESSAGE)
    return {key: value for key, value in backend.build_payload(request).items() if key != "timeout"}


def bench(workspace, quick=False):
    setup_django(workspace)
    results = openai(quick)
    try:
        database = workspace.postgres(connections=CHILD_CONNECTIONS)
    except Unavailable as exc:
        results.append(
            skipped(
                NAME, _database_name("PostgreSQL"), exc, unit="µs", value_unit="x", target=DATABASE_TARGET
            )
        )
    else:
        results += in_child(workspace, database, f"{__name__}:openai_database", quick=quick)
    return results + _locmem(quick)


def openai_database(quick=False):
    """The ``database`` row alone, on this process's database (a bench.child on PostgreSQL)."""
    return openai(quick, streams=("database",))


def openai(quick, streams=("null", "database")):
    """Time complete_prompt on the fake server against the raw SDK; a Result per event stream."""
    from django.test import override_settings

    with FakeServer() as server:
        with override_settings(LLM_PROVIDERS=fake_provider(server)):
            results = _openai(server, quick, streams)
        served = server.stop()
    results[0].extra["requests_served"] = served
    return results


def _database_name(label):
    return f"openai complete_prompt vs raw SDK, event stream database ({label})"


def _openai(server, quick, streams):
    import openai

    from llmapp import complete_prompt
    from llmapp.providers import providers
    from llmapp.providers.stainless import response_class

    rounds, calls, warmup = (6, 100, 20) if quick else (25, 100, 20)
    payload = raw_payload()
    client = openai.OpenAI(
        base_url=server.base_url,
        api_key="sk-bench",
        max_retries=0,
        timeout=providers["openai"].options["timeout"],
    )

    def raw():
        return client.chat.completions.create(**payload)

    def post():
        # The request llmapp's openai provider sends, without llmapp: its overhead alone.
        response = client.post("/chat/completions", cast_to=response_class(openai), body=payload)
        return json.loads(response.content)

    def llm():
        return complete_prompt(USECASE, MESSAGE)

    events = Events()
    candidates = {"raw": batch(raw, calls, warmup)}
    if "null" in streams:
        candidates["post"] = batch(post, calls, warmup)
        candidates["null"] = batch(llm, calls, warmup, NULL)
    if "database" in streams:
        candidates["database"] = batch(llm, calls, warmup, DATABASE, events=events)
    figures = interleaved(candidates, rounds)
    common = f"medians of {rounds} interleaved batches of {calls} calls"

    def row(name, candidate, baseline, target=None, note="", extra=None):
        measured, base = median(figures[candidate]), median(figures[baseline])
        value, spread = paired(figures[candidate], figures[baseline])
        return Result(
            NAME,
            name,
            measured,
            base,
            "µs",
            value,
            "x",
            target=target,
            notes=f"{common}; {spread}; {measured - base:+.0f} µs per call{note}",
            extra={
                f"{baseline}_us": figures[baseline],
                f"{candidate}_us": figures[candidate],
                **(extra or {}),
            },
        )

    results = []
    if "null" in streams:
        name = "openai complete_prompt vs raw SDK, event stream null"
        results.append(row(name, "null", "raw", NULL_TARGET))
        results.append(
            row(
                "openai complete_prompt vs the same request by the SDK's client.post(), event stream null",
                "null",
                "post",
                note=": llmapp's own overhead, on any database (the provider posts its body through "
                "client.post() and reads the JSON itself, where chat.completions.create() walks the "
                "request's types and builds pydantic models)",
            )
        )
    if "database" in streams:
        results.append(
            row(
                _database_name(database_label()),
                "database",
                "raw",
                DATABASE_TARGET,
                note=f"; {events.note()}",
                extra={"events": events.as_dict()},
            )
        )
    return results


def _locmem(quick):
    from llmapp import complete_prompt
    from llmapp.calls.service import prepare_request
    from llmapp.providers import locmem, providers

    rounds = 6 if quick else 15
    calls = 1000 if quick else 3000
    database_calls = 200 if quick else 500
    request, _ = prepare_request("bench-locmem", MESSAGE)
    backend = providers["locmem"]

    def provider_alone():
        return backend.complete(request)

    def llm():
        return complete_prompt("bench-locmem", MESSAGE)

    events = Events()
    figures = interleaved(
        {
            "provider": batch(provider_alone, calls, 50, after=locmem.reset),
            "null": batch(llm, calls, 50, NULL, after=locmem.reset),
            "database": batch(llm, database_calls, 20, DATABASE, after=locmem.reset, events=events),
        },
        rounds,
    )
    provider_us, null_us, database_us = (median(figures[name]) for name in ("provider", "null", "database"))
    null_ratio, null_spread = paired(figures["null"], figures["provider"])
    database_ratio, database_spread = paired(figures["database"], figures["provider"])
    return [
        Result(
            NAME,
            "locmem complete_prompt vs the provider's complete() alone, event stream null",
            null_us,
            provider_us,
            "µs",
            null_ratio,
            "x",
            target=LOCMEM_TARGET,
            notes=f"medians of {rounds} interleaved batches of {calls} calls; {null_spread}; "
            f"llmapp adds {null_us - provider_us:.1f} µs per call",
            extra={"null_us": figures["null"], "provider_us": figures["provider"]},
        ),
        Result(
            NAME,
            f"locmem complete_prompt vs the provider's complete() alone, event stream database "
            f"({database_label()})",
            database_us,
            provider_us,
            "µs",
            database_ratio,
            "x",
            notes=f"medians of {rounds} interleaved batches of {database_calls} calls; {database_spread}; "
            f"{database_us - null_us:+.1f} µs per call over null; " + events.note(),
            extra={"database_us": figures["database"], "events": events.as_dict()},
        ),
    ]
