"""The environment of a manage.py child process, isolated from the developer's own."""

import os

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


def isolated_environ():
    """Return a copy of os.environ without the variables that configure this project."""
    return {key: value for key, value in os.environ.items() if not key.startswith(ISOLATED_VARIABLES)}
