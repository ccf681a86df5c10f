"""The override layer: use-case fields changed at run time, in the admin or over the JSON API.

Operators change a prompt or a model without a deploy, as Sentry's options store lets
them change its use cases. Each change is an append-only ``UseCaseRevision``; the
newest revision of a use case is its override, which sits over the settings and under
the environment (``llmapp.conf.usecases``). Only the fields of ``EDITABLE_FIELDS``
(narrowed by ``LLM_EDITABLE_FIELDS``) can be changed: never a backend, an option, a key
or a URL, which stay in settings.

Every process sees a saved change on its next call, without a restart: saving bumps a
version token in the shared cache (``LLM_LIMITS_CACHE``), and each call compares it with
the one it loaded. A per-process cache (LocMem, Dummy) cannot tell other processes, so
there the newest revision is read from the database instead, at most once a second.
A cache or database that is down leaves the overrides as last read: counted, logged
once per interval, never failing a call.
"""

import contextlib
import math
import os
import queue
import threading
import time
import uuid
from logging import getLogger

from asgiref.sync import sync_to_async
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from llmapp import conf, metrics
from llmapp.calls.threadconnections import close_thread_connections
from llmapp.conf import usecases as registry
from llmapp.conf.secrets import MASK, MIN_SUBSTRING_SECRET, known_secrets, redact
from llmapp.exceptions import ConfigurationError, OverrideConflict, OverrideInvalid, OverridesOff
from llmapp.metrics.throttle import Throttle, unsaid_note

logger = getLogger("llmapp.overrides")

#: What an override may set; the rest (OUTPUT, backends, options, keys) stays in code and settings.
EDITABLE_FIELDS = (
    "ENABLED",
    "DESCRIPTION",
    "PROMPT",
    "PROMPT_TEMPLATE",
    "MESSAGE_TEMPLATE",
    "PROVIDER",
    "MODEL",
    "TEMPERATURE",
    "MAX_OUTPUT_TOKENS",
    "TIMEOUT",
    "RETRIES",
    "FALLBACKS",
    "CACHE",
    "BUDGET",
    "RATE_LIMIT",
)
_TEXT = ("DESCRIPTION", "PROMPT", "PROMPT_TEMPLATE", "MESSAGE_TEMPLATE")
# Of a prompt; far beyond any, far below what fills a database row by mistake.
MAX_TEXT = 200_000

VERSION_KEY = "llmapp:overrides:version"
#: Seconds a read of the overrides is waited for before calls go on without it.
LOAD_TIMEOUT = 1.0
#: Seconds between two reads of the newest revision when the cache is per-process.
LOCAL_RECHECK = 1.0
#: Seconds this process waits after a failed read before it tries the database again.
RETRY_AFTER = 5.0
LOAD_ERRORS_METRIC = "overrides.load_errors"


def enabled():
    return bool(conf.get_setting("LLM_USECASE_OVERRIDES"))


def editable_fields():
    """LLM_EDITABLE_FIELDS, or every editable field; what it lists beyond them is its check's problem."""
    chosen = conf.get_setting("LLM_EDITABLE_FIELDS")
    if chosen is None:
        return EDITABLE_FIELDS
    return tuple(field for field in EDITABLE_FIELDS if field in chosen)


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.loaded = False
        self.token = None  # the version token the loaded overrides belong to
        self.next_try = 0.0  # after a failed read, when to try again
        self.checked_at = None  # a per-process cache: when the newest revision was last read
        self.unbumped = False  # a save whose bump the cache did not take
        self.per_process = None  # whether the version cache is per-process; None: not yet looked
        self.none_assumed = False  # no database to read (a test that may not query): read nothing
        self.clock = time.monotonic
        self.throttle = Throttle(60.0)


_state = _State()


# -- reading ---------------------------------------------------------------------


def refresh():
    """Bring this process's overrides up to date; called at the start of every call."""
    if _state.per_process and _checked_lately():
        return  # read from the database a moment ago: the common case, said first
    if not enabled():
        if _state.loaded:
            forget()
        return
    token = _token()
    if _stale(token):
        _load(token)


async def arefresh():
    """The async twin of :func:`refresh`: the cache is awaited, the database read on a thread."""
    if _state.per_process and _checked_lately():
        return  # read from the database a moment ago: the common case, said first
    if not enabled():
        if _state.loaded:
            forget()
        return
    if _per_process_cache():
        if not _checked_lately() and not _resting():
            await sync_to_async(refresh)()
        return
    if _state.unbumped:
        await sync_to_async(bump)()
    token = await _shared().arun(_read_token)
    if _stale(token):
        await sync_to_async(_load)(token)


def _resting():
    """Whether a read failed a moment ago: the database is left alone until ``next_try``."""
    return _state.clock() < _state.next_try


def _stale(token):
    if _resting():
        return False
    if not _state.loaded:
        return True
    return token is not None and token != _state.token


def _token():
    """The version the overrides are at: the shared cache's token; None when it cannot be told."""
    if _per_process_cache():
        return _newest_revision()
    if _state.unbumped:
        bump()
    return _shared().run(_read_token)


def _checked_lately():
    checked = _state.checked_at
    return _state.loaded and checked is not None and _state.clock() - checked < LOCAL_RECHECK


def _newest_revision():
    if _checked_lately():
        return _state.token
    if _resting():
        return None
    with _state.lock:  # one read for the threads that come at once; the others wait for it
        if _checked_lately():
            return _state.token
        if _resting():
            return None
        now = _state.clock()
        try:
            newest = _reader.run(_read_newest)
        except Exception as exc:
            _failed(exc)
            return None
        _state.checked_at = now
        return newest


def _read_newest():
    from llmapp.models import UseCaseRevision

    with _bounded_read():
        return UseCaseRevision.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def _read_token(cache):
    token = cache.get(VERSION_KEY)
    if token is None:  # first use, evicted, or the cache restarted: nobody knows what changed
        cache.add(VERSION_KEY, uuid.uuid4().hex, timeout=None)
        token = cache.get(VERSION_KEY)
    return token


def _load(token):
    """Read the newest revision of each use case into the registry."""
    with _state.lock:
        if not _stale(token):  # another thread read them while this one waited
            return
        try:
            overrides = _reader.run(read_overrides)
        except Exception as exc:
            _failed(exc)
            return
        registry.set_overrides(overrides)
        _state.loaded, _state.token, _state.next_try = True, token, 0.0


def read_overrides():
    """Return {use-case name: (revision id, fields)} of the overrides saved in the database."""
    from django.db.models import Max

    from llmapp.models import UseCaseRevision

    with _bounded_read():
        newest = UseCaseRevision.objects.values("usecase").annotate(newest=Max("pk")).values("newest")
        rows = list(UseCaseRevision.objects.filter(pk__in=newest).values_list("usecase", "pk", "override"))
    return {name: (pk, fields) for name, pk, fields in rows if fields}


def _bounded_read():
    from llmapp.eventstream.database import bounded_transaction

    connection = connections[DEFAULT_DB_ALIAS]
    if connection.vendor == "postgresql":
        return bounded_transaction(connection, LOAD_TIMEOUT)
    # SQLite readers wait on no writer in WAL mode; a transaction would take the write lock
    # (IMMEDIATE), and wait for the usage writer.
    return contextlib.nullcontext()


class _Reader:
    """Reads the database on a thread of its own, waited for at most LOAD_TIMEOUT.

    A database that accepts connections and never answers would otherwise hold a call
    forever: connecting is bounded only by the database's own options. A caller inside
    a transaction reads on its own connection instead, which is connected already and
    sees what the transaction wrote.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.jobs = None
        self.busy = False

    def run(self, read):
        if connections[DEFAULT_DB_ALIAS].in_atomic_block:
            return read()
        with self.lock:
            if self.busy:
                raise TimeoutError("an earlier read of the overrides has not come back")
            self.busy = True
            if self.jobs is None:
                self.jobs = queue.SimpleQueue()
                threading.Thread(
                    target=self._serve, args=(self.jobs,), name="llmapp-overrides", daemon=True
                ).start()
        outcome = {}
        done = threading.Event()
        self.jobs.put((read, outcome, done))
        if not done.wait(LOAD_TIMEOUT):
            outcome["left behind"] = True
            raise TimeoutError(f"the database did not answer within {LOAD_TIMEOUT:g}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _serve(self, jobs):
        while True:
            read, outcome, done = jobs.get()
            try:
                outcome["result"] = read()
            except Exception as exc:
                outcome["error"] = exc
            finally:
                # Not kept between reads, which are seldom: an idle connection of this thread
                # would hold the database (a test database could not be dropped). Kept when the
                # caller gave up on this read: see close_thread_connections().
                if "left behind" not in outcome:
                    close_thread_connections()
                with self.lock:
                    self.busy = False
                done.set()


_reader = _Reader()


def _after_fork_in_child():
    # The parent's reader thread does not exist here.
    global _reader
    _reader = _Reader()
    _state.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _failed(exc):
    _state.next_try = _state.clock() + RETRY_AFTER
    metrics.incr(LOAD_ERRORS_METRIC)
    unsaid = _state.throttle.due()
    if unsaid is not None:
        logger.warning(
            "Use-case overrides could not be read (%s: %s); calls use what was read before, or the "
            "settings%s.",
            type(exc).__name__,
            redact(str(exc))[:300],
            unsaid_note(unsaid, "failures"),
        )


def forget():
    """Drop what this process read: the next call reads the overrides again (tests, settings changes)."""
    _state.loaded, _state.token, _state.checked_at, _state.next_try = False, None, None, 0.0
    _state.per_process = None
    registry.set_overrides({})
    if _state.none_assumed:
        _state.loaded, _state.next_try = True, math.inf


conf.on_change(forget)


def assume_none(assumed=True):
    """Take it that no override exists, and read none, until ``assume_none(False)``.

    For a test with no database: a settings change in it forgets what was read, and
    must not bring a read the test may not make.
    """
    _state.none_assumed = assumed
    forget()


def _caches_changed(*, setting, **kwargs):
    if setting == "CACHES":
        forget()


setting_changed.connect(_caches_changed, dispatch_uid="llmapp.conf.overrides")


def _per_process_cache():
    """Whether LLM_LIMITS_CACHE is one each process keeps for itself (LocMem, Dummy); asked each call."""
    if _state.per_process is None:
        from django.conf import settings

        from llmapp.calls.sharedstate import PER_PROCESS, limits_alias

        try:
            _state.per_process = settings.CACHES[limits_alias()].get("BACKEND") in PER_PROCESS
        except ConfigurationError:
            _state.per_process = True
    return _state.per_process


def _shared():
    from llmapp.calls import sharedstate

    return sharedstate.get(sharedstate.limits_alias(), "overrides")


def forget_loaded():
    # A save: whoever made it can reach the database, whatever was assumed of it.
    _state.none_assumed = False
    _state.loaded, _state.next_try = False, 0.0


def bump():
    """Tell every process that the overrides changed; this one reads them again on its next call."""
    forget_loaded()
    if _per_process_cache():
        return
    token = uuid.uuid4().hex

    def store(cache):
        cache.set(VERSION_KEY, token, timeout=None)
        return True

    # Until the cache takes it, the others go on with what they read: try again on the next call.
    _state.unbumped = not _shared().run(store, default=False)


# -- writing ---------------------------------------------------------------------


def validate(name, fields, current=None):
    """Return {field: [messages]} of what is wrong with ``fields`` as use case ``name``'s override.

    Each field is checked as settings are (llmapp.conf.usecases: the same rules, the same
    providers and models), on the use case the override would make. A field that is not
    editable here may only repeat its value in ``current``, the override as saved.
    """
    errors = {}
    editable = editable_fields()
    for field, value in fields.items():
        if field not in registry.FIELDS or field not in EDITABLE_FIELDS:
            errors[field] = [f"{field} is not an editable field; editable: {', '.join(editable)}."]
        elif field not in editable and (current or {}).get(field) != value:
            errors[field] = [f"{field} is not editable here (LLM_EDITABLE_FIELDS); change it in settings."]
        else:
            problem = _type_problem(field, value) or _secret_problem(field, value)
            if problem:
                errors[field] = [problem]
    # The others are checked as a whole too, so that one answer names every bad field.
    checked = {field: value for field, value in fields.items() if field not in errors}
    if "PROVIDER" in errors:
        checked.pop("MODEL", None)  # a model is allowed or not by its provider, which did not hold
    try:
        _usecase, problems = registry.resolve_with(name, checked)
    except ConfigurationError as exc:  # the use case's settings are broken; their check says how
        return errors | {"__all__": [str(exc)]}
    for problem in problems:
        if problem.field not in errors or not problem.field:
            errors.setdefault(problem.field or "__all__", []).append(str(problem))
    return errors


def _type_problem(field, value):
    if field == "ENABLED":
        return (
            None
            if isinstance(value, bool)
            else f"ENABLED must be true or false, got {registry.shown(value)}."
        )
    if field in _TEXT or field == "PROVIDER" or field == "MODEL":
        if not isinstance(value, str):
            return f"{field} must be a string, got a {type(value).__name__}."
        if len(value) > MAX_TEXT:
            return f"{field} must be at most {MAX_TEXT} characters, got {len(value)}."
        if field in ("PROVIDER", "MODEL") and not value.strip():
            return (
                f"{field} must not be empty; remove it from the override (null) to use the settings' value."
            )
        return None
    if field == "FALLBACKS":
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            return 'FALLBACKS must be a list of "provider" or "provider:model" strings.'
        return None
    if field in ("CACHE", "BUDGET", "RATE_LIMIT") and not isinstance(value, dict):
        return f"{field} must be a JSON object, got a {type(value).__name__}."
    return None  # numbers: their Rule says what they must be


def _secret_problem(field, value):
    """A known secret (a provider's key, a secret setting) pasted into a field: refused, as it
    would then be sent to the provider and shown wherever the prompt is."""
    texts = (
        [value]
        if isinstance(value, str)
        else [item for item in value if isinstance(item, str)]
        if isinstance(value, list)
        else []
    )
    for text in texts:
        if any(len(secret) >= MIN_SUBSTRING_SECRET and secret in text for secret in known_secrets()):
            return f"{field} holds a secret of this project's settings (a key or password); take it out."
    return None


def latest_revision(name):
    """Use case ``name``'s newest UseCaseRevision, read from the database; None when it has none."""
    from llmapp.models import UseCaseRevision

    return UseCaseRevision.objects.filter(usecase=name).order_by("-pk").first()


def current_override(name):
    """The fields of use case ``name``'s override as saved, read from the database ({} for none)."""
    latest = latest_revision(name)
    return dict(latest.override) if latest is not None else {}


def save_override(name, fields, *, author=None, author_name="", comment="", reverts=None, base_revision=None):
    """Make ``fields`` use case ``name``'s override, as a new revision; return it.

    ``author`` is the user who made the change; ``author_name`` says who did when no user
    did (a command run from a shell).

    Fields set to None are left out (the settings' value applies); fields not editable
    here (LLM_EDITABLE_FIELDS) keep their saved value. ``base_revision`` is the revision id
    the change was made on (0: none): when another has been saved since, OverrideConflict
    is raised. Raises OverrideInvalid, saving nothing, when a field does not hold, and
    OverridesOff when LLM_USECASE_OVERRIDES is off.
    """
    from llmapp.models import UseCaseRevision

    if not enabled():
        raise OverridesOff(
            "use-case overrides are off (LLM_USECASE_OVERRIDES = False): a change would be read by no call."
        )
    fields = {field: value for field, value in fields.items() if value is not None}
    registry.get_usecase(name)  # an unknown use case raises InvalidUsecaseError
    current = current_override(name)
    errors = validate(name, fields, current)
    if errors:
        raise OverrideInvalid(errors)
    editable = editable_fields()
    fields = {field: value for field, value in current.items() if field not in editable} | fields
    usecase, _ = registry.resolve_with(name, fields)
    user = author if getattr(author, "is_authenticated", False) else None
    with transaction.atomic():
        latest = UseCaseRevision.objects.select_for_update().filter(usecase=name).order_by("-pk").first()
        newest = latest.pk if latest is not None else 0
        if base_revision is not None and base_revision != newest:
            raise OverrideConflict(
                f"use case {name!r} was changed (revision {newest}) since revision {base_revision}, which "
                "this change was made on; reload it and make the change again."
            )
        revision = UseCaseRevision.objects.create(
            usecase=name,
            author=user,
            author_name=user.get_username() if user is not None else author_name[:150],
            comment=comment or "",
            override=fields,
            config=effective_config(usecase),
            reverts=reverts,
        )
        forget_loaded()  # this process reads it on its next call, committed or not
        transaction.on_commit(bump)
    return revision


def revert(name, revision_id, *, author=None, author_name="", comment=""):
    """Restore use case ``name``'s override as of revision ``revision_id`` (0: none, its settings),
    as a new revision."""
    from llmapp.models import UseCaseRevision

    if revision_id == 0:
        return save_override(
            name, {}, author=author, author_name=author_name, comment=comment or "Revert to the settings"
        )
    old = UseCaseRevision.objects.get(usecase=name, pk=revision_id)
    return save_override(
        name,
        dict(old.override),
        author=author,
        author_name=author_name,
        comment=comment or f"Revert to revision {old.pk}",
        reverts=old,
    )


def effective_config(usecase):
    """{field: value} of the editable fields as ``usecase`` has them, in JSON's types."""
    config = {}
    for field in EDITABLE_FIELDS:
        value = getattr(usecase, field.lower())
        if isinstance(value, tuple):
            value = list(value)
        config[field] = value
    return config


def described(usecase):
    """The use case as the API shows it: name, each editable field's value and where it comes from."""
    config = effective_config(usecase)
    return {
        "name": usecase.name,
        "revision": usecase.revision,
        "enabled": usecase.enabled,
        "override": masked(registry.override_of(usecase.name)),
        "config": {field: masked(value) for field, value in config.items()},
        "sources": {field: usecase.source(field) for field in config},
        "editable": list(editable_fields()),
    }


def masked(value):
    """``value`` with the secrets this process knows (provider keys, secret settings) masked.

    Only those: key shapes and URL parameters are left as written, so that a prompt that
    quotes ``?key=demo`` exports and imports back unchanged. No editable field holds a
    credential (keys, options and URLs stay in settings); this catches one pasted by mistake.
    """
    if isinstance(value, str):
        for secret in known_secrets():
            if len(secret) >= MIN_SUBSTRING_SECRET and secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, list):
        return [masked(item) for item in value]
    if isinstance(value, dict):
        return {key: masked(item) for key, item in value.items()}
    return value
