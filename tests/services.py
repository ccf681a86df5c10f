"""Reach the machine's Redis and PostgreSQL, or say why a test cannot run.

Where ``LLM_REQUIRE_SERVICES=1`` (CI), a missing service fails the test instead of
skipping it, so that a green run cannot hide an untested path.
"""

import os
import socket

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
