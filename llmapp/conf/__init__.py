"""Read llmapp's settings, with their defaults, in one place.

Every ``LLM_*`` setting is read through :func:`get_setting`. Modules that cache
state derived from settings register a reset with :func:`on_change`, so
``override_settings`` and pytest-django's ``settings`` fixture just work.
"""

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS = {
    "LLM_PROVIDERS": {
        "default": {"BACKEND": "llmapp.providers.preview.PreviewProvider"},
    },
    "LLM_USECASES": {},
    # Read LLM_<USECASE>_<FIELD> variables (LLM_SUMMARIZE_PROVIDER=openai) over settings.
    "LLM_USECASE_ENV_OVERRIDES": True,
    # Use-case fields changed in the admin or over the API (llmapp.conf.overrides), over settings.
    "LLM_USECASE_OVERRIDES": True,
    # Which fields those may change; None: every one of overrides.EDITABLE_FIELDS.
    "LLM_EDITABLE_FIELDS": None,
    "LLM_EVENTSTREAM": "database",
    # The event stream's keyword arguments; for "database": queue_size, batch_size,
    # max_wait, synchronous and timeout (llmapp.eventstream.database.DEFAULTS).
    "LLM_EVENTSTREAM_OPTIONS": {},
    "LLM_TSDB": "database",
    "LLM_LOG_CONTENT": False,
    "LLM_METRICS_BACKEND": "llmapp.metrics.dummy.DummyMetricsBackend",
    "LLM_METRICS_OPTIONS": {},
    "LLM_METRICS_QUEUE_SIZE": 10_000,
    "LLM_SKIP_BACKEND_VALIDATION": False,
    "LLM_LOG_LEVEL": None,
    # The cache alias that holds circuit-breaker state; share it across workers.
    "LLM_CIRCUIT_BREAKER_CACHE": "default",
    # The cache that holds budgets (and rate limits) for every worker.
    "LLM_LIMITS_CACHE": "default",
    # Seconds a call waits at most for one operation on that cache; past it, calls go on without it.
    "LLM_CACHE_TIMEOUT": 0.25,
    # The Tasks-framework queue that `manage.py llm --enqueue` sends batch items to.
    "LLM_BATCH_QUEUE": "default",
    "SENTRY_SDK_CONFIG": {},
    "SENTRY_SDK_UPSTREAM_METRICS_ENABLED": False,
}

_resets = []


def get_setting(name):
    """Return the setting ``name``, or llmapp's default for it."""
    return getattr(settings, name, DEFAULTS[name])


def on_change(reset):
    """Call ``reset()`` whenever an ``LLM_*`` setting changes; usable as a decorator."""
    _resets.append(reset)
    return reset


def reset_all():
    for reset in _resets:
        reset()


@receiver(setting_changed)
def _setting_changed(*, setting, **kwargs):
    if setting.startswith("LLM_"):
        reset_all()
