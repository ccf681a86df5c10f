"""Batch runs through the real CLI: wall time against the ideal, and peak memory.

Wall time: 1,000 items, ``--concurrency 50``, the fake OpenAI server (a child
process) answering each call after 100 ms, so the ideal is 1000 / 50 x 0.1 s = 2.0 s.
Nothing is subtracted: the figure includes the CLI's start-up and the SDK's import.
The target applies to the default event stream, ``database`` (a SQLite file), as a
user has it; ``null`` is shown beside it, and so is the floor: the same calls
through the raw SDK in a thread pool (bench/rawbatch.py), without Django or llmapp.

Memory: 100,000 items on the preview provider (no server), peak RSS of the CLI
process from ``wait4``, against the peak RSS of a single ``--message`` run.
"""

import json
import sys

from .harness import MANAGE, FakeServer, interleaved, median, run
from .report import Result, ratio

NAME = "batch"
ITEMS = 1000
CONCURRENCY = 50
DELAY = 0.1
IDEAL_S = ITEMS / CONCURRENCY * DELAY
WALL_TARGET = 1.2
MEMORY_ITEMS = 100_000
DATABASE_MEMORY_ITEMS = 10_000  # SQLite commits each event: 100,000 would take minutes
MEMORY_TARGET_MB = 150.0
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
    from llmapp.providers.openai import OpenAIProvider
    from llmapp.types import CompletionRequest
    from llmapp.usecases import BUILTIN_USECASES

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


def _wall(workspace, quick):
    runs = 1 if quick else 3
    source = write_input(workspace.path / "batch-1k.jsonl", ITEMS)
    empty = write_input(workspace.path / "batch-empty.jsonl", 0)
    counter = iter(range(1_000_000))

    payload = json.dumps(raw_payload())
    with FakeServer(delay=DELAY, replies=ITEMS * runs * 3) as server:
        openai = {
            "LLM_SUMMARIZE_PROVIDER": "openai",
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": "sk-bench",
            "LLM_SUMMARIZE_RETRIES": "0",
        }

        def batch_run(variables):
            def once():
                n = next(counter)
                database = workspace.fresh_database(f"batch-{n}")
                output = workspace.path / f"batch-{n}.out.jsonl"
                finished = run(cli(source, output), env=workspace.env(database, **openai, **variables))
                check_output(finished, output, ITEMS, "openai")
                return finished

            return once

        def raw_run():
            output = workspace.path / f"batch-{next(counter)}.raw.jsonl"
            args = [sys.executable, "-m", "bench.rawbatch", str(source), str(output)]
            args += ["--base-url", server.base_url, "--concurrency", str(CONCURRENCY), "--payload", payload]
            finished = run(args, env=workspace.env())
            if finished.returncode:
                raise RuntimeError(f"bench.rawbatch failed:\n{finished.stderr}")
            with open(output, encoding="utf-8") as handle:
                if sum(1 for _ in handle) != ITEMS:
                    raise RuntimeError("bench.rawbatch did not write one line per item")
            return finished

        figures = interleaved({"database": batch_run({}), "null": batch_run(NULL), "raw": raw_run}, runs)
        served = server.stop()
    startup = run(cli(empty, workspace.path / "batch-empty.out.jsonl"), env=workspace.env(**openai))
    if startup.returncode:
        raise RuntimeError(f"the empty batch run failed:\n{startup.stderr}")

    database_s = median([finished.wall_s for finished in figures["database"]])
    null_s = median([finished.wall_s for finished in figures["null"]])
    raw_s = median([finished.wall_s for finished in figures["raw"]])
    expected = ITEMS * runs * 3
    served_note = f"the server answered {served} of {expected} calls, each after {DELAY * 1000:.0f} ms"
    startup_note = f"start-up alone (an empty --input) {startup.wall_s:.2f} s"
    cpu = {
        name: median([finished.user_s + finished.system_s for finished in figures[name]]) for name in figures
    }
    return [
        Result(
            NAME,
            f"{ITEMS} items, --concurrency {CONCURRENCY}, 100 ms replies, event stream database",
            database_s,
            IDEAL_S,
            "s",
            ratio(database_s, IDEAL_S),
            "x",
            target=WALL_TARGET,
            notes=f"median of {runs} run(s); baseline: the ideal {ITEMS}/{CONCURRENCY} x {DELAY:g} s; "
            f"{startup_note}; CPU {cpu['database']:.2f} s; {served_note}",
            extra={"wall_s": [f.wall_s for f in figures["database"]], "startup_s": startup.wall_s},
        ),
        Result(
            NAME,
            f"{ITEMS} items, --concurrency {CONCURRENCY}, 100 ms replies, event stream null",
            null_s,
            IDEAL_S,
            "s",
            ratio(null_s, IDEAL_S),
            "x",
            notes=f"median of {runs} run(s); CPU {cpu['null']:.2f} s",
            extra={"wall_s": [f.wall_s for f in figures["null"]]},
        ),
        Result(
            NAME,
            f"the same {ITEMS} calls, raw SDK in {CONCURRENCY} threads (the floor)",
            raw_s,
            IDEAL_S,
            "s",
            ratio(raw_s, IDEAL_S),
            "x",
            notes=f"median of {runs} run(s); CPU {cpu['raw']:.2f} s; python, the openai import and "
            f"{ITEMS} SDK calls against the same server, no Django or llmapp",
            extra={"wall_s": [f.wall_s for f in figures["raw"]]},
        ),
    ]


def _memory(workspace, quick):
    single = run(
        [sys.executable, str(MANAGE), "llm", "summarize", "--message", "hi"],
        env=workspace.env(workspace.fresh_database("memory-single")),
    )
    if single.returncode:
        raise RuntimeError(f"manage.py llm failed:\n{single.stderr}")
    variants = [("null", MEMORY_ITEMS, NULL)]
    if not quick:
        variants.append(("database", DATABASE_MEMORY_ITEMS, {}))
    results = []
    for stream, items, variables in variants:
        source = write_input(workspace.path / f"memory-{items}.jsonl", items)
        output = workspace.path / f"memory-{stream}.out.jsonl"
        finished = run(
            cli(source, output), env=workspace.env(workspace.fresh_database(f"memory-{stream}"), **variables)
        )
        check_output(finished, output, items, "default")
        results.append(
            Result(
                NAME,
                f"peak RSS, {items:,} items on preview, --concurrency {CONCURRENCY}, event stream {stream}",
                finished.max_rss_mb,
                single.max_rss_mb,
                "MB",
                finished.max_rss_mb,
                "MB",
                target=MEMORY_TARGET_MB if items == MEMORY_ITEMS else None,
                strict=True,
                notes=f"baseline: peak RSS of one `llm summarize --message hi`; the run took "
                f"{finished.wall_s:.1f} s ({items / finished.wall_s:,.0f} items/s)"
                + (
                    ""
                    if items == MEMORY_ITEMS
                    else f"; {items:,} items, not {MEMORY_ITEMS:,}: each event is a SQLite commit"
                ),
                extra={"wall_s": finished.wall_s, "items": items},
            )
        )
    return results
