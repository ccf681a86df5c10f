"""System checks for llmapp's configuration, in the spirit of Sentry's validate_snuba.

``manage.py check`` lists every problem at once, and fails on an error. Other
commands list the same problems as warnings and go on: a mistake in an LLM setting
must not stop ``migrate``, ``makemigrations`` or ``runserver``, and each call of a
misconfigured use case fails with its own one-line error. ``initialize_app`` logs
the errors at start-up in servers, where no command lists them.
"""

from django.core import checks

from llmapp import conf, eventstream, tsdb
from llmapp.calls.service import (
    MAX_TIMEOUT,
    is_valid_max_output_tokens,
    is_valid_retries,
    is_valid_temperature,
    is_valid_timeout,
)
from llmapp.calls.sharedstate import check_shared_state
from llmapp.conf.backends import backend_class
from llmapp.conf.startup import called_from
from llmapp.conf.usecases import BUILTIN_USECASES, _code_usecases, _resolve
from llmapp.exceptions import ConfigurationError
from llmapp.metrics.checks import check_metrics
from llmapp.providers import PROVIDER_KEYS, check_entry, providers
from llmapp.redaction import redact, url_secrets
from llmapp.sentry.checks import check_sentry

PROVIDER_HINT = (
    'Each LLM_PROVIDERS entry is {"BACKEND": "<import string>", "OPTIONS": {...}, "MODELS": [...]}.'
)


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
    """Check the providers and the use cases."""
    backends, messages = _check_providers()
    return messages + _check_usecases(backends)


def validate_backends():
    """Check the event stream, the TSDB and the metrics backend, and that they fit together."""
    messages, stream, reader = [], None, None
    for setting, aliases in (("LLM_EVENTSTREAM", eventstream.ALIASES), ("LLM_TSDB", tsdb.ALIASES)):
        try:
            cls = backend_class(setting, aliases)
        except ConfigurationError as exc:
            messages.append(
                checks.Error(
                    str(exc),
                    hint=f"Set {setting} to one of {', '.join(aliases)}, or a backend's import string.",
                    id="llmapp.E007",
                )
            )
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
        return [
            checks.Error(
                str(exc),
                hint='For example {"queue_size": 10000, "batch_size": 500, "max_wait": 0.2, '
                '"synchronous": False, "timeout": 1.0}.',
                id="llmapp.E009",
            )
        ]
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
    """Return {alias: backend} for the importable providers, and the problems found."""
    configured = conf.get_setting("LLM_PROVIDERS")
    if not isinstance(configured, dict) or not configured:
        error = checks.Error("LLM_PROVIDERS must be a non-empty dict.", hint=PROVIDER_HINT, id="llmapp.E001")
        return {}, [error]
    backends, messages = {}, []
    for alias, config in configured.items():
        where = f"LLM_PROVIDERS[{alias!r}]"
        if not isinstance(config, dict) or "BACKEND" not in config or set(config) - PROVIDER_KEYS:
            messages.append(
                checks.Error(f"{where} is not a valid provider config.", hint=PROVIDER_HINT, id="llmapp.E001")
            )
            continue
        try:
            cls = providers.backend_class(alias, config)
        except ConfigurationError as exc:
            messages.append(
                checks.Error(
                    str(exc), hint="Fix the import string, or install the package it names.", id="llmapp.E002"
                )
            )
            continue
        try:
            check_entry(alias, config)
        except ConfigurationError as exc:
            messages.append(checks.Error(str(exc), hint=PROVIDER_HINT, id="llmapp.E001"))
            continue
        options = config.get("OPTIONS") or {}
        known = {key: value for key, value in options.items() if key in cls.option_names}
        backends[alias] = cls(alias, options=known, models=config.get("MODELS"))
        unknown = sorted(set(options) - cls.option_names)
        if unknown:
            messages.append(
                checks.Error(
                    f"{where}['OPTIONS'] has unknown key(s) {', '.join(unknown)} for {cls.__name__}.",
                    hint=f"Known options: {', '.join(sorted(cls.option_names)) or 'none'}.",
                    id="llmapp.E003",
                )
            )
    return backends, messages


def _check_usecases(backends):
    configured = conf.get_setting("LLM_USECASES")
    if not isinstance(configured, dict):
        return [
            checks.Error(
                "LLM_USECASES must be a dict of use-case name to a dict of fields.",
                hint='For example {"summarize": {"PROVIDER": "openai", "MODEL": "gpt-4o-mini"}}.',
                id="llmapp.E006",
            )
        ]
    providers_config = conf.get_setting("LLM_PROVIDERS") or {}
    names = dict.fromkeys([*BUILTIN_USECASES, *_code_usecases, *configured])
    read_env = conf.get_setting("LLM_USECASE_ENV_OVERRIDES")
    messages, providers_used = [], set()
    for name in names:
        try:
            usecase = _resolve(name, configured.get(name) or {}, read_env)
        except ConfigurationError as exc:
            messages.append(checks.Error(str(exc), hint="Fix the use case's fields.", id="llmapp.E006"))
            continue
        messages += _check_usecase_values(usecase)
        if usecase.provider not in providers_config:
            messages.append(
                checks.Error(
                    # redact(): the name may be a key pasted into LLM_<USECASE>_PROVIDER.
                    redact(
                        f"Use case {name!r} names provider {usecase.provider!r} "
                        f"({usecase.origin('PROVIDER')}), which LLM_PROVIDERS does not configure."
                    ),
                    hint=redact(
                        f"Use one of {', '.join(map(repr, providers_config))}, or add {usecase.provider!r} "
                        "to LLM_PROVIDERS."
                    ),
                    id="llmapp.E004",
                )
            )
            continue
        for spec in usecase.fallbacks:
            alias = str(spec).partition(":")[0]
            if alias not in providers_config:
                messages.append(
                    checks.Error(
                        f"Use case {name!r} falls back to provider {alias!r} "
                        f"({usecase.origin('FALLBACKS')}), which LLM_PROVIDERS does not configure.",
                        hint='FALLBACKS lists "provider" or "provider:model" of configured providers.',
                        id="llmapp.E004",
                    )
                )
        backend = backends.get(usecase.provider)
        if backend is None:
            continue  # its own problem is reported above
        providers_used.add(usecase.provider)
        model = usecase.model or backend.model
        if backend.models and model not in backend.models:
            messages.append(
                checks.Error(
                    f"Use case {name!r} asks for model {model!r}, which provider {usecase.provider!r} does "
                    "not allow.",
                    hint=f"Use one of its MODELS ({', '.join(backend.models)}), or add {model!r} to them.",
                    id="llmapp.E005",
                )
            )
    # A provider no use case relies on may lack its SDK or key without harm.
    for alias in sorted(providers_used):
        backend = backends[alias]
        if not backend.sdk_installed():
            messages.append(
                checks.Warning(
                    f"LLM_PROVIDERS[{alias!r}] needs the {backend.package!r} package, "
                    "which is not installed.",
                    hint=f'Run pip install "llmapp[{backend.extra}]".',
                    id="llmapp.W002",
                )
            )
        messages += backend.check()
    return messages


def _check_usecase_values(usecase):
    messages = []
    if not is_valid_temperature(usecase.temperature):
        messages.append(
            checks.Error(
                f"Use case {usecase.name!r} has TEMPERATURE {usecase.temperature!r} "
                f"({usecase.origin('TEMPERATURE')}).",
                hint="Use a number from 0 to 1; llmapp maps it onto each provider's range.",
                id="llmapp.E011",
            )
        )
    timeout = usecase.timeout
    if not is_valid_timeout(timeout):
        messages.append(
            checks.Error(
                f"Use case {usecase.name!r} has TIMEOUT {timeout!r} ({usecase.origin('TIMEOUT')}).",
                hint=f"Use a number of seconds above 0 and at most {MAX_TIMEOUT}: the deadline over all "
                "attempts and fallbacks.",
                id="llmapp.E012",
            )
        )
    retries = usecase.retries
    if not is_valid_retries(retries):
        messages.append(
            checks.Error(
                f"Use case {usecase.name!r} has RETRIES {retries!r} ({usecase.origin('RETRIES')}).",
                hint="Use a whole number from 0 up.",
                id="llmapp.E013",
            )
        )
    if not is_valid_max_output_tokens(usecase.max_output_tokens):
        messages.append(
            checks.Error(
                f"Use case {usecase.name!r} has MAX_OUTPUT_TOKENS {usecase.max_output_tokens!r} "
                f"({usecase.origin('MAX_OUTPUT_TOKENS')}).",
                hint="Use a positive whole number.",
                id="llmapp.E014",
            )
        )
    return messages
