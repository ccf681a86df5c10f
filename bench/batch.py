"""Batch runs through the real CLI: wall time against the raw SDK, and memory.

Wall time: 1,000 items, ``--concurrency 50``, the fake OpenAI server (a child
process) answering each call after 100 ms, so the ideal is 1000 / 50 x 0.1 s = 2.0 s.
Nothing is subtracted: the figure includes the CLI's start-up and the SDK's import.
The target (at most 1.10x) is against the floor measured in the same run,
interleaved: the same calls through the raw SDK in 50 threads (bench/rawbatch.py),
without Django or llmapp. It applies to the default event stream, ``database``, on a
SQLite file and on PostgreSQL; ``null`` is shown beside them. After each database
run the events are counted: one per item, stored by the time the CLI exits.

Memory, on the preview provider (no server):

- 100,000 items, event stream ``null``: peak RSS of the CLI process from ``wait4``,
  against the peak RSS of a single ``--message`` run; under 150 MB.
- 30,000 items, event stream ``database`` on SQLite, with DEBUG on (settings.dev's
  default, which makes Django keep every query it runs): flat memory. The CLI's RSS
  is read every 100 ms from /proc while its output grows, and the mean of the last
  third of the run must be within 5 MB of the mean of the first third.
"""

import json
import statistics
import sys

from .harness import MANAGE, FakeServer, Unavailable, interleaved, median, paired, rss_mb, run
from .report import Result, ratio, skipped

NAME = "batch"
ITEMS = 1000
CONCURRENCY = 50
DELAY = 0.1
IDEAL_S = ITEMS / CONCURRENCY * DELAY
WALL_TARGET = 1.10
MEMORY_ITEMS = 100_000
MEMORY_TARGET_MB = 150.0
FLAT_ITEMS = 30_000
FLAT_TARGET_MB = 5.0
RSS_EVERY_S = 0.1
MESSAGE = (
    "Ticket {n}: checkout has timed out for Canadian customers since Tuesday's deploy. "
    "Support has forty tickets. A rollback fixed it for one customer."
)
NULL = {"LLM_EVENTSTREAM": "null", "LLM_TSDB": "null"}


def write_input(path, items):
    with open(path, "w", encoding="utf-8") as handle:
        for n in range(1, items + 1):
            handle.write(json.dumps(MESSAGE.format(n=n)) + "\n")
    return path


def cli(source, output, concurrency=CONCURRENCY):
    return [
        sys.executable,
        str(MANAGE),
        "llm",
        "summarize",
        "--input",
        str(source),
        "--output",
        str(output),
        "--concurrency",
        str(concurrency),
        "--quiet",
    ]


def check_output(finished, output, items, provider):
    """Raise unless the run succeeded with one record per item, in order, from ``provider``."""
    if finished.returncode:
        raise RuntimeError(f"the batch run failed ({finished.returncode}):\n{finished.stderr}")
    with open(output, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    if [record.get("id") for record in records] != [str(n) for n in range(1, items + 1)]:
        raise RuntimeError(f"the batch output holds {len(records)} records, not {items} in order")
    bad = [record for record in records if "error" in record or record.get("provider") != provider]
    if bad:
        raise RuntimeError(f"{len(bad)} failed batch item(s), e.g. {bad[0]}")


def raw_payload():
    """The request the CLI's summarize use case sends, but the user message: for rawbatch."""
    from llmapp.calls.types import CompletionRequest
    from llmapp.conf.usecases import BUILTIN_USECASES
    from llmapp.providers.openai import OpenAIProvider

    summarize = BUILTIN_USECASES["summarize"]
    provider = OpenAIProvider("openai", options={"base_url": "http://127.0.0.1/v1", "api_key": "sk-bench"})
    request = CompletionRequest(
        usecase="summarize",
        message="",
        prompt=summarize["PROMPT"],
        provider="openai",
        model=provider.default_model,
        temperature=summarize["TEMPERATURE"],
        max_output_tokens=summarize["MAX_OUTPUT_TOKENS"],
    )
    payload = provider.build_payload(request)
    payload["messages"] = [message for message in payload["messages"] if message["role"] == "system"]
    return payload


def bench(workspace, quick=False):
    return _wall(workspace, quick) + _memory(workspace, quick)


def _wall_name(stream, label=None):
    where = f" ({label})" if label else ""
    return f"{ITEMS} items, --concurrency {CONCURRENCY}, 100 ms replies, events {stream}{where}, vs raw SDK"


def _wall(workspace, quick):
    # Five: one run of 50 threads on 2 cores varies by +-15% on its own; the median of three
    # moved by more than the margins it is read against.
    runs = 1 if quick else 5
    source = write_input(workspace.path / "batch-1k.jsonl", ITEMS)
    empty = write_input(workspace.path / "batch-empty.jsonl", 0)
    counter = iter(range(1_000_000))
    try:
        postgres = workspace.postgres(connections=CONCURRENCY + 5)
    except Unavailable as exc:
        postgres, postgres_missing = None, exc

    payload = json.dumps(raw_payload())
    with FakeServer(delay=DELAY, every=True) as server:
        openai = {
            "LLM_SUMMARIZE_PROVIDER": "openai",
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": "sk-bench",
            "LLM_SUMMARIZE_RETRIES": "0",
        }

        def batch_run(variables, database=None):
            """One CLI run; on a database, also how many of its events the database holds after it."""

            def once():
                n = next(counter)
                target = database or workspace.sqlite(f"batch-{n}")
                before = target.count_events()
                output = workspace.path / f"batch-{n}.out.jsonl"
                finished = run(cli(source, output), env=workspace.env(target, **openai, **variables))
                check_output(finished, output, ITEMS, "openai")
                finished.events = target.count_events() - before
                return finished

            return once

        def raw_run(*flags):
            def once():
                output = workspace.path / f"batch-{next(counter)}.raw.jsonl"
                args = [sys.executable, "-m", "bench.rawbatch", str(source), str(output), *flags]
                args += [
                    "--base-url",
                    server.base_url,
                    "--concurrency",
                    str(CONCURRENCY),
                    "--payload",
                    payload,
                ]
                finished = run(args, env=workspace.env())
                if finished.returncode:
                    raise RuntimeError(f"bench.rawbatch failed:\n{finished.stderr}")
                with open(output, encoding="utf-8") as handle:
                    if sum(1 for _ in handle) != ITEMS:
                        raise RuntimeError("bench.rawbatch did not write one line per item")
                return finished

            return once

        candidates = {"sqlite": batch_run({})}
        if postgres is not None:
            candidates["postgres"] = batch_run({}, postgres)
        candidates |= {"null": batch_run(NULL), "raw": raw_run(), "django": raw_run("--django")}
        figures = interleaved(candidates, runs)
        served = server.stop()
    startup = run(cli(empty, workspace.path / "batch-empty.out.jsonl"), env=workspace.env(**openai))
    if startup.returncode:
        raise RuntimeError(f"the empty batch run failed:\n{startup.stderr}")

    walls = {name: [finished.wall_s for finished in figures[name]] for name in figures}
    cpu = {
        name: median([finished.user_s + finished.system_s for finished in figures[name]]) for name in figures
    }
    raw_s = median(walls["raw"])
    expected = ITEMS * runs * len(figures)
    how = f"median of {runs} interleaved run(s)" if runs > 1 else "1 run"
    results = []
    for name, stream, label in (("sqlite", "database", "SQLite"), ("postgres", "database", "PostgreSQL")):
        if name not in figures:
            results.append(
                skipped(
                    NAME,
                    _wall_name(stream, label),
                    postgres_missing,
                    unit="s",
                    value_unit="x",
                    target=WALL_TARGET,
                )
            )
            continue
        value, spread = paired(walls[name], walls["raw"])
        events = [finished.events for finished in figures[name]]
        results.append(
            Result(
                NAME,
                _wall_name(stream, label),
                median(walls[name]),
                raw_s,
                "s",
                value,
                "x",
                target=WALL_TARGET,
                notes=f"{how}; {spread}; {ratio(median(walls[name]), IDEAL_S):.2f}x the ideal {IDEAL_S:g} s; "
                f"CPU {cpu[name]:.2f} s vs {cpu['raw']:.2f} s raw; events stored per run: "
                f"{', '.join(map(str, events))} of {ITEMS}",
                extra={"wall_s": walls[name], "raw_wall_s": walls["raw"], "events": events},
            )
        )
    null_ratio, null_spread = paired(walls["null"], walls["raw"])
    django_ratio, django_spread = paired(walls["sqlite"], walls["django"])
    results += [
        Result(
            NAME,
            _wall_name("null"),
            median(walls["null"]),
            raw_s,
            "s",
            null_ratio,
            "x",
            notes=f"{how}; {null_spread}; CPU {cpu['null']:.2f} s",
            extra={"wall_s": walls["null"]},
        ),
        Result(
            NAME,
            f"the same {ITEMS} calls, raw SDK in {CONCURRENCY} threads (the floor), vs the ideal",
            raw_s,
            IDEAL_S,
            "s",
            ratio(raw_s, IDEAL_S),
            "x",
            notes=f"{how}; CPU {cpu['raw']:.2f} s; python, the openai import and {ITEMS} SDK calls against "
            f"the same server, no Django or llmapp; the CLI's start-up alone (an empty --input) "
            f"{startup.wall_s:.2f} s; the server answered {served} of {expected} calls, each after "
            f"{DELAY * 1000:.0f} ms",
            extra={"wall_s": walls["raw"], "startup_s": startup.wall_s},
        ),
        Result(
            NAME,
            f"{ITEMS} items, events database (SQLite), vs the raw SDK after django.setup() "
            "(a command's floor)",
            median(walls["sqlite"]),
            median(walls["django"]),
            "s",
            django_ratio,
            "x",
            notes=f"{how}; {django_spread}; the raw run started Django first, with the host project's "
            f"settings, as every management command must: what is left is llmapp's and the CLI's own; "
            f"that floor is {ratio(median(walls['django']), raw_s):.3f}x the raw SDK alone",
            extra={"django_wall_s": walls["django"]},
        ),
    ]
    return results


def _memory(workspace, quick):
    single = run(
        [sys.executable, str(MANAGE), "llm", "summarize", "--message", "hi"],
        env=workspace.env(workspace.fresh_database("memory-single")),
    )
    if single.returncode:
        raise RuntimeError(f"manage.py llm failed:\n{single.stderr}")

    source = write_input(workspace.path / f"memory-{MEMORY_ITEMS}.jsonl", MEMORY_ITEMS)
    output = workspace.path / "memory-null.out.jsonl"
    finished = run(cli(source, output), env=workspace.env(workspace.fresh_database("memory-null"), **NULL))
    check_output(finished, output, MEMORY_ITEMS, "default")
    results = [
        Result(
            NAME,
            f"peak RSS, {MEMORY_ITEMS:,} items on preview, --concurrency {CONCURRENCY}, event stream null",
            finished.max_rss_mb,
            single.max_rss_mb,
            "MB",
            finished.max_rss_mb,
            "MB",
            target=MEMORY_TARGET_MB,
            strict=True,
            notes=f"baseline: peak RSS of one `llm summarize --message hi`; the run took "
            f"{finished.wall_s:.1f} s ({MEMORY_ITEMS / finished.wall_s:,.0f} items/s)",
            extra={"wall_s": finished.wall_s, "items": MEMORY_ITEMS},
        )
    ]
    return [*results, _flat(workspace, single)]


def _flat(workspace, single):
    source = write_input(workspace.path / f"memory-{FLAT_ITEMS}.jsonl", FLAT_ITEMS)
    output = workspace.path / "memory-flat.out.jsonl"
    database = workspace.sqlite("memory-flat")

    def sample(pid):
        mb = rss_mb(pid)
        return None if mb is None else (mb, output.stat().st_size if output.exists() else 0)

    finished = run(
        cli(source, output),
        env=workspace.env(database, DJANGO_DEBUG="true"),
        sample=sample,
        sample_every=RSS_EVERY_S,
    )
    check_output(finished, output, FLAT_ITEMS, "default")
    events = database.count_events()
    # From the first record written: start-up (imports, Django, the first connections) is not the run.
    running = [(seconds, mb) for seconds, (mb, size) in finished.samples if size > 0]
    name = (
        f"RSS over {FLAT_ITEMS:,} items on preview, event stream database (SQLite), DEBUG on: "
        "last third vs first third"
    )
    if len(running) < 6:
        return skipped(
            NAME,
            name,
            f"only {len(running)} samples of a {finished.wall_s:.1f} s run",
            unit="MB",
            value_unit="MB",
            target=FLAT_TARGET_MB,
        )
    third = len(running) // 3
    first = statistics.fmean(mb for _, mb in running[:third])
    last = statistics.fmean(mb for _, mb in running[-third:])
    return Result(
        NAME,
        name,
        last,
        first,
        "MB",
        abs(last - first),
        "MB",
        target=FLAT_TARGET_MB,
        notes=f"mean RSS of the last third {last:.1f} MB vs the first {first:.1f} MB "
        f"({last - first:+.1f} MB), {len(running)} samples {RSS_EVERY_S * 1000:.0f} ms apart from the "
        "first record written to the exit; "
        f"peak {finished.max_rss_mb:.1f} MB (one --message run: {single.max_rss_mb:.1f} MB); the run took "
        f"{finished.wall_s:.1f} s; {events:,} events stored",
        extra={"samples": [(round(t, 2), round(mb, 1)) for t, mb in running], "wall_s": finished.wall_s},
    )
