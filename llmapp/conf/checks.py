"""System checks for llmapp's configuration, in the spirit of Sentry's validate_snuba.

``manage.py check`` lists every problem at once, and fails on an error. Other
commands list the same problems as warnings and go on: a mistake in an LLM setting
must not stop ``migrate``, ``makemigrations`` or ``runserver``, and each call of a
misconfigured use case fails with its own one-line error. ``initialize_app`` logs
the errors at start-up in servers, where no command lists them.
"""

from django.core import checks

from llmapp import conf, eventstream, tsdb
from llmapp.calls.sharedstate import check_shared_state
from llmapp.conf import overrides
from llmapp.conf.backends import backend_class
from llmapp.conf.secrets import redact, url_secrets
from llmapp.conf.startup import called_from
from llmapp.conf.usecases import get_usecase_errors, get_usecases, resolve_with
from llmapp.exceptions import ConfigurationError
from llmapp.metrics.checks import check_metrics
from llmapp.providers import check_entry, providers
from llmapp.sentry.checks import check_sentry


def check_llmapp(app_configs=None, **kwargs):
    """Run every llmapp check; registered with Django's check framework."""
    problems = collect_problems(
        (validate_options, validate_backends, check_debug_page, check_shared_state, check_sentry)
    )
    if running_check_command():
        return problems
    return [as_warning(problem) for problem in problems]


def collect_problems(validators):
    """Run ``validators``; return their problems, a crash of one as a problem too, all redacted.

    A value may be a key pasted into the wrong setting: no message shows one, here or in
    the start-up log.
    """
    problems = []
    for validate in validators:
        try:
            problems += validate()
        except Exception as exc:
            problems.append(
                checks.Error(
                    f"llmapp could not check its configuration ({validate.__name__}): "
                    f"{type(exc).__name__}: {exc}",
                    hint="A setting has a shape llmapp does not expect; compare it with the README.",
                    id="llmapp.E010",
                )
            )
    return [
        type(problem)(redact(problem.msg), hint=redact(problem.hint), obj=problem.obj, id=problem.id)
        for problem in problems
    ]


def check_debug_page():
    """Under DEBUG, Django's error page lists every setting: URL credentials need llmapp's filter."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    from llmapp.debug import SafeExceptionReporterFilter

    if not settings.DEBUG:
        return []
    try:
        reporter_filter = import_string(settings.DEFAULT_EXCEPTION_REPORTER_FILTER)
    except ImportError:
        return []  # Django reports that itself
    if issubclass(reporter_filter, SafeExceptionReporterFilter):
        return []
    configured = conf.get_setting("LLM_PROVIDERS")
    for alias, config in configured.items() if isinstance(configured, dict) else ():
        options = config.get("OPTIONS") if isinstance(config, dict) else None
        if not isinstance(options, dict):
            continue
        # Django's page hides values by their names (KEY, TOKEN...); these have names that say nothing.
        urls = [value for value in options.values() if isinstance(value, str) and url_secrets(value)]
        if urls or options.get("default_headers"):
            return [
                checks.Warning(
                    f"DEBUG is on and LLM_PROVIDERS[{alias!r}]['OPTIONS'] holds credentials in a URL or a "
                    "custom header, which Django's error page would show.",
                    hint="Set DEFAULT_EXCEPTION_REPORTER_FILTER = "
                    '"llmapp.debug.SafeExceptionReporterFilter".',
                    id="llmapp.W005",
                )
            ]
    return []


def as_warning(problem):
    if problem.level <= checks.WARNING:
        return problem
    return checks.Warning(problem.msg, hint=problem.hint, obj=problem.obj, id=problem.id)


def running_check_command():
    """Say whether `manage.py check` (or call_command("check")) is what runs the checks now."""
    from django.core.management.commands.check import Command

    return called_from(Command.handle)


def validate_options():
    """Check the providers, the use cases and what their overrides may change."""
    backends, messages = _check_providers()
    return messages + _check_usecases(backends) + _check_editable_fields()


def _check_editable_fields():
    chosen = conf.get_setting("LLM_EDITABLE_FIELDS")
    if chosen is None:
        return []
    if isinstance(chosen, list | tuple) and all(field in overrides.EDITABLE_FIELDS for field in chosen):
        return []
    return [
        checks.Error(
            f"LLM_EDITABLE_FIELDS must be a list of {', '.join(overrides.EDITABLE_FIELDS)}; got {chosen!r}.",
            hint="Leave it unset to make every one of them editable, or [] for none.",
            id="llmapp.E032",
        )
    ]


def check_overrides(app_configs=None, databases=None, **kwargs):
    """Overrides saved in the database that no longer hold (a provider or model since removed).

    A database check (``check --database default``, ``migrate``): other commands read no database.
    """
    if not databases or not overrides.enabled():
        return []
    try:
        saved = overrides.read_overrides()
    except Exception:  # no table yet (before migrate), or no database: nothing to check
        return []
    messages = []
    for name, (revision, fields) in saved.items():
        try:
            _, problems = resolve_with(name, fields, revision)
        except ConfigurationError:  # an unknown use case, or broken settings: their own checks say so
            continue
        messages += [
            checks.Warning(
                redact(f"the override of use case {name!r} (revision {revision}) no longer holds: {problem}"),
                hint="Calls use the value beneath it. Change the use case in the admin or over the API, "
                "or restore the provider or model in settings.",
                id="llmapp.W009",
            )
            for problem in problems
        ]
    return messages


def validate_backends():
    """Check the event stream, the TSDB and the metrics backend, and that they fit together."""
    messages, stream, reader = [], None, None
    for setting, aliases in (("LLM_EVENTSTREAM", eventstream.ALIASES), ("LLM_TSDB", tsdb.ALIASES)):
        try:
            cls = backend_class(setting, aliases)
        except ConfigurationError as exc:
            messages.append(exc.as_check())
            continue
        if setting == "LLM_EVENTSTREAM":
            stream = cls
            messages += _check_eventstream_options()
        else:
            reader = cls
    if stream is not None and reader is not None:
        if reader.reads_from_database and not stream.writes_to_database:
            messages.append(
                checks.Error(
                    f"LLM_TSDB reads usage from the database but LLM_EVENTSTREAM is "
                    f"{conf.get_setting('LLM_EVENTSTREAM')!r}: no data will be written where it is read.",
                    hint="Set LLM_EVENTSTREAM = 'database', or LLM_TSDB = 'null'.",
                    id="llmapp.E008",
                )
            )
        elif stream.writes_to_database and not reader.has_data:
            messages.append(
                checks.Warning(
                    "LLM_EVENTSTREAM writes usage to the database but LLM_TSDB is 'null': "
                    "the admin and the CLI will show no usage.",
                    hint="Set LLM_TSDB = 'database' to read it back, or LLM_EVENTSTREAM = 'null'.",
                    id="llmapp.W001",
                )
            )
    return messages + check_metrics()


def _check_eventstream_options():
    try:
        stream = eventstream.get_eventstream()
    except ConfigurationError as exc:
        return [exc.as_check()]
    if not getattr(stream, "synchronous", False):
        return []
    from django.conf import settings
    from django.db import router

    from llmapp.models import CompletionEvent

    alias = router.db_for_write(CompletionEvent)
    return check_synchronous_connect(alias, settings.DATABASES.get(alias) or {})


def check_synchronous_connect(alias, database):
    """Synchronous events wait on the caller's connection: connecting must be bounded too."""
    options = database.get("OPTIONS") or {}
    if "postgresql" not in database.get("ENGINE", "") or options.get("connect_timeout"):
        return []
    return [
        checks.Warning(
            f"Usage events are recorded synchronously on database {alias!r}, whose OPTIONS set no "
            "connect_timeout: a PostgreSQL server that does not answer holds every call while it "
            "connects.",
            hint=f'Set DATABASES[{alias!r}]["OPTIONS"]["connect_timeout"] (seconds), or leave '
            'LLM_EVENTSTREAM_OPTIONS["synchronous"] off.',
            id="llmapp.W006",
        )
    ]


def _check_providers():
    """Return {alias: backend} for the providers that can be built, and the problems of the others.

    Each entry reports its own problems (``providers.backend_class``, ``check_entry``, the
    backend's ``unknown_options``): the same errors a call raises.
    """
    try:
        configured = providers.settings
    except ConfigurationError as exc:
        return {}, [exc.as_check()]
    backends, messages = {}, []
    for alias, config in configured.items():
        try:
            cls = providers.backend_class(alias, config)
            check_entry(alias, config)
        except ConfigurationError as exc:
            messages.append(exc.as_check())
            continue
        options = config.get("OPTIONS") or {}
        unknown = cls.unknown_options(alias, options)
        if unknown is not None:
            messages.append(unknown.as_check())
        known = {key: value for key, value in options.items() if key in cls.option_names}
        unknown_mode = cls.unknown_output_mode(alias, known)
        if unknown_mode is not None:
            messages.append(unknown_mode.as_check())
            del known["structured_output"]
        backends[alias] = cls(alias, options=known, models=config.get("MODELS"))
    return backends, messages


def _check_usecases(backends):
    """The problems each use case reports of itself, then those of the providers they rely on."""
    try:
        usecases = get_usecases()
    except ConfigurationError as exc:
        return [exc.as_check()]
    messages = [error.as_check() for error in get_usecase_errors().values()]
    providers_used = set()
    for usecase in usecases.values():
        messages += [problem.as_check() for problem in usecase.problems()]
        if usecase.provider in backends:
            providers_used.add(usecase.provider)
    # A provider no use case relies on may lack its SDK or key without harm.
    for alias in sorted(providers_used):
        backend = backends[alias]
        if (problem := backend.sdk_problem(alias)) is not None:
            messages.append(problem.as_check())
        messages += backend.check()
    return messages
