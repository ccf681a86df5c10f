"""Reach the machine's Redis and PostgreSQL, or say why a test cannot run; make services fail.

Where ``LLM_REQUIRE_SERVICES=1`` (CI), a missing service fails the test instead of
skipping it, so that a green run cannot hide an untested path.

Redis is shared by every test run on the machine (and may be a developer's own): a
test takes a :func:`redis_namespace`, a key prefix of its own, and deletes only its
own keys. To stand in for a service that is down, :func:`closed_port` is a port
nothing listens on; for one that is hung, :class:`BlackHole` accepts connections and
never answers.
"""

import contextlib
import itertools
import os
import socket
import threading
import uuid
from dataclasses import dataclass

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def reachable(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_redis():
    """Return the Redis URL of the machine's server, or skip (fail in CI) when there is none."""
    if not reachable(REDIS_HOST, REDIS_PORT):
        missing(f"needs Redis on {REDIS_HOST}:{REDIS_PORT} (start redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing('needs the redis package: pip install -e ".[test]"')
    return f"redis://{REDIS_HOST}:{REDIS_PORT}"


def missing(reason):
    """Skip the test for ``reason``, or fail it where LLM_REQUIRE_SERVICES=1 (CI)."""
    if os.environ.get("LLM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"LLM_REQUIRE_SERVICES=1 but the test {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class RedisNamespace:
    """A key prefix of one test's own on the machine's Redis.

    ``url`` is a CACHE_URL for a manage.py child (``?key_prefix=``); ``cache`` a CACHES
    entry for this process. Both make Django prefix every key with ``prefix``.
    """

    location: str
    prefix: str

    @property
    def url(self):
        return f"{self.location}?key_prefix={self.prefix}"

    @property
    def env(self):
        """The environment of a manage.py child that shares its state in this namespace.

        With a longer LLM_CACHE_TIMEOUT than the 0.25 s default: on a loaded machine, a
        process's first operation (importing redis-py, connecting) can take longer, and the
        child would go on without the shared state, as it should when Redis is slow.
        """
        return {"CACHE_URL": self.url, "LLM_CACHE_TIMEOUT": "30"}

    @property
    def cache(self):
        return {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": self.location,
            "KEY_PREFIX": self.prefix,
        }

    def stored_keys(self):
        """Return this namespace's keys as Django wrote them (``<prefix>:<version>:<key>``), sorted."""
        import redis

        client = redis.Redis.from_url(self.location)
        try:
            return sorted(key.decode() for key in client.scan_iter(match=f"{self.prefix}:*", count=1000))
        finally:
            client.close()

    def delete(self):
        import redis

        client = redis.Redis.from_url(self.location)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@contextlib.contextmanager
def redis_namespace(database=0):
    """Yield a :class:`RedisNamespace` on the machine's Redis; delete its keys, and only its keys, after.

    Never flushes a database: other test runs, and a developer's own data, share it.
    """
    namespace = RedisNamespace(
        location=f"{require_redis()}/{database}", prefix=f"llmapp-test-{uuid.uuid4().hex[:16]}"
    )
    try:
        yield namespace
    finally:
        namespace.delete()


#: The two kinds of cache the shared-state features are tested on.
CACHE_KINDS = ("locmem", "redis")


@contextlib.contextmanager
def cache_of_kind(kind, settings, alias):
    """Configure ``CACHES[alias]`` as a local-memory cache, or as a namespace of the machine's
    Redis for ``kind`` "redis" (whose keys, and llmapp's threads on it, go after)."""
    if kind == "locmem":
        settings.CACHES = {
            **settings.CACHES,
            alias: {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        }
        yield
        return
    from llmapp.calls import sharedstate

    with redis_namespace() as namespace:
        settings.CACHES = {**settings.CACHES, alias: namespace.cache}
        yield
    sharedstate.reset()


def closed_port():
    """Return a port on 127.0.0.1 that nothing listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class BlackHole:
    """A TCP listener on 127.0.0.1 that accepts every connection and never answers: a hung service.

    Use as a context manager; ``connections`` counts what it accepted. Closing it
    closes the connections too, so that a client still waiting gets on.
    """

    def __init__(self):
        self._server = socket.create_server(("127.0.0.1", 0))
        self._accepted = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)

    @property
    def port(self):
        return self._server.getsockname()[1]

    @property
    def connections(self):
        with self._changed:
            return len(self._accepted)

    def wait_for(self, count, timeout=10):
        """Wait until ``count`` connections were accepted (a busy machine may lag); return the count."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._accepted) >= count, timeout)
            return len(self._accepted)

    def _accept(self):
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:  # closed
                return
            with self._changed:
                self._accepted.append(connection)
                self._changed.notify_all()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        # shutdown() wakes the accept() in the thread; close() alone may not.
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(timeout=5)
        with self._changed:
            for connection in self._accepted:
                connection.close()


POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432


def postgresql_database():
    """Create a PostgreSQL database of this test's own; return its DATABASES entry.

    Skips (fails in CI) when the machine's server or psycopg is missing.
    """
    if not reachable(POSTGRES_HOST, POSTGRES_PORT):
        missing(f"needs PostgreSQL on {POSTGRES_HOST}:{POSTGRES_PORT}")
    try:
        import psycopg
    except ImportError:
        missing('needs the psycopg package: pip install -e ".[test]"')
    name = f"llmapp_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(f"host={POSTGRES_HOST} user=postgres dbname=test", autocommit=True) as server:
        server.execute(f'CREATE DATABASE "{name}"')
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": "postgres",
        "HOST": POSTGRES_HOST,
        "PORT": str(POSTGRES_PORT),
        "OPTIONS": {"connect_timeout": 10},
    }


def drop_postgresql_database(database):
    """Drop a database made by postgresql_database(), and any test database made from it."""
    import psycopg

    with psycopg.connect(f"host={POSTGRES_HOST} user=postgres dbname=test", autocommit=True) as server:
        for name in (database["NAME"], f"test_{database['NAME']}"):
            server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_counter = itertools.count()
