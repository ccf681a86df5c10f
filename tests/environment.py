"""The environment of a manage.py child process, isolated from the developer's own."""

import os
import signal

# A developer's own configuration must reach neither a test's nor a benchmark's child.
ISOLATED_VARIABLES = (
    "LLM_",
    "OPENAI_",
    "ANTHROPIC_",
    "GEMINI_",
    "GOOGLE_",
    "SENTRY_",
    "DJANGO_",
    "DATABASE_URL",
    "CACHE_URL",
    "STATSD_",
)


#: Kept in the test process itself: how it was started (pytest-django's settings module, the
#: database a PostgreSQL run names) and what CI requires of it.
PROCESS_VARIABLES = ("DJANGO_", "DATABASE_URL", "LLM_REQUIRE_", "LLM_TEST_")


def developer_variables():
    """The names of the variables that configure this project, bar the test process's own."""
    return [
        name
        for name in os.environ
        if name.startswith(ISOLATED_VARIABLES) and not name.startswith(PROCESS_VARIABLES)
    ]


def isolated_environ():
    """Return a copy of os.environ without the variables that configure this project."""
    return {key: value for key, value in os.environ.items() if not key.startswith(ISOLATED_VARIABLES)}


def interruptible():
    """A child's ``preexec_fn``: Ctrl-C (SIGINT) reaches it as it would from a terminal.

    A suite started in the background (``pytest &``, CI's runs side by side) inherits
    SIGINT ignored, and so would its children: Python then never raises KeyboardInterrupt.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
