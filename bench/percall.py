"""Per-call overhead: complete_prompt against the raw SDK, and on the locmem provider.

In this process, on bench.settings. The fake OpenAI server runs in a child process,
so it takes no CPU or GIL from the client being measured. Candidates run in
batches of calls, interleaved round by round; each time is the median over the
rounds of the mean time per call in a batch, after warm-up calls, and each ratio
the median of the rounds' own ratios (candidate over baseline, run next to each
other), which cancels the drift of a shared machine best.

Both event streams are measured: ``database`` (the default, one INSERT and commit
on a SQLite file per call) and ``null``. The 1.05x and 50 µs targets apply to
``null``: that is llmapp's own overhead, the same on any database; the database
rows show what the INSERT adds on SQLite, which the target does not cover.
"""

import statistics
import time

from .harness import FakeServer, interleaved, median, setup_django
from .report import Result

NAME = "percall"
OPENAI_TARGET = 1.05
LOCMEM_TARGET_US = 50.0
MESSAGE = (
    "Checkout has timed out for Canadian customers since Tuesday's deploy. Support has forty "
    "tickets. A rollback fixed it for one customer."
)
NULL = {"LLM_EVENTSTREAM": "null", "LLM_TSDB": "null"}
DATABASE = {"LLM_EVENTSTREAM": "database", "LLM_TSDB": "database"}


def batch(call, calls, warmup, settings=None, after=None):
    """Return a callable that runs ``call`` ``calls`` times under ``settings``; µs per call."""
    from django.test import override_settings

    def run():
        with override_settings(**(settings or {})):
            # A change of settings rebuilds providers: warm the new client's connection.
            for _ in range(warmup):
                call()
            started = time.perf_counter()
            for _ in range(calls):
                call()
            elapsed = time.perf_counter() - started
        if after:
            after()
        return elapsed / calls * 1e6

    return run


def paired(candidate, baseline):
    """Return the median of the rounds' ratios and its interquartile range, as text."""
    ratios = [c / b for c, b in zip(candidate, baseline, strict=True)]
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return median(ratios), f"rounds' ratios: median {median(ratios):.3f}, IQR {low:.3f}-{high:.3f}"


def bench(workspace, quick=False):
    setup_django(workspace)
    from django.conf import settings
    from django.test import override_settings

    with FakeServer() as server:
        openai = settings.LLM_PROVIDERS["openai"]
        providers = settings.LLM_PROVIDERS | {
            "openai": openai | {"OPTIONS": openai["OPTIONS"] | {"base_url": server.base_url}}
        }
        with override_settings(LLM_PROVIDERS=providers):
            results = _openai(server, quick) + _locmem(quick)
        served = server.stop()
    results[0].extra["requests_served"] = served
    return results


def _openai(server, quick):
    import openai

    from llmapp import complete_prompt
    from llmapp.providers import providers
    from llmapp.service import prepare_request

    rounds, calls, warmup = (6, 100, 20) if quick else (25, 100, 20)
    request, backend = prepare_request("bench-openai", MESSAGE)
    # The same payload the provider sends, but the per-attempt timeout: a raw caller has none.
    payload = {key: value for key, value in backend.build_payload(request).items() if key != "timeout"}
    client = openai.OpenAI(
        base_url=server.base_url,
        api_key="sk-bench",
        max_retries=0,
        timeout=providers["openai"].options["timeout"],
    )

    def raw():
        return client.chat.completions.create(**payload)

    def llm():
        return complete_prompt("bench-openai", MESSAGE)

    figures = interleaved(
        {
            "raw": batch(raw, calls, warmup),
            "null": batch(llm, calls, warmup, NULL),
            "database": batch(llm, calls, warmup, DATABASE),
        },
        rounds,
    )
    raw_us, null_us, database_us = (median(figures[name]) for name in ("raw", "null", "database"))
    null_ratio, null_spread = paired(figures["null"], figures["raw"])
    database_ratio, database_spread = paired(figures["database"], figures["raw"])
    common = f"medians of {rounds} interleaved batches of {calls} calls"
    return [
        Result(
            NAME,
            "openai complete_prompt vs raw SDK, event stream null",
            null_us,
            raw_us,
            "µs",
            null_ratio,
            "x",
            target=OPENAI_TARGET,
            notes=f"{common}; {null_spread}; overhead {null_us - raw_us:+.0f} µs per call; "
            "the target applies here",
            extra={"raw_us": figures["raw"], "null_us": figures["null"]},
        ),
        Result(
            NAME,
            "openai complete_prompt vs raw SDK, event stream database (SQLite file)",
            database_us,
            raw_us,
            "µs",
            database_ratio,
            "x",
            notes=f"{common}; {database_spread}; overhead {database_us - raw_us:+.0f} µs per call, "
            f"{database_us - null_us:+.0f} µs of it the INSERT and commit of the usage event",
            extra={"database_us": figures["database"]},
        ),
    ]


def _locmem(quick):
    from llmapp import complete_prompt
    from llmapp.providers import locmem, providers
    from llmapp.service import prepare_request

    rounds = 6 if quick else 15
    calls = 1000 if quick else 3000
    database_calls = 100 if quick else 200
    request, _ = prepare_request("bench-locmem", MESSAGE)
    backend = providers["locmem"]

    def provider_alone():
        return backend.complete(request)

    def llm():
        return complete_prompt("bench-locmem", MESSAGE)

    figures = interleaved(
        {
            "provider": batch(provider_alone, calls, 50, after=locmem.reset),
            "null": batch(llm, calls, 50, NULL, after=locmem.reset),
            "database": batch(llm, database_calls, 20, DATABASE, after=locmem.reset),
        },
        rounds,
    )
    provider_us, null_us, database_us = (median(figures[name]) for name in ("provider", "null", "database"))
    return [
        Result(
            NAME,
            "locmem complete_prompt, event stream null",
            null_us,
            provider_us,
            "µs",
            null_us,
            "µs",
            target=LOCMEM_TARGET_US,
            notes=f"median of {rounds} interleaved batches of {calls} calls; baseline: the locmem "
            f"provider's complete() alone; the target applies here",
            extra={"null_us": figures["null"], "provider_us": figures["provider"]},
        ),
        Result(
            NAME,
            "locmem complete_prompt, event stream database (SQLite file)",
            database_us,
            provider_us,
            "µs",
            database_us,
            "µs",
            notes=f"median of {rounds} interleaved batches of {database_calls} calls; "
            f"{database_us - null_us:+.0f} µs over null: the INSERT and its commit (an fsync)",
            extra={"database_us": figures["database"]},
        ),
    ]
