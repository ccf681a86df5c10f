"""What the benchmarks share: a workspace, its databases, child processes, samplers, medians."""

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.environment import ISOLATED_VARIABLES, isolated_environ

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "manage.py"
#: The PostgreSQL server the benchmarks create their database on, by a URL of a database
#: that exists there (it is only used to create and drop ``llmapp_bench_<pid>``).
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
EVENTS_TABLE = "llmapp_completionevent"
#: Connections the server must have free beyond what a benchmark opens, for everyone else.
SPARE_CONNECTIONS = 10
#: The most a bench.child process may hold: its thread, an executor's and a writer's, with room.
CHILD_CONNECTIONS = 10

#: The use case the per-call, async and web benchmarks call on the openai provider.
USECASE = "bench-openai"
PROMPT = "You summarize text. Write a faithful, concise summary of the user's message."
MESSAGE = (
    "Checkout has timed out for Canadian customers since Tuesday's deploy. Support has forty "
    "tickets. A rollback fixed it for one customer."
)


class Unavailable(Exception):
    """Something a benchmark needs (PostgreSQL) is missing: its rows are reported as skipped."""


# -- child processes ---------------------------------------------------------------

_children = set()


def spawn(args, **kwargs):
    """Start ``args`` in ROOT in a process group of its own, killed by ``kill_children()``.

    Its own group, so that a Ctrl-C meant for the benchmark does not reach it half-way
    through a measurement, and so that it dies whole, with any process it started.
    """
    process = subprocess.Popen(args, cwd=kwargs.pop("cwd", ROOT), start_new_session=True, **kwargs)
    _children.add(process)
    return process


def stop(process, grace=5.0, sig=signal.SIGTERM):
    """Send ``sig`` to the process group of ``process``; SIGKILL it after ``grace`` seconds."""
    try:
        if process.poll() is not None:
            return  # it exited by itself: its group id may already be another's
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
        # SIGKILL what is left of the group: it, or what it started and it did not stop.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        _children.discard(process)


def kill_children():
    """Kill every child process still running: the end of a run, or a Ctrl-C."""
    for process in list(_children):
        stop(process, grace=2.0)


# -- databases -----------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """A migrated database that benchmark processes use: a label, its URL, and for SQLite its file.

    On PostgreSQL, ``url`` connects as a role of the run's own, whose CONNECTION LIMIT
    bounds what the measured processes may hold; ``admin_url``, as the server's own
    user, is what the benchmark counts and samples with, outside that limit.
    """

    label: str
    url: str
    path: Path | None = None
    admin_url: str | None = None

    @property
    def is_sqlite(self):
        return self.path is not None

    def count_events(self):
        """Return how many usage events the database holds."""
        query = f"SELECT count(*) FROM {EVENTS_TABLE}"
        if self.is_sqlite:
            with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as connection:
                return connection.execute(query).fetchone()[0]
        with pg_connect(self.admin_url or self.url) as connection:
            return connection.execute(query).fetchone()[0]


def sqlite_database(path):
    return Database("SQLite", f"sqlite:///{path}", Path(path))


def pg_connect(url, **kwargs):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5, **kwargs)


def pg_free_connections(url):
    """Return how many more client connections the PostgreSQL server at ``url`` accepts."""
    with pg_connect(url) as connection:
        return connection.execute(
            "SELECT current_setting('max_connections')::int "
            "- current_setting('superuser_reserved_connections')::int "
            "- (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()[0]


def shown_url(url):
    """Return ``url`` without its password, to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


class Workspace:
    """A temporary folder with an empty env file, a SQLite database migrated once and, on
    first use, a PostgreSQL database and role of this run's own; ``close()`` removes them all."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="llmapp-bench-"))
        self.env_file = self.path / "empty.env"
        self.env_file.write_text("")
        self._migrated = None
        self._postgres = None
        self._postgres_error = None
        self._postgres_name = None

    def close(self):
        kill_children()
        try:
            if self._postgres_name:
                self._drop_postgres()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)

    def env(self, database=None, **variables):
        """The environment of a manage.py child: isolated, on ``database``.

        ``database`` is a Database, a SQLite file, or None for a copy of the migrated SQLite file.
        """
        if database is None:
            database = self.migrated()
        url = database.url if isinstance(database, Database) else f"sqlite:///{database}"
        env = isolated_environ()
        env |= {
            "LLM_ENV_FILE": str(self.env_file),
            "DATABASE_URL": url,
            "DJANGO_SETTINGS_MODULE": "settings.dev",
        }
        return env | variables

    def migrated(self):
        """Return the path of the database that `manage.py migrate` ran on (run it the first time)."""
        if self._migrated is None:
            database = self.path / "migrated.sqlite3"
            self._migrate(self.env(database))
            self._migrated = database
        return self._migrated

    def fresh_database(self, name):
        """Return a new copy of the migrated database, so runs don't see each other's rows."""
        copy = self.path / f"{name}.sqlite3"
        shutil.copyfile(self.migrated(), copy)
        return copy

    def sqlite(self, name):
        """Return a fresh SQLite Database (a copy of the migrated file)."""
        return sqlite_database(self.fresh_database(name))

    def postgres(self, connections):
        """Return this run's migrated PostgreSQL Database, its role allowed ``connections`` at once.

        The server is shared: the role's CONNECTION LIMIT keeps what the measured processes
        open (a leak included) from starving anyone else. Raise Unavailable when the server
        cannot be reached, or has fewer than ``connections`` free beyond a margin for others.
        """
        import psycopg

        if self._postgres_error:
            raise Unavailable(self._postgres_error)
        try:
            if self._postgres is None:
                self._postgres = self._create_postgres()
            free = pg_free_connections(POSTGRES_URL)
            if free < connections + SPARE_CONNECTIONS:
                raise Unavailable(
                    f"the PostgreSQL server has {free} connections free; this needs {connections} "
                    f"and leaves {SPARE_CONNECTIONS} for others"
                )
            with pg_connect(POSTGRES_URL) as connection:
                connection.execute(f'ALTER ROLE "{self._postgres_name}" CONNECTION LIMIT {int(connections)}')
        except psycopg.Error as exc:
            raise Unavailable(f"PostgreSQL at {shown_url(POSTGRES_URL)}: {exc}") from None
        return self._postgres

    def _create_postgres(self):
        import psycopg

        name = f"llmapp_bench_{os.getpid()}"
        try:
            with pg_connect(POSTGRES_URL) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                connection.execute(f'DROP ROLE IF EXISTS "{name}"')
                connection.execute(f'CREATE ROLE "{name}" LOGIN CONNECTION LIMIT 5')
                self._postgres_name = name
                connection.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
        except psycopg.Error as exc:
            self._postgres_error = f"PostgreSQL at {shown_url(POSTGRES_URL)} (BENCH_POSTGRES_URL): {exc}"
            raise Unavailable(self._postgres_error) from None
        admin = urlsplit(POSTGRES_URL)._replace(path=f"/{name}")
        host = admin.netloc.rpartition("@")[2]
        database = Database(
            "PostgreSQL", admin._replace(netloc=f"{name}@{host}").geturl(), admin_url=admin.geturl()
        )
        try:
            self._migrate(self.env(database))
        except RuntimeError as exc:
            self._postgres_error = str(exc)
            raise Unavailable(self._postgres_error) from None
        return database

    def _drop_postgres(self):
        name, self._postgres_name = self._postgres_name, None
        with pg_connect(POSTGRES_URL) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'DROP ROLE IF EXISTS "{name}"')

    def _migrate(self, env):
        result = subprocess.run(
            [sys.executable, str(MANAGE), "migrate", "-v0"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode:
            raise RuntimeError(f"manage.py migrate failed:\n{result.stderr}")


# -- Django in this process ----------------------------------------------------------

_django_ready = False


def setup_django(workspace=None):
    """Start Django in this process on bench.settings, once.

    With ``workspace``, on a migrated SQLite copy; without, on the environment's
    DATABASE_URL (a child started by ``in_child``).
    """
    global _django_ready
    if _django_ready:
        return
    if workspace is not None:
        for key in [key for key in os.environ if key.startswith(ISOLATED_VARIABLES)]:
            del os.environ[key]
        os.environ |= {
            "LLM_ENV_FILE": str(workspace.env_file),
            "DATABASE_URL": f"sqlite:///{workspace.fresh_database('inprocess')}",
            "DJANGO_SETTINGS_MODULE": "bench.settings",
        }
    import django

    from llmproject.runner import configure

    configure(default_settings="bench.settings", root=ROOT)
    django.setup()
    _django_ready = True


def database_label():
    """Say which database this process's Django uses: SQLite or PostgreSQL."""
    from django.db import connection

    return {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(connection.vendor, connection.vendor)


def flush_events(timeout=10.0):
    """Wait until this process's usage events are stored: ``llmapp.eventstream.flush`` if llmapp has it.

    An llmapp without it inserts each event before the call returns: nothing to wait for.
    Return whether there was a flush to call.
    """
    from llmapp import eventstream

    flush = getattr(eventstream, "flush", None)
    if flush is None:
        return False
    flush(timeout=timeout)
    return True


def count_events():
    """Return how many usage events this process's database holds."""
    from llmapp.models import CompletionEvent

    return CompletionEvent.objects.count()


def in_child(workspace, database, function, *, quick):
    """Run ``function`` (``"module:name"``, taking ``quick``) in a child process on ``database``.

    The child starts Django on bench.settings with DATABASE_URL set to ``database``; the
    Results it returns come back through a JSON file (see bench/child.py).
    """
    from .report import Result

    fd, name = tempfile.mkstemp(dir=workspace.path, suffix=".json")
    os.close(fd)
    output = Path(name)
    env = workspace.env(database, DJANGO_SETTINGS_MODULE="bench.settings")
    args = [sys.executable, "-m", "bench.child", function, str(output)] + (["--quick"] if quick else [])
    with tempfile.TemporaryFile() as err:
        process = spawn(args, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            process.wait(timeout=600)
        finally:
            stop(process)
        err.seek(0)
        log = err.read().decode(errors="replace")
    if process.returncode:
        raise RuntimeError(
            f"bench.child {function} on {database.label} failed ({process.returncode}):\n{log}"
        )
    return [Result.from_dict(data) for data in json.loads(output.read_text())]


# -- timed runs ----------------------------------------------------------------------


@dataclass
class Finished:
    returncode: int
    wall_s: float
    max_rss_mb: float
    user_s: float
    system_s: float
    stdout: str
    stderr: str
    #: (seconds since its start, what ``sample(pid)`` returned), when run() was given one.
    samples: list | None = None


# Starts the measured command and writes its wall time and rusage as JSON to the fd
# in argv[1].
# A child's peak RSS (ru_maxrss) starts from the RSS of the process that forked it,
# and this one is ~10 MB where the benchmark's own process is many times that.
LAUNCHER = """
import json, os, sys, time
fd = int(sys.argv[1])
os.set_inheritable(fd, False)
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with os.fdopen(fd, "w") as report:
    json.dump({"code": os.waitstatus_to_exitcode(status), "wall": wall, "rss_kib": usage.ru_maxrss,
               "user": usage.ru_utime, "system": usage.ru_stime}, report)
"""


def run(args, *, env, timeout=600, sample=None, sample_every=0.1):
    """Run ``args`` in ROOT; return its wall time, CPU time and its own peak RSS.

    The command is started by a small launcher process, which times it and collects
    its rusage with ``wait4``, so the figures are the command's alone. With
    ``sample``, ``sample(pid)`` is called every ``sample_every`` seconds while the
    command runs, from here; ``samples`` holds (seconds since its start, what it returned).
    """
    read, write = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = spawn(
            [sys.executable, "-S", "-c", LAUNCHER, str(write), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            pass_fds=(write,),
        )
        os.close(write)
        samples = None
        try:
            with os.fdopen(read) as report:
                if sample:
                    samples = _sample_command(process, sample, sample_every, timeout)
                process.wait(timeout=timeout)
                figures = json.loads(report.read() or "null")
        finally:
            stop(process, grace=0)  # on a timeout or a Ctrl-C; a no-op once it has exited
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if process.returncode or figures is None:
        raise RuntimeError(f"the launcher failed ({process.returncode}) for {' '.join(args)}:\n{stderr}")
    return Finished(
        figures["code"],
        figures["wall"],
        figures["rss_kib"] / 1024,  # KiB on Linux
        figures["user"],
        figures["system"],
        stdout,
        stderr,
        samples,
    )


def _sample_command(launcher, sample, interval, timeout):
    """Return [(seconds, sample(pid))] of the launcher's child, every ``interval`` until it exits."""
    started = time.perf_counter()
    deadline = started + timeout
    pid = None
    while pid is None and launcher.poll() is None and time.perf_counter() < deadline:
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
            pid = int(children[0]) if children else None
        if pid is None:
            time.sleep(0.005)
    samples = []
    while pid is not None and launcher.poll() is None and time.perf_counter() < deadline:
        value = sample(pid)
        if value is None:
            break
        samples.append((time.perf_counter() - started, value))
        time.sleep(interval)
    return samples


def rss_mb(pid):
    """Return the resident set size of process ``pid`` in MB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def open_fds_on(pid, path):
    """Return how many file descriptors of process ``pid`` are open on the file ``path``."""
    target = str(path)
    count = 0
    directory = f"/proc/{pid}/fd"
    with contextlib.suppress(OSError):
        for fd in os.listdir(directory):
            with contextlib.suppress(OSError):
                if os.readlink(f"{directory}/{fd}") == target:
                    count += 1
    return count


class Sampler:
    """Call ``sample()`` every ``interval`` seconds on a thread while in the ``with`` block.

    ``values`` holds what it returned (None is skipped); ``peak`` the largest.
    """

    def __init__(self, sample, interval=0.05):
        self.sample = sample
        self.interval = interval
        self.values = []
        self.error = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def _run(self):
        while True:
            try:
                value = self.sample()
            except Exception as exc:  # the error is reported, and the sampling goes on
                self.error = exc
                value = None
            if value is not None:
                self.values.append(value)
            if self._stopping.wait(self.interval):
                return

    @property
    def peak(self):
        return max(self.values, default=None)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stopping.set()
        self._thread.join()


def settle(count, expected, timeout=2.0, interval=0.05):
    """Poll ``count()`` until it returns ``expected`` or ``timeout`` seconds pass.

    Return the last count and the seconds it took (``timeout`` when it never got there).
    """
    started = time.perf_counter()
    while True:
        found = count()
        waited = time.perf_counter() - started
        if found == expected:
            return found, waited
        if waited >= timeout:
            return found, timeout
        time.sleep(interval)


class FakeServer:
    """The tests' fake OpenAI server, in a child process of its own (see bench/fakeserver.py).

    In its own process it competes for no GIL with the client being measured, as a
    real server would not. ``every=True``: every reply waits ``delay`` seconds, however
    many there are; else only the first ``replies``.
    """

    def __init__(self, *, delay=0.0, replies=0, every=False):
        args = [sys.executable, "-m", "bench.fakeserver", "--delay", str(delay), "--replies", str(replies)]
        self.process = spawn(
            args + (["--every"] if every else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.base_url = self.process.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            stop(self.process)
            raise RuntimeError("the fake OpenAI server did not start")

    def stop(self):
        """Stop the server; return how many chat completions it served."""
        try:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
            served = self.process.stdout.read().strip()
            self.process.wait(timeout=10)
        finally:
            stop(self.process)
        return int(served) if served.isdigit() else None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc_info):
        if self.process.poll() is None:
            if exc_type is None:
                self.stop()
            else:
                stop(self.process, grace=1.0)


# -- figures -------------------------------------------------------------------------


def median(values):
    return statistics.median(values)


def paired(candidate, baseline):
    """Return the median of the rounds' ratios (candidate over baseline) and a note of their spread."""
    ratios = [c / b for c, b in zip(candidate, baseline, strict=True)]
    if len(ratios) == 1:
        return ratios[0], "one round"
    low, _, high = statistics.quantiles(ratios, n=4)
    return median(ratios), f"rounds' ratios: median {median(ratios):.3f}, IQR {low:.3f}-{high:.3f}"


def interleaved(candidates, rounds):
    """Run each of ``candidates`` (name -> callable returning a figure) once per round.

    The order rotates every round so that drift of the machine (another process, CPU
    frequency, caches) falls on all of them alike. Return name -> list of figures.
    """
    names = list(candidates)
    figures = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            figures[name].append(candidates[name]())
    return figures
