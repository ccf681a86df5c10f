"""A bad day for the cache behind the circuit breaker: refused, hung, forked; calls go on.

The cache is real (Django's RedisCache) and so are its failures: a closed port
refuses, a black hole accepts and never answers. The guard's clock is the test's,
so the back-off never depends on how fast this machine runs. (What a user of
manage.py sees is in tests/test_bad_day.py.)
"""

import asyncio
import logging
import os

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from llmapp import acomplete_prompt, complete_prompt, metrics
from llmapp.calls import sharedstate
from llmapp.calls.circuit import CACHE_ERRORS_METRIC, CACHE_SKIPPED_METRIC, CircuitBreaker
from llmapp.calls.service import plan_call
from llmapp.exceptions import ProviderError, ProviderTimeout
from llmapp.metrics import locmem as locmem_metrics
from llmapp.providers import locmem
from tests.services import BlackHole, closed_port, redis_namespace

CACHE = {"cache": "default"}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def redis_at(port):
    return {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{port}/0",
    }


@pytest.fixture
def counted(settings):
    """Metrics go to the locmem backend; return a function that counts one metric's sends."""
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.locmem.LocmemMetricsBackend"
    settings.LLM_METRICS_OPTIONS = {"prefix": ""}
    locmem_metrics.reset()

    def count(key, tags=CACHE):
        assert metrics.flush()
        return sum(
            amount
            for kind, name, amount, sent_tags in locmem_metrics.sent
            if (name, sent_tags) == (key, tags)
        )

    yield count
    locmem_metrics.reset()


@pytest.fixture
def clock():
    return FakeClock()


def use_cache(settings, clock, config, timeout=None):
    """Make ``config`` the default cache and give its guard the test's clock; return the guard."""
    settings.CACHES = {"default": config}
    if timeout is not None:
        settings.LLM_CACHE_TIMEOUT = timeout
    guard = sharedstate.guard("default")
    guard.clock = clock
    return guard


@pytest.fixture
def refused(settings, clock):
    return use_cache(settings, clock, redis_at(closed_port()))


@pytest.fixture
def black_hole(settings, clock):
    with BlackHole() as hole:
        use_cache(settings, clock, redis_at(hole.port), timeout=0.1)
        yield hole


def cache_log(caplog):
    return [record for record in caplog.records if record.name == "llmapp.sharedstate"]


# --- the call path ----------------------------------------------------------------------


@pytest.mark.django_db
def test_calls_go_on_without_the_circuit_when_its_cache_refuses(settings, refused, counted, caplog):
    settings.LLM_USECASE_OVERRIDES = False  # its version check would be the first operation to fail
    # With a working cache this breaker opens on the first failure and the call fails.
    # A new dict: changing the settings' own would outlive the test.
    test_provider = {**settings.LLM_PROVIDERS["test"], "CIRCUIT_BREAKER": {"FAILURES": 1}}
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "test": test_provider}
    for _ in range(2):
        locmem.queue(
            ProviderError("overloaded", provider="test", status_code=503, transient=True, retry_after=0)
        )

    completion = complete_prompt("summarize", "hi", provider="test", retries=2)

    assert (completion.text, completion.attempts) == ("locmem answer to: hi", 3)
    # The first operation (the model's circuit) failed; the cache was then skipped: the
    # provider's circuit, two failures (of the server: the provider's), one success.
    assert counted(CACHE_ERRORS_METRIC) == 1
    assert counted(CACHE_SKIPPED_METRIC) == 4
    [record] = cache_log(caplog)
    assert record.levelno == logging.WARNING and record.exc_info is None
    # redis-py retries a refused connection, sleeping in between: past LLM_CACHE_TIMEOUT.
    assert "Cache 'default' is unavailable (" in record.message


@pytest.mark.django_db(transaction=True)
def test_async_calls_go_on_when_the_cache_refuses(refused):
    async def call():
        try:
            return await acomplete_prompt("summarize", "hi", provider="test")
        finally:
            await sync_to_async(connections.close_all)()

    assert asyncio.run(call()).text == "locmem answer to: hi"


def test_a_passed_deadline_waits_for_no_cache(black_hole, counted, caplog):
    _, attempts = plan_call("summarize", "hi", provider="test", timeout=1)
    attempts.clock = lambda: attempts.deadline + 1  # the deadline has passed

    with pytest.raises(ProviderTimeout, match="deadline"):
        next(iter(attempts))

    assert black_hole.connections == 0  # the breaker did not even try the cache
    assert counted(CACHE_SKIPPED_METRIC) == 2  # the provider's circuit and the model's
    assert not cache_log(caplog)


def test_a_wait_cut_short_by_the_deadline_is_no_failure_of_the_cache(black_hole, settings, counted, caplog):
    settings.LLM_CACHE_TIMEOUT = 30
    state = sharedstate.get("default", "circuit")
    assert state.timeout == 30

    assert state.get_many(["a"], budget=0.05) is None  # waits 0.05s, not 30s

    guard = sharedstate.guard("default")
    assert not guard.down
    assert counted(CACHE_SKIPPED_METRIC) == 1 and counted(CACHE_ERRORS_METRIC) == 0
    assert not cache_log(caplog)


# --- the guard: bounded, backed off, logged once, counted -------------------------------


def test_a_hung_cache_costs_one_bounded_wait_then_is_skipped_until_retried(
    black_hole, clock, counted, caplog
):
    state = sharedstate.get("default", "circuit")
    assert state.timeout == 0.1  # LLM_CACHE_TIMEOUT

    assert state.get_many(["a", "b"]) is None
    assert black_hole.wait_for(1) == 1
    [record] = cache_log(caplog)
    assert "Cache 'default' is unavailable (no answer within 0.1s (LLM_CACHE_TIMEOUT))" in record.message
    assert f"tries the cache again in {sharedstate.RETRY_AFTER:g}s" in record.message

    # While it is down, nothing waits for it, and nothing is sent to it.
    assert state.incr("a") is None
    assert state.add("a", 1, default=True) is True
    assert state.delete_many(["a"]) is False
    assert black_hole.connections == 1
    assert counted(CACHE_ERRORS_METRIC) == 1 and counted(CACHE_SKIPPED_METRIC) == 3

    # After RETRY_AFTER one operation tries again, on a thread of its own: the first is still stuck.
    clock.advance(sharedstate.RETRY_AFTER)
    assert state.get("a", "default") == "default"
    assert black_hole.wait_for(2) == 2
    assert counted(CACHE_ERRORS_METRIC) == 2
    assert len(cache_log(caplog)) == 1  # counted, not logged again within LOG_INTERVAL

    clock.advance(sharedstate.LOG_INTERVAL)
    assert state.get("a") is None
    assert len(cache_log(caplog)) == 2
    assert "1 more failure(s) since the last report" in cache_log(caplog)[-1].message


def test_a_cache_that_comes_back_is_used_again(settings, clock, counted, caplog):
    caplog.set_level(logging.INFO, logger="llmapp.sharedstate")
    guard = use_cache(settings, clock, {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"})
    state = sharedstate.get("default", "circuit")

    def broken(cache):
        raise OSError("the cache is restarting")

    assert state.run(broken, default="fallback") == "fallback"
    assert guard.down
    assert state.run(lambda cache: "skipped", default="fallback") == "fallback"

    clock.advance(sharedstate.RETRY_AFTER)
    assert state.incr("counter") == 1
    assert not guard.down
    assert state.incr("counter") == 2
    assert counted(CACHE_ERRORS_METRIC) == 1 and counted(CACHE_SKIPPED_METRIC) == 1
    assert [record.levelname for record in cache_log(caplog)] == ["WARNING", "INFO"]
    assert "Cache 'default' answers again" in cache_log(caplog)[-1].message


def test_stuck_threads_are_bounded(black_hole, clock):
    state = sharedstate.get("default", "circuit")
    for _ in range(sharedstate.MAX_STUCK_THREADS + 2):
        state.get("a")
        clock.advance(sharedstate.RETRY_AFTER)
    # Each timed-out operation left a thread stuck in it; past the bound, none is started.
    assert sharedstate.guard("default").stuck == sharedstate.MAX_STUCK_THREADS
    assert black_hole.wait_for(sharedstate.MAX_STUCK_THREADS) == sharedstate.MAX_STUCK_THREADS


# --- real Redis: shared between breakers and across a fork ------------------------------


@pytest.fixture
def redis_cache(settings, clock):
    with redis_namespace() as namespace:
        use_cache(settings, clock, namespace.cache)
        yield namespace


def test_the_circuit_opens_and_closes_through_redis(redis_cache):
    breaker = CircuitBreaker("flaky", failures=2, cooldown=30)
    assert breaker.allow()
    assert breaker.record_failure() is False
    assert CircuitBreaker("flaky", failures=2, cooldown=30).record_failure() is True  # another call's view
    assert CircuitBreaker("flaky", failures=2, cooldown=30).allow() is False
    assert {key.rpartition(":")[2] for key in redis_cache.stored_keys()} == {"failures", "opened"}

    breaker.record_success()
    assert redis_cache.stored_keys() == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is not available here")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # the point
def test_a_forked_child_uses_the_cache_with_a_thread_of_its_own(redis_cache):
    state = sharedstate.get("default", "test")
    assert state.incr("forks") == 1  # the parent's cache thread exists before the fork

    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            status = 0 if sharedstate.get("default", "test").incr("forks") == 2 else 3
        finally:
            os._exit(status)

    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert state.incr("forks") == 3


# --- configuration ----------------------------------------------------------------------


def test_the_check_reports_a_bad_timeout_and_a_missing_cache(settings):
    assert sharedstate.check_shared_state() == []
    settings.LLM_CACHE_TIMEOUT = "fast"
    settings.LLM_CIRCUIT_BREAKER_CACHE = "circuits"
    assert [error.id for error in sharedstate.check_shared_state()] == [
        "llmapp.cache.E001",
        "llmapp.cache.E002",
    ]


def test_a_bad_timeout_falls_back_to_the_default(settings, caplog):
    settings.LLM_CACHE_TIMEOUT = 0
    assert sharedstate.get("default", "circuit").timeout == 0.25
    assert "LLM_CACHE_TIMEOUT is 0, not a positive number of seconds; using 0.25" in caplog.text
