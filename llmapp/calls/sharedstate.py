"""State shared by every worker through a Django cache that may fail: ``SharedState``.

The circuit breaker keeps its state in a cache so that every worker of a deployment
sees it; rate limits, budgets and a response cache would too. That state is an
optimisation, so a cache that is down or hung never fails a call (it fails open)::

    state = sharedstate.get("default", "circuit")  # the cache alias, and whose state it is
    state.get_many(keys)  # None when the cache failed
    state.incr(key)  # creates the counter; None when the cache failed
    state.run(lambda cache: ..., default=False)  # several steps as one operation

Each operation runs on a thread of the cache's own and is waited for at most
``LLM_CACHE_TIMEOUT`` seconds, or ``budget`` (what is left of a call's deadline) when
that is shorter. When it fails or times out, the caller gets its default, the failure
is counted in ``<name>.cache_errors`` and the cache is taken as down: for
``RETRY_AFTER`` seconds this process does not wait for it again (each operation
returns its default at once, counted in ``<name>.cache_skipped``), then lets one
operation try it. Its going down is logged once per ``LOG_INTERVAL``; its coming back, once.

Why a thread rather than socket timeouts: a thread bounds every backend the same way
(Redis, Memcached, the database cache waiting on a lock, a file cache on a hung
mount) and the whole operation, connecting and the client's own retries included.
Socket timeouts exist only for Redis and Memcached, only when CACHES sets them, and
redis-py retries within them. The hop costs tens of µs, which the circuit breaker's
healthy path pays at most once a second per provider (``circuit.CLOSED_RECHECK``).
"""

import asyncio
import contextlib
import numbers
import os
import queue
import threading
import time
from logging import getLogger

from django.core.cache import caches
from django.core.signals import setting_changed

from llmapp import conf, metrics
from llmapp.calls.threadconnections import close_thread_connections
from llmapp.metrics.throttle import Throttle, unsaid_note

logger = getLogger("llmapp.sharedstate")

ERRORS_METRIC = "{name}.cache_errors"
SKIPPED_METRIC = "{name}.cache_skipped"
#: Seconds this process leaves a failed cache alone before one operation tries it again.
RETRY_AFTER = 5.0
#: Seconds between two log lines about the same cache being down.
LOG_INTERVAL = 60.0
#: Threads of one cache that may be stuck in operations that timed out; past this many,
#: the cache is skipped until one of them comes back (bounds what a black hole can take).
MAX_STUCK_THREADS = 4

_lock = threading.Lock()
_guards = {}  # cache alias -> _Guard
_states = {}  # (cache alias, name) -> SharedState
_timeout = None  # LLM_CACHE_TIMEOUT, validated


def get(alias, name):
    """Return the shared state of ``name`` (e.g. "circuit", for metric names and logs) in cache ``alias``."""
    state = _states.get((alias, name))
    if state is None:
        with _lock:
            state = _states.get((alias, name))
            if state is None:
                state = _states[alias, name] = SharedState(_guard(alias), name)
    return state


def guard(alias):
    """Return the guard of cache ``alias``: its health and its thread (tests set its ``clock``)."""
    with _lock:
        return _guard(alias)


def _guard(alias):
    guard = _guards.get(alias)
    if guard is None:
        guard = _guards[alias] = _Guard(alias)
    return guard


def increment(cache, key, delta=1, timeout=None):
    """Add ``delta`` to the counter ``key`` in ``cache``, creating it with ``timeout``; return the count."""
    cache.add(key, 0, timeout=timeout)
    try:
        return cache.incr(key, delta)
    except ValueError:  # it expired, or was evicted, between add and incr
        cache.set(key, delta, timeout=timeout)
        return delta


class SharedState:
    """Read and write one feature's state in one cache; every method returns a default if the cache fails.

    ``budget`` (seconds) shortens the wait to what is left of a call's deadline; a wait
    cut short by it is skipped, not a failure of the cache.
    """

    def __init__(self, guard, name):
        self.guard = guard
        self.name = name
        self.errors_metric = ERRORS_METRIC.format(name=name)
        self.skipped_metric = SKIPPED_METRIC.format(name=name)
        self.tags = {"cache": guard.alias}

    @property
    def timeout(self):
        """LLM_CACHE_TIMEOUT: how long an operation is waited for at most, in seconds."""
        return _timeout if _timeout is not None else _read_timeout()

    def run(self, operation, *, default=None, budget=None):
        """Return ``operation(cache)``, run on the cache's thread; ``default`` if the cache failed."""
        job, wait = self._submit(operation, budget)
        if job is None:
            return default
        return self._outcome(job, job.done.wait(wait), wait, default)

    async def arun(self, operation, *, default=None, budget=None):
        """The async twin of :meth:`run`: the event loop waits without blocking."""
        job, wait = self._submit(operation, budget)
        if job is None:
            return default
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        job.notify(lambda: _settle_from_thread(loop, finished))
        try:
            await asyncio.wait_for(finished, wait)
        except TimeoutError:
            return self._outcome(job, False, wait, default)
        return self._outcome(job, True, wait, default)

    def _submit(self, operation, budget):
        """Queue ``operation``; return its job and how long to wait for it, or (None, 0) to skip."""
        wait = self.timeout if budget is None else min(self.timeout, budget)
        guard = self.guard
        if wait <= 0 or not guard.admit():
            metrics.incr(self.skipped_metric, tags=self.tags)
            return None, 0
        job = guard.submit(operation)
        if job is None:
            guard.failed(self, f"no thread can take the operation ({guard.stuck} stuck in earlier ones)")
        return job, wait

    def _outcome(self, job, finished, wait, default):
        guard = self.guard
        if not finished:
            job.cancelled = True
            if wait < self.timeout:
                # The call's deadline cut the wait short: the cache may be fine.
                guard.release()
                metrics.incr(self.skipped_metric, tags=self.tags)
            else:
                guard.failed(self, f"no answer within {wait:g}s (LLM_CACHE_TIMEOUT)", stuck=job.worker)
            return default
        if job.error is not None:
            guard.failed(self, f"{type(job.error).__name__}: {job.error}")
            return default
        guard.succeeded()
        return job.result

    def run_or_undo(self, operation, undo, *, budget=None):
        """Return ``operation(cache)`` (None if the cache failed); one that ends after its caller
        stopped waiting is undone there (``undo(cache, result)``), so that what the caller took
        as not done is not done: a reservation in a hung cache that comes back is not held."""
        guarded, settled = _undone_if_late(operation, undo)
        return settled(self.run(guarded, budget=budget))

    async def arun_or_undo(self, operation, undo, *, budget=None):
        guarded, settled = _undone_if_late(operation, undo)
        return settled(await self.arun(guarded, budget=budget))

    def post(self, operation):
        """Queue ``operation(cache)`` and return at once: for a write no caller waits for (its
        failure is counted, and the cache taken as down, when it ends)."""
        job, _ = self._submit(operation, None)
        if job is not None:
            job.notify(lambda: self._outcome(job, True, 0, None))

    def get(self, key, default=None, *, budget=None):
        return self.run(lambda cache: cache.get(key, default), default=default, budget=budget)

    def get_many(self, keys, *, budget=None):
        """Return a dict of the keys found, or None if the cache failed."""
        return self.run(lambda cache: cache.get_many(keys), budget=budget)

    def add(self, key, value, timeout=None, *, default=False, budget=None):
        """Set ``key`` unless it exists; return whether it was set (``default`` if the cache failed)."""
        return self.run(lambda cache: cache.add(key, value, timeout=timeout), default=default, budget=budget)

    def incr(self, key, delta=1, timeout=None, *, budget=None):
        """Add ``delta`` to the counter ``key``, creating it; return the count (None if the cache failed)."""
        return self.run(lambda cache: increment(cache, key, delta, timeout), budget=budget)

    def delete_many(self, keys, *, budget=None):
        """Delete ``keys``; return whether the cache did."""

        def delete(cache):
            cache.delete_many(keys)
            return True

        return self.run(delete, default=False, budget=budget)


def _undone_if_late(operation, undo):
    """Wrap ``operation`` for ``run_or_undo``; return it and what turns the run's outcome into its result."""
    lock = threading.Lock()
    state = {"waited": True, "result": None}

    def guarded(cache):
        result = operation(cache)
        with lock:
            if state["waited"]:
                state["result"] = result
                return result
        undo(cache, result)  # its caller went on without it
        return result

    def settled(outcome):
        if outcome is not None:
            return outcome
        with lock:
            state["waited"] = False
            # Done just as the wait ended: its result stands.
            return state["result"]

    return guarded, settled


class _Job:
    __slots__ = ("_callback", "_lock", "cancelled", "done", "error", "operation", "result", "worker")

    def __init__(self, operation, worker):
        self.operation = operation
        self.worker = worker
        self.done = threading.Event()
        self.cancelled = False
        self.result = self.error = None
        self._callback = None
        self._lock = threading.Lock()

    def notify(self, callback):
        """Call ``callback()`` once the job is done (at once if it is), from whichever thread."""
        with self._lock:
            if not self.done.is_set():
                self._callback = callback
                return
        callback()

    def finish(self):
        with self._lock:
            self.done.set()
            callback, self._callback = self._callback, None
        if callback is not None:
            callback()


def _settle(future):
    if not future.done():
        future.set_result(None)


def _settle_from_thread(loop, future):
    # The awaiting call may have given up, and its loop closed, before the cache answered.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, future)


class _Worker:
    """One daemon thread that runs a cache's operations in turn, with the thread's own cache client."""

    def __init__(self, alias):
        self.alias = alias
        self.jobs = queue.SimpleQueue()
        self.abandoned = False
        self.left_behind = False  # stuck in an operation its caller gave up on
        self.thread = threading.Thread(target=self._run, name=f"llmapp-cache-{alias}", daemon=True)

    def _run(self):
        while True:
            job = self.jobs.get()
            if job is None:
                break
            if not job.cancelled:
                try:
                    job.result = job.operation(caches[self.alias])
                except Exception as exc:
                    job.error = exc
            idle = self.jobs.empty()
            if idle and not self.abandoned:
                # Django closes a request's database connections, never this thread's:
                # a database cache's would outlive a restart of the database, and keep
                # a test database from being dropped. The next operation reconnects.
                close_thread_connections()  # before the caller hears back
            if not job.cancelled:
                job.finish()
            if idle and self.abandoned:
                break
        if not self.left_behind:
            close_thread_connections()


class _Guard:
    """The health and the thread of one cache alias, shared by every SharedState on it."""

    def __init__(self, alias):
        self.alias = alias
        self.clock = time.monotonic
        self.down = False
        self._retry_at = 0.0  # while down: when to let one operation try the cache again
        self._down_since = 0.0
        # Its own clock may be a test's, set after this: the throttle asks for it each time.
        self._reports = Throttle(LOG_INTERVAL, clock=lambda: self.clock())
        self._lock = threading.Lock()
        self._worker = None
        self._stuck = []  # workers abandoned in an operation that timed out

    def admit(self):
        """Say whether an operation may use the cache now: always when it is up, one at a time when down."""
        if not self.down:
            return True
        with self._lock:
            now = self.clock()
            if not self.down:
                return True
            if now < self._retry_at:
                return False
            # This operation tries the cache; the others keep skipping it meanwhile.
            self._retry_at = now + RETRY_AFTER
            return True

    def release(self):
        """Let the next operation try a down cache at once: the last try ended for the call's own reasons."""
        if self.down:
            self._retry_at = 0.0

    @property
    def stuck(self):
        """How many of this cache's threads are stuck in operations that timed out."""
        return sum(worker.thread.is_alive() for worker in self._stuck)

    def submit(self, operation):
        """Queue ``operation`` on this cache's thread; return its job, or None if no thread can take it."""
        worker = self._worker
        if worker is None:
            with self._lock:
                worker = self._worker
                if worker is None:
                    self._stuck = [stuck for stuck in self._stuck if stuck.thread.is_alive()]
                    if len(self._stuck) >= MAX_STUCK_THREADS:
                        return None
                    worker = _Worker(self.alias)
                    try:
                        worker.thread.start()
                    except RuntimeError:  # no threads left
                        return None
                    self._worker = worker
        job = _Job(operation, worker)
        worker.jobs.put(job)
        return job

    def succeeded(self):
        if self.down:
            with self._lock:
                if not self.down:
                    return
                self.down = False
                down_for = self.clock() - self._down_since
            logger.info("Cache %r answers again, after %.0fs unavailable.", self.alias, down_for)

    def failed(self, state, reason, stuck=None):
        """Count a failed operation of ``state``, take the cache as down and log it (once per interval)."""
        metrics.incr(state.errors_metric, tags=state.tags)
        with self._lock:
            if stuck is not None and stuck is self._worker:
                # Its thread is stuck in the operation: the next one gets a new thread.
                stuck.abandoned = stuck.left_behind = True
                stuck.jobs.put(None)
                self._stuck.append(stuck)
                self._worker = None
            now = self.clock()
            if not self.down:
                self.down, self._down_since = True, now
            self._retry_at = now + RETRY_AFTER
        unlogged = self._reports.due()
        if unlogged is None:
            return
        logger.warning(
            "Cache %r is unavailable (%s): calls go on without the %s state kept there, and this "
            "process tries the cache again in %gs.%s",
            self.alias,
            reason,
            state.name,
            RETRY_AFTER,
            unsaid_note(unlogged, "failure(s)"),
        )

    def stop(self):
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.abandoned = True
            worker.jobs.put(None)


def check_shared_state(app_configs=None, **kwargs):
    """Check LLM_CACHE_TIMEOUT and that the circuit breaker's cache alias is configured."""
    from django.conf import settings
    from django.core import checks

    errors = []
    value = conf.get_setting("LLM_CACHE_TIMEOUT")
    if not is_valid_cache_timeout(value):
        errors.append(
            checks.Error(
                f"LLM_CACHE_TIMEOUT is {value!r}, not a positive number of seconds.",
                hint="Set it to how long a call may wait for one cache operation, e.g. 0.25.",
                id="llmapp.cache.E001",
            )
        )
    alias = conf.get_setting("LLM_CIRCUIT_BREAKER_CACHE")
    if alias not in settings.CACHES:
        errors.append(
            checks.Error(
                f"LLM_CIRCUIT_BREAKER_CACHE is {alias!r}, which CACHES does not configure: circuit "
                "breakers keep no state.",
                hint=f"Use one of {', '.join(map(repr, settings.CACHES))}, or add {alias!r} to CACHES.",
                id="llmapp.cache.E002",
            )
        )
    errors += _check_limits_cache(settings)
    return errors


#: Cache backends whose state each process keeps for itself.
PER_PROCESS = ("django.core.cache.backends.locmem.LocMemCache", "django.core.cache.backends.dummy.DummyCache")
#: Cache backends whose incr() is a get and a set: two workers may both pass a limit.
NOT_ATOMIC = (
    "django.core.cache.backends.db.DatabaseCache",
    "django.core.cache.backends.filebased.FileBasedCache",
)


def limits_alias():
    """Return LLM_LIMITS_CACHE (budgets, rate limits); raise a ConfigurationError if CACHES lacks it."""
    from django.conf import settings

    alias = conf.get_setting("LLM_LIMITS_CACHE")
    if not isinstance(alias, str) or alias not in settings.CACHES:
        from llmapp.exceptions import ConfigurationError

        raise ConfigurationError(
            f"LLM_LIMITS_CACHE is {alias!r}, which CACHES does not configure: budgets and rate limits "
            "cannot be kept.",
            check_id="llmapp.cache.E003",
            hint=f"Use one of {', '.join(map(repr, settings.CACHES))}, or add it to CACHES.",
        )
    return alias


def _check_limits_cache(settings):
    """LLM_LIMITS_CACHE must exist; budgets and limits want one every worker shares, atomically."""
    from django.core import checks
    from django.core.exceptions import ImproperlyConfigured

    from llmapp.conf.usecases import get_usecases
    from llmapp.exceptions import ConfigurationError

    try:
        alias = limits_alias()
    except ConfigurationError as exc:
        return [exc.as_check()]
    try:
        budgeted = [
            usecase.name for usecase in get_usecases().values() if usecase.budget or usecase.rate_limit
        ]
    except ImproperlyConfigured:  # LLM_USECASES's own problem, which its check says
        return []
    providers = conf.get_setting("LLM_PROVIDERS")
    if isinstance(providers, dict):
        budgeted += [
            f"provider {alias}"
            for alias, entry in providers.items()
            if isinstance(entry, dict) and entry.get("RATE_LIMIT")
        ]
    backend = settings.CACHES[alias].get("BACKEND")
    if not budgeted:
        return []
    if backend in NOT_ATOMIC:
        why = "whose increments are not atomic: workers racing for the last of a limit may all pass it"
    elif backend in PER_PROCESS and not settings.DEBUG:
        why = "which each process keeps for itself: with several workers, each may spend the whole limit"
    else:
        return []
    return [
        checks.Warning(
            f"{', '.join(budgeted)} have a BUDGET or RATE_LIMIT kept in cache {alias!r} "
            f"({backend.rpartition('.')[2]}), {why}.",
            hint="Point LLM_LIMITS_CACHE at Redis or Memcached, which every worker shares and which "
            "add atomically.",
            id="llmapp.cache.W001",
        )
    ]


def _read_timeout():
    global _timeout
    value = conf.get_setting("LLM_CACHE_TIMEOUT")
    if is_valid_cache_timeout(value):
        _timeout = float(value)
    else:
        _timeout = conf.DEFAULTS["LLM_CACHE_TIMEOUT"]
        logger.error("LLM_CACHE_TIMEOUT is %r, not a positive number of seconds; using %g.", value, _timeout)
    return _timeout


def is_valid_cache_timeout(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0


@conf.on_change
def _forget_timeout():
    global _timeout
    _timeout = None


def reset():
    """Forget every cache's health and stop its thread; the next operation starts afresh.

    Run when CACHES changes. Not when an LLM_* setting does: that changes no cache.
    """
    with _lock:
        guards = list(_guards.values())
        _guards.clear()
        _states.clear()
    for old in guards:
        old.stop()


def _caches_changed(*, setting, **kwargs):
    if setting == "CACHES":
        reset()


setting_changed.connect(_caches_changed, dispatch_uid="llmapp.calls.sharedstate")


def _after_fork_in_child():
    # The parent's threads do not exist here, and a lock may have been held by one of them.
    global _lock
    _lock = threading.Lock()
    _guards.clear()
    _states.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
