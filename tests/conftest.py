import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.core.cache import caches
from django.db.backends.signals import connection_created

from tests.environment import developer_variables, isolated_environ
from tests.fakes.openai_server import FakeOpenAIServer, fake_openai  # noqa: F401
from tests.fakes.sentry_ingest import sentry_ingests  # noqa: F401
from tests.services import CACHE_KINDS, cache_of_kind, reachable

ROOT = Path(__file__).resolve().parent.parent
# Shaped like a real key so that key-shaped redaction is exercised too.
API_KEY = "sk-test-9f8e7d6c5b4a39281706SECRET"


@pytest.fixture(scope="session", autouse=True)
def _writers_let_go_of_the_test_database(django_db_setup, django_db_blocker):
    """Stop the usage writers before the test database is dropped: each holds a connection."""
    yield
    from llmapp import conf

    with django_db_blocker.unblock():
        conf.reset_all()


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch):
    """No test sees the developer's own keys, use-case overrides or Sentry DSN, nor passes them on."""
    for name in developer_variables():
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _empty_caches():
    """Circuit-breaker state lives in the cache: no test may inherit another's."""
    for cache in caches.all():
        cache.clear()


@pytest.fixture
def openai_provider(settings, fake_openai):  # noqa: F811
    """Point an 'openai' provider at the fake OpenAI server; return the server."""
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {
            "BACKEND": "llmapp.providers.openai.OpenAIProvider",
            "OPTIONS": {"api_key": API_KEY, "base_url": fake_openai.base_url, "timeout": 3},
        },
    }
    return fake_openai


@pytest.fixture(params=CACHE_KINDS)
def limits_cache(request, settings):
    """LLM_LIMITS_CACHE on a local-memory cache, or on a namespace of the machine's Redis."""
    with cache_of_kind(request.param, settings, "limits"):
        settings.LLM_LIMITS_CACHE = "limits"
        yield request.param


def manage_env(database, env_file, env=None):
    """The environment of a manage.py subprocess, isolated from the developer's shell and .env."""
    full_env = isolated_environ()
    full_env |= {"LLM_ENV_FILE": str(env_file), "DATABASE_URL": f"sqlite:///{database}"}
    return full_env | (env or {})


def run_manage(*args, database, env_file, env=None, input=None, timeout=60):
    """Run manage.py in a subprocess as a user would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        capture_output=True,
        text=True,
        env=manage_env(database, env_file, env),
        input=input,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def closes():
    """The names of the threads that closed a database connection, in the order they did."""
    closed, wrapped = [], []

    def on_connect(sender, connection, **kwargs):
        if "close" in vars(connection):  # counted already: this wrapper connected again
            return
        close = connection.close

        def counted_close():
            time.sleep(0.02)  # a close takes a moment (a round trip): one not waited for shows
            closed.append(threading.current_thread().name)
            close()

        # An in-memory test database ignores close(): what counts is that it was called.
        connection.close = counted_close
        wrapped.append(connection)

    connection_created.connect(on_connect)
    yield closed
    connection_created.disconnect(on_connect)
    for connection in wrapped:  # the wrappers outlive the test: each thread keeps its own
        del connection.close


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory):
    """A SQLite file that `manage.py migrate` has run on, made once per test run."""
    folder = tmp_path_factory.mktemp("migrated")
    env_file = folder / "empty.env"
    env_file.write_text("")
    database = folder / "db.sqlite3"
    result = run_manage("migrate", "-v0", database=database, env_file=env_file)
    assert result.returncode == 0, result.stderr
    return database


@pytest.fixture
def manage(tmp_path, migrated_database):
    """Run manage.py in a subprocess on a fresh copy of the migrated database."""
    env_file = tmp_path / "test.env"
    env_file.write_text("")
    database = tmp_path / "db.sqlite3"
    shutil.copyfile(migrated_database, database)

    def run(*args, **kwargs):
        return run_manage(*args, database=database, env_file=env_file, **kwargs)

    run.database = database
    run.env_file = env_file
    run.env = lambda env=None: manage_env(database, env_file, env)
    return run


@pytest.fixture
def runserver(manage):
    """``manage.py runserver`` on the ``manage`` fixture's database file, as an operator runs it."""

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runserver", f"127.0.0.1:{port}", "--noreload"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=manage.env(),
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while not reachable("127.0.0.1", port):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def two_servers(settings):
    """Aliases "fast" and "slow", each an OpenAI-compatible server of its own."""
    with FakeOpenAIServer() as fast, FakeOpenAIServer() as slow:
        settings.LLM_PROVIDERS = {
            **settings.LLM_PROVIDERS,
            **{
                alias: {
                    "BACKEND": "llmapp.providers.openai.OpenAIProvider",
                    "OPTIONS": {"api_key": API_KEY, "base_url": server.base_url, "model": f"{alias}-model"},
                }
                for alias, server in (("fast", fast), ("slow", slow))
            },
        }
        yield fast, slow
