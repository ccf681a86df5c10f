"""initialize_app(): what LlmAppConfig.ready() runs once per process.

The order follows Sentry's own start-up: options, logging, validation of options
and backends, the SDK, then services. Nothing here touches the database or the
network, so it behaves the same under manage.py, WSGI, ASGI and the tests.
"""

import contextlib
import logging
import os
import sys

from django.conf import settings

from . import conf

logger = logging.getLogger("llmapp")

_initialized = False


def initialize_app():
    """Bring up llmapp once per process; under DEBUG, refuse to start misconfigured."""
    global _initialized
    if _initialized:
        return
    _initialized = True
    from .checks import validate_backends, validate_options

    bootstrap_options()
    configure_logging()
    problems = validate_options()
    if not skip_backend_validation():
        problems += validate_backends()
    errors = [problem for problem in problems if problem.is_serious()]
    if errors and not _running_check_command():
        if settings.DEBUG:
            from .exceptions import ConfigurationError

            listed = "; ".join(f"({error.id}) {error.msg} {error.hint or ''}".strip() for error in errors)
            raise ConfigurationError(f"llmapp is misconfigured: {listed}")
        for error in errors:
            logger.error("%s: %s %s", error.id, error.msg, error.hint or "")

    from .sdk import configure_sdk

    configure_sdk()
    setup_services()


def bootstrap_options():
    """Resolve the effective use cases (settings plus environment) once, up front."""
    from .exceptions import ConfigurationError
    from .usecases import get_usecases

    # A bad value is reported by validate_options(), with a hint.
    with contextlib.suppress(ConfigurationError):
        get_usecases()


def configure_logging():
    level = conf.get_setting("LLM_LOG_LEVEL")
    if level:
        logging.getLogger("llmapp").setLevel(level)


def skip_backend_validation():
    flag = os.environ.get("LLM_SKIP_BACKEND_VALIDATION", "")
    return flag.lower() in {"1", "true", "yes", "on"} or bool(conf.get_setting("LLM_SKIP_BACKEND_VALIDATION"))


def setup_services():
    """Build the metrics backend, the event stream and the TSDB, so a bad one shows now."""
    from . import eventstream, metrics, tsdb
    from .exceptions import ConfigurationError

    for build in (metrics.get_backend, eventstream.get_eventstream, tsdb.get_tsdb):
        try:
            build()
        except ConfigurationError as exc:
            logger.error("%s", exc)


def _running_check_command():
    # `manage.py check` must list every problem rather than stop at start-up.
    return len(sys.argv) > 1 and sys.argv[1] == "check"
