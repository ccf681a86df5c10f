"""Under load: an async Django view on uvicorn calling acomplete_prompt, against the raw SDK.

Two uvicorn processes (one worker, ``--loop asyncio``, no access log) serve
bench/webapp.py on the same database: the llmapp one is loaded on ``/llm``, which
awaits ``acomplete_prompt`` with the default ``database`` event stream, and the other
on ``/raw``, the same view awaiting a raw ``openai.AsyncOpenAI``. The fake OpenAI
server (its own process) answers every call after 50 ms, with a thread per
connection. The load (bench/loadgen.py, its own process) keeps 50 keep-alive
connections busy for a bounded time; the two servers take turns, round by round, the
order alternating. Figures, on SQLite and on PostgreSQL:

- requests per second of the llmapp view over the raw view's: the median of the
  rounds' ratios; the target (at least 0.95) applies on PostgreSQL;
- usage events recorded against requests served: after each round the count of rows
  may take up to 2 s to reach the number of 200 answers (a writer thread's queue
  drains); none may be missing;
- the peak number of database connections the llmapp server holds, sampled every
  50 ms during the load and the drain: in ``pg_stat_activity`` by the server's
  ``application_name``, or on SQLite as the server process's file descriptors open on
  the database file. At most 5.

First, the fake server alone is loaded the same way, to show that it answers fifty
concurrent calls in about 50 ms each rather than queueing them.
"""

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from .harness import (
    MESSAGE,
    PROMPT,
    FakeServer,
    Sampler,
    Unavailable,
    interleaved,
    median,
    open_fds_on,
    paired,
    pg_connect,
    settle,
    spawn,
    stop,
)
from .report import Result, skipped

NAME = "web"
CONNECTIONS = 50
DELAY = 0.05
RATE_TARGET = 0.95
CONNECTIONS_TARGET = 5
DRAIN_S = 2.0
SAMPLE_S = 0.05
# The servers' PostgreSQL role may hold this many connections at once, the sampler's aside:
# the server is shared, and a server that leaks one per request would starve everyone else.
# Enough to show a missed target; a peak at the cap means more were refused.
PG_CONNECTION_CAP = 4 * CONNECTIONS_TARGET


class WebServer:
    """One uvicorn process serving bench.webapp on a socket bound here (no port race)."""

    def __init__(self, workspace, env, name):
        self.name = name
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        self.port = listener.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile(dir=workspace.path, prefix=f"uvicorn-{name}-", delete=False)  # noqa: SIM115
        args = [sys.executable, "-m", "uvicorn", "bench.webapp:application", "--fd", str(listener.fileno())]
        args += ["--workers", "1", "--loop", "asyncio", "--no-access-log", "--lifespan", "off"]
        args += ["--log-level", "warning"]
        try:
            self.process = spawn(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=self.log,
                pass_fds=(listener.fileno(),),
            )
        finally:
            listener.close()
            self.log.close()
        self._wait_ready()

    @property
    def pid(self):
        return self.process.pid

    def url(self, path):
        return f"http://127.0.0.1:{self.port}/{path}"

    def _wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.url("ready"), timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"uvicorn ({self.name}) did not start:\n{self.output()}")

    def output(self):
        with open(self.log.name, encoding="utf-8", errors="replace") as log:
            return log.read()[-4000:]

    def stop(self):
        stop(self.process, grace=5.0)


def load(url, duration, body=None):
    """Run bench.loadgen against ``url``; return what it reports."""
    args = [sys.executable, "-m", "bench.loadgen", url, "--connections", str(CONNECTIONS)]
    args += ["--duration", str(duration)] + (["--json", body] if body else [])
    process = spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=duration + 120)
    finally:
        stop(process)
    if process.returncode:
        raise RuntimeError(f"bench.loadgen failed ({process.returncode}) on {url}:\n{err}")
    return json.loads(out)


class PostgresConnections:
    """Count the connections of one application_name to one database, on a connection of its own."""

    def __init__(self, database, application_name):
        self.database = database
        self.application_name = application_name
        self.connection = None

    def __call__(self):
        if self.connection is None:
            self.connection = pg_connect(self.database.admin_url)
        return self.connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND pid <> pg_backend_pid()",
            [self.application_name],
        ).fetchone()[0]

    def close(self):
        if self.connection is not None:
            self.connection.close()


def bench(workspace, quick=False):
    if importlib.util.find_spec("uvicorn") is None:
        reason = 'uvicorn is not installed: pip install -e ".[test]"'
        return _skipped("SQLite", reason) + _skipped("PostgreSQL", reason)
    duration = 3.0 if quick else 5.0
    rounds = 2 if quick else 4
    with FakeServer(delay=DELAY, every=True) as fake:
        results = [_fake_alone(fake, 1.0 if quick else 2.0)]
        databases = [("SQLite", lambda: workspace.sqlite("web"))]
        databases.append(("PostgreSQL", lambda: workspace.postgres(connections=PG_CONNECTION_CAP)))
        for label, database in databases:
            try:
                found = database()
            except Unavailable as exc:
                results += _skipped(label, exc)
                continue
            results += _serve(workspace, fake, found, duration, rounds)
    return results


def _fake_alone(fake, duration):
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": PROMPT}, {"role": "user", "content": MESSAGE}],
            "max_tokens": 300,
        }
    )
    found = load(f"{fake.base_url}/chat/completions", duration, body)
    ideal = CONNECTIONS / DELAY
    return Result(
        NAME,
        f"the fake provider alone: {CONNECTIONS} connections, {DELAY * 1000:.0f} ms replies",
        found["rate"],
        ideal,
        "req/s",
        found["rate"] / ideal,
        "x",
        notes=f"baseline: {CONNECTIONS} / {DELAY:g} s, the ideal; latency p50 {found['p50_ms']:.1f} ms, "
        f"p99 {found['p99_ms']:.1f} ms: it serves the connections side by side, not in turn; "
        f"{duration:g} s of load, {sum(found['errors'].values())} errors",
        extra=found,
    )


def _names(label):
    return (
        f"uvicorn, {CONNECTIONS} connections, async view: acomplete_prompt vs raw AsyncOpenAI, "
        f"requests/s, events database ({label})",
        f"usage events recorded vs requests served ({label})",
        f"peak database connections of the llmapp server ({label})",
    )


def _skipped(label, reason):
    rate, events, connections = _names(label)
    return [
        skipped(
            NAME,
            rate,
            reason,
            unit="req/s",
            value_unit="x",
            target=RATE_TARGET if label == "PostgreSQL" else None,
            at_least=True,
        ),
        skipped(NAME, events, reason, unit="events", value_unit="", target=0),
        skipped(NAME, connections, reason, unit="connections", value_unit="", target=CONNECTIONS_TARGET),
    ]


def _serve(workspace, fake, database, duration, rounds):
    env = workspace.env(
        database,
        DJANGO_SETTINGS_MODULE="bench.websettings",
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="sk-bench",
    )
    servers = {}
    connection_counters = []
    try:
        for name in ("llm", "raw"):
            application_name = f"llmapp-bench-{name}-{os.getpid()}"
            servers[name] = WebServer(workspace, env | {"BENCH_APPLICATION_NAME": application_name}, name)
            if database.is_sqlite:
                pid = servers[name].pid
                counter = lambda pid=pid: open_fds_on(pid, database.path)  # noqa: E731
            else:
                counter = PostgresConnections(database, application_name)
                connection_counters.append(counter)
            servers[name].connections = counter
        llm, raw = servers["llm"], servers["raw"]

        # Warm both up, untimed: imports, the SDK clients, the database connections.
        before = database.count_events()
        warm = load(llm.url("llm"), 1.0)
        settle(lambda: database.count_events() - before, warm["ok"], timeout=DRAIN_S)
        load(raw.url("raw"), 1.0)

        def llm_round():
            before = database.count_events()
            with Sampler(llm.connections, SAMPLE_S) as sampler:
                found = load(llm.url("llm"), duration)
                events, drain_s = settle(
                    lambda: database.count_events() - before, found["ok"], timeout=DRAIN_S
                )
            return found | {"events": events, "drain_s": drain_s, "peak": sampler.peak or 0}

        def raw_round():
            with Sampler(raw.connections, SAMPLE_S) as sampler:
                found = load(raw.url("raw"), duration)
            return found | {"peak": sampler.peak or 0}

        figures = interleaved({"llm": llm_round, "raw": raw_round}, rounds)
    finally:
        for server in servers.values():
            server.stop()
        for counter in connection_counters:
            counter.close()
    logs = {name: server.output().strip() for name, server in servers.items()}
    return _results(database.label, figures, duration, rounds, logs)


def _results(label, figures, duration, rounds, logs):
    llm, raw = figures["llm"], figures["raw"]
    llm_rates = [found["rate"] for found in llm]
    raw_rates = [found["rate"] for found in raw]
    ratio, spread = paired(llm_rates, raw_rates)
    served = sum(found["ok"] for found in llm)
    recorded = sum(found["events"] for found in llm)
    errors = {name: sum(sum(found["errors"].values()) for found in figures[name]) for name in figures}
    drain = max(found["drain_s"] for found in llm)
    peak = max(found["peak"] for found in llm)
    raw_peak = max(found["peak"] for found in raw)
    rate_name, events_name, connections_name = _names(label)
    how = f"{rounds} interleaved rounds of {duration:g} s"
    p50, p99 = (
        {name: median([f[key] for f in figures[name]]) for name in figures} for key in ("p50_ms", "p99_ms")
    )
    latency = (
        f"latency p50 {p50['llm']:.0f} ms vs {p50['raw']:.0f} ms raw, "
        f"p99 {p99['llm']:.0f} ms vs {p99['raw']:.0f} ms raw"
    )
    if label == "SQLite":
        counted = "file descriptors of the server process on the SQLite file"
    else:
        counted = f"its rows in pg_stat_activity (its role may hold {PG_CONNECTION_CAP}"
        counted += ": it reached the cap, and more were refused)" if peak >= PG_CONNECTION_CAP else ")"
    return [
        Result(
            NAME,
            rate_name,
            median(llm_rates),
            median(raw_rates),
            "req/s",
            ratio,
            "x",
            target=RATE_TARGET if label == "PostgreSQL" else None,
            at_least=True,
            notes=f"{how}; {spread}; {latency}; errors: {errors['llm']} llmapp, {errors['raw']} raw"
            + "".join(
                f"; the {name} server's last log line: {logs[name].splitlines()[-1][:200]}"
                for name in figures
                if errors[name] and logs[name]
            ),
            extra={"llm": llm, "raw": raw, "logs": {name: log[-4000:] for name, log in logs.items()}},
        ),
        Result(
            NAME,
            events_name,
            recorded,
            served,
            "events",
            abs(served - recorded),
            "",
            target=0,
            notes=f"{recorded} events for {served} answers over {rounds} rounds, each counted at most "
            f"{DRAIN_S:g} s after its load ended (the longest wait {drain:.2f} s); value: how many differ",
        ),
        Result(
            NAME,
            connections_name,
            peak,
            raw_peak,
            "connections",
            peak,
            "",
            target=CONNECTIONS_TARGET,
            notes=f"sampled every {SAMPLE_S * 1000:.0f} ms during each load and drain: {counted}; "
            "baseline: the raw server's",
        ),
    ]
