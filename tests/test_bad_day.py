"""A dependency that is down is a degraded feature, never an outage: as a user runs manage.py.

Each test runs a command on the offline preview provider while one dependency is
down (a closed port, a name that does not resolve, a malformed DSN) or hung (a black
hole: it accepts connections and never answers). The command answers, exits 0, and
says in one line what is wrong. Timeouts here only keep a regression from hanging
the suite; the bounds themselves are asserted in tests/test_bad_day_<dependency>.py.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import BlackHole, closed_port

ROOT = Path(__file__).resolve().parent.parent
PREVIEW = "[preview answer"


@pytest.fixture
def black_hole():
    with BlackHole() as hole:
        yield hole


def summarize(manage, env):
    result = manage("llm", "summarize", "-m", "hi", env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(PREVIEW)
    assert "Traceback" not in result.stderr
    return result.stderr.splitlines()


# --- the cache behind the circuit breaker -----------------------------------------------


def test_a_cache_that_refuses_connections(manage):
    [line] = summarize(manage, {"CACHE_URL": f"redis://127.0.0.1:{closed_port()}/0"})
    assert line.startswith("Cache 'default' is unavailable (")
    # The first feature to reach the cache says it: the overrides' version, checked on each call.
    assert "calls go on without the overrides state kept there" in line


def test_a_cache_that_never_answers(manage, black_hole):
    [line] = summarize(manage, {"CACHE_URL": f"redis://127.0.0.1:{black_hole.port}/0"})
    assert line.startswith("Cache 'default' is unavailable (no answer within 0.25s (LLM_CACHE_TIMEOUT))")


# --- Sentry -----------------------------------------------------------------------------


@pytest.mark.parametrize("dsn", ["not-a-dsn", "http://127.0.0.1:9/1"])  # no scheme; no public key
def test_a_malformed_sentry_dsn(manage, dsn):
    [line] = summarize(manage, {"SENTRY_DSN": dsn})
    assert line.startswith("Sentry is off: SENTRY_SDK_CONFIG['dsn'] is not a valid DSN (")


def test_manage_py_check_reports_a_malformed_sentry_dsn(manage):
    result = manage("check", env={"SENTRY_DSN": "not-a-dsn"})
    assert "Traceback" not in result.stderr
    assert "(llmapp.sentry.E001) SENTRY_SDK_CONFIG['dsn'] is not a valid Sentry DSN" in result.stderr
    assert result.returncode == 1


def test_wsgi_starts_with_a_malformed_sentry_dsn(manage):
    env = manage.env({"SENTRY_DSN": "not-a-dsn", "DJANGO_SECRET_KEY": "x" * 50, "DJANGO_ALLOWED_HOSTS": "x"})
    result = subprocess.run(
        [sys.executable, "-c", "from llmproject.wsgi import application\nprint('serving')"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "serving\n"
    assert "Traceback" not in result.stderr


def test_a_sentry_ingest_that_never_answers(manage, black_hole):
    dsn = f"http://publickey@127.0.0.1:{black_hole.port}"
    env = {"SENTRY_DSN": f"{dsn}/1", "SENTRY_RELAY_DSN": f"{dsn}/2", "SENTRY_TRACES_SAMPLE_RATE": "1.0"}
    # Not even the SDK's flush at exit waits for it again.
    assert not [line for line in summarize(manage, env) if "Sentry is attempting to send" in line]


# --- statsd -----------------------------------------------------------------------------


def test_a_statsd_host_that_does_not_resolve(manage):
    host = "no-such-host.invalid"  # .invalid never resolves (RFC 6761)
    env = {"LLM_METRICS_BACKEND": "llmapp.metrics.statsd.StatsdMetricsBackend", "STATSD_HOST": host}
    [line] = summarize(manage, env)
    assert f"cannot resolve the DogStatsD host {host!r}" in line
    assert "Set LLM_METRICS_OPTIONS['host'] (STATSD_HOST in the host project)" in line
