"""Real RQ workers for tests: a Redis server, worker processes, and a database they share.

Not fakes, strictly, but what a test needs to run django-tasks-rq for real:

- ``redis_url``: the machine's Redis on 127.0.0.1:6379, else one started here from
  ``redis-server``, else a skip (a failure under LLM_REQUIRE_SERVICES=1, as in CI);
- ``shared_database``: the test's database as other processes can open it;
- ``rq_workers``: ``manage.py rqworker`` processes on a queue of their own, with
  tests/settings_rq.py; always stopped, and their queue's keys deleted, afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import DEFAULT_DB_ALIAS, connections

ROOT = Path(__file__).resolve().parent.parent.parent
REDIS_ADDRESS = ("127.0.0.1", 6379)
#: The settings a worker must share with the test process, passed to tests/settings_rq.py.
SHARED_SETTINGS = ("LLM_PROVIDERS", "LLM_USECASES", "LLM_BATCH_QUEUE", "TASKS", "RQ_QUEUES", "RQ")
DATABASE_KEYS = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")
# RQ's default Worker forks a process per job, which then imports the provider's SDK
# afresh (half a second for openai); SimpleWorker runs the jobs in the worker itself.
WORKER_CLASS = "rq.worker.SimpleWorker"


def services_required() -> bool:
    """Whether a missing service fails the test rather than skipping it (CI sets this)."""
    return os.environ.get("LLM_REQUIRE_SERVICES", "") == "1"


def missing_service(reason: str) -> None:
    if services_required():
        pytest.fail(f"{reason}, and LLM_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


def _reachable(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _own_redis(folder: Path) -> Iterator[str]:
    """Run a throwaway redis-server on a free port of 127.0.0.1; yield its URL."""
    port = _free_port()
    # No persistence: the server and its data go when the test run ends.
    options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(
        [shutil.which("redis-server"), *options, "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _reachable(("127.0.0.1", port)):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(server)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """The URL of a Redis server on 127.0.0.1 that the workers and the test share."""
    host, port = REDIS_ADDRESS
    if _reachable(REDIS_ADDRESS):
        yield f"redis://{host}:{port}/0"
    elif shutil.which("redis-server"):
        with _own_redis(tmp_path_factory.mktemp("redis")) as url:
            yield url
    else:
        missing_service(f"no Redis server on {host}:{port} and no redis-server to start one")


@pytest.fixture
def shared_database(transactional_db, migrated_database, tmp_path) -> Iterator[dict]:
    """Return the settings of the test's database, which worker processes can open too.

    PostgreSQL (DATABASE_URL): the test database itself. SQLite: the test database lives in
    this process's memory, so the test moves to a migrated file for its duration. Either
    way the test commits (``transactional_db``), so that the workers see its rows.
    """
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.vendor != "sqlite" or not connection.is_in_memory_db():
        yield {key: connection.settings_dict[key] for key in DATABASE_KEYS}
        return
    path = tmp_path / "shared.sqlite3"
    shutil.copyfile(migrated_database, path)
    # Several writing processes: wait for a lock rather than fail at once.
    options = {**connection.settings_dict["OPTIONS"], "timeout": 30}
    settings_dict = {**connection.settings_dict, "NAME": str(path), "OPTIONS": options}
    on_file = type(connection)(settings_dict, alias=DEFAULT_DB_ALIAS)
    with on_file.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writers
    connections[DEFAULT_DB_ALIAS] = on_file
    try:
        yield {key: settings_dict[key] for key in DATABASE_KEYS}
    finally:
        connections[DEFAULT_DB_ALIAS] = connection
        on_file.close()


def unique_queue_name() -> str:
    """A queue no earlier run can have left jobs in."""
    return f"llmapp-test-{uuid.uuid4().hex[:12]}"


class Workers:
    """``manage.py rqworker`` processes on one queue, their logs kept for failure messages."""

    def __init__(self, queue: str, redis_url: str, database: dict, folder: Path) -> None:
        self.queue = queue
        self.redis_url = redis_url
        self.database = database
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, count: int, settings) -> None:
        """Start ``count`` workers sharing the database and the SHARED_SETTINGS of ``settings``."""
        shared = {name: getattr(settings, name) for name in SHARED_SETTINGS}
        env_file = self.folder / "empty.env"
        env_file.write_text("")
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("LLM_", "OPENAI_", "SENTRY_", "DJANGO_", "DATABASE_URL"))
        }
        env |= {
            "DJANGO_SETTINGS_MODULE": "tests.settings_rq",
            "LLM_ENV_FILE": str(env_file),
            "LLM_TEST_SHARED_SETTINGS": json.dumps({**shared, "DATABASES": {"default": self.database}}),
        }
        for number in range(1, count + 1):
            log = self.folder / f"worker-{number}.log"
            options = ["--name", f"{self.queue}-{number}", "--worker-class", WORKER_CLASS]
            with open(log, "w") as output:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, str(ROOT / "manage.py"), "rqworker", self.queue, *options],
                        cwd=ROOT,
                        env=env,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                    )
                )
            self.logs.append(log)

    def check_alive(self) -> None:
        """Fail with a worker's log if it has exited."""
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                pytest.fail(f"RQ worker exited with {process.returncode}:\n{self.tail(log)}")

    def tail(self, log: Path, lines: int = 30) -> str:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def report(self) -> str:
        """The end of every worker's log, for an assertion message."""
        return "\n".join(f"--- {log.name}\n{self.tail(log)}" for log in self.logs)

    def redis(self):
        from redis import Redis

        return Redis.from_url(self.redis_url)

    def jobs_done(self) -> dict[str, int]:
        """How many jobs each live worker finished, by worker name."""
        from rq import Queue, Worker

        redis = self.redis()
        workers = Worker.all(connection=redis, queue=Queue(self.queue, connection=redis))
        return {worker.name: worker.successful_job_count for worker in workers}

    def failed_jobs(self) -> list[str]:
        """The failed jobs' errors, as RQ recorded them."""
        from rq import Queue
        from rq.job import Job

        redis = self.redis()
        registry = Queue(self.queue, connection=redis).failed_job_registry
        jobs = Job.fetch_many(registry.get_job_ids(), connection=redis)
        return [job.exc_info or job.id for job in jobs if job is not None]

    def stop(self) -> None:
        """Stop every worker (a warm shutdown, then a kill) and delete the queue's keys."""
        for process in self.processes:
            stop(process)
        self.delete_queue()

    def delete_queue(self) -> None:
        from rq import Queue

        redis = self.redis()
        queue = Queue(self.queue, connection=redis)
        job_ids = set(queue.get_job_ids())
        for registry in (
            queue.started_job_registry,
            queue.finished_job_registry,
            queue.failed_job_registry,
            queue.deferred_job_registry,
            queue.scheduled_job_registry,
            queue.canceled_job_registry,
        ):
            job_ids.update(registry.get_job_ids(cleanup=False))
        for job_id in job_ids:
            redis.delete(f"rq:job:{job_id}", f"rq:results:{job_id}", f"rq:job:{job_id}:dependents")
        keys = list(redis.scan_iter(match=f"*{self.queue}*"))  # the queue, its registries, its workers
        if keys:
            redis.delete(*keys)
        redis.srem(Queue.redis_queues_keys, queue.key)


def stop(process: subprocess.Popen, timeout: float = 10) -> None:
    """Ask ``process`` to stop, then kill it if it has not within ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def rq_workers(redis_url, shared_database, tmp_path) -> Iterator[Workers]:
    """Workers on a queue of their own; call ``.start(count, settings)``.

    They stop before the test's database is flushed or moved back: this fixture needs it.
    """
    workers = Workers(unique_queue_name(), redis_url, shared_database, tmp_path)
    try:
        yield workers
    finally:
        workers.stop()
