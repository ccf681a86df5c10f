"""initialize_app(): what LlmAppConfig.ready() runs once per process.

The order follows Sentry's own start-up: options, logging, validation of options
and backends, the SDK, then services. Nothing here touches the database or the
network, and nothing raises: a misconfiguration is reported the way Django reports
its own checks, and calls of a misconfigured use case fail with one line.
"""

import contextlib
import logging
import os
import sys

from llmapp import conf

logger = logging.getLogger("llmapp")

_initialized = False


def initialize_app():
    """Bring up llmapp once per process; report its configuration problems, never raise."""
    global _initialized
    if _initialized:
        return
    _initialized = True
    bootstrap_options()
    configure_logging()
    # manage.py commands run the system checks themselves (runserver and migrate list
    # them and stop on errors), or are there to inspect and repair (check, shell,
    # showmigrations): only servers and scripts need the start-up report.
    report = not in_management_command()
    if report:
        report_problems()

    from llmapp.sentry import configure_sdk

    configure_sdk()
    setup_services(report)


def bootstrap_options():
    """Resolve the effective use cases (settings plus environment) once, up front."""
    from llmapp.conf.usecases import get_usecases
    from llmapp.exceptions import ConfigurationError

    # A bad value is reported by the checks, with a hint.
    with contextlib.suppress(ConfigurationError):
        get_usecases()


def configure_logging():
    level = conf.get_setting("LLM_LOG_LEVEL")
    if level:
        logging.getLogger("llmapp").setLevel(level)


def skip_backend_validation():
    flag = os.environ.get("LLM_SKIP_BACKEND_VALIDATION", "")
    return flag.lower() in {"1", "true", "yes", "on"} or bool(conf.get_setting("LLM_SKIP_BACKEND_VALIDATION"))


def report_problems():
    """Log each error-level problem that SILENCED_SYSTEM_CHECKS does not silence, one line each."""
    from llmapp.conf.checks import collect_problems, validate_backends, validate_options

    problems = collect_problems(
        (validate_options,) if skip_backend_validation() else (validate_options, validate_backends)
    )
    errors = [problem for problem in problems if problem.is_serious() and not problem.is_silenced()]
    for error in errors:
        hint = f" HINT: {error.hint}" if error.hint else ""
        logger.error("(%s) %s%s", error.id, error.msg, hint)
    return errors


def setup_services(report=True):
    """Build the metrics backend, the event stream and the TSDB, so a bad one shows now."""
    from llmapp import eventstream, metrics, tsdb
    from llmapp.exceptions import ConfigurationError

    for build in (metrics.get_backend, eventstream.get_eventstream, tsdb.get_tsdb):
        try:
            build()
        except ConfigurationError as exc:
            if report:
                logger.error("%s", exc)


def in_management_command():
    """Say whether this process is running a manage.py (or django-admin) command."""
    from django.core.management import ManagementUtility

    return called_from(ManagementUtility.execute)


def called_from(function):
    """Say whether ``function`` is on the current call stack."""
    code = function.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False
