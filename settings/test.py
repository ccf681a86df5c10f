"""The test suite's settings: fast, isolated from the developer's shell and .env."""

from .base import *  # noqa: F403
from .base import env

DEBUG = False
SECRET_KEY = "test-secret-key-not-for-production"  # noqa: S105
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DATABASES = {"default": env.db("DATABASE_URL", default="sqlite://:memory:")}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

LLM_PROVIDERS = {
    "default": {"BACKEND": "llmapp.providers.preview.PreviewProvider"},
    "test": {"BACKEND": "llmapp.providers.locmem.LocmemProvider"},
}
LLM_USECASES = {}
# A developer's LLM_SUMMARIZE_PROVIDER must not change what the tests see.
LLM_USECASE_ENV_OVERRIDES = False
LLM_METRICS_BACKEND = "llmapp.metrics.dummy.DummyMetricsBackend"
SENTRY_SDK_CONFIG = {}
LLM_EVENTSTREAM = "database"
LLM_TSDB = "database"
LLM_LOG_CONTENT = False
