"""The test suite's settings: fast, isolated from the developer's shell and .env."""

import os

from llmproject.envvars import database_url, from_env

from .base import *  # noqa: F403

DEBUG = False
SECRET_KEY = "test-secret-key-not-for-production"  # noqa: S105
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DATABASES = {"default": from_env("DATABASE_URL", database_url, default=database_url("sqlite://:memory:"))}
if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
    # A test database of this run's own: runs sharing a server (CI jobs, several checkouts)
    # would otherwise create, use and drop the same test_<NAME>.
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
    # Usage events are written synchronously here (below): connecting must be bounded too.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 10)
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
# Inline, in each test's transaction, so that a test sees its events and rolls them back;
# the writer thread (the default) has tests of its own.
LLM_EVENTSTREAM_OPTIONS = {"synchronous": True}
LLM_TSDB = "database"
LLM_LOG_CONTENT = False
