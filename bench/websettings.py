"""Settings of the web benchmark's uvicorn servers: the host project's, plus two views.

The database is the host project's as settings.base builds it from ``DATABASE_URL``
(CONN_MAX_AGE 60; SQLite in WAL), events go to the default ``database`` stream with
its default options, and the openai provider is the host project's, pointed at the
fake server by ``OPENAI_BASE_URL``. DEBUG is off, as in production.
"""

import os

from settings.base import *  # noqa: F403
from settings.base import DATABASES

from .harness import PROMPT, USECASE

DEBUG = False
ROOT_URLCONF = "bench.webapp"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

LLM_USECASES = {USECASE: {"PROVIDER": "openai", "MODEL": "gpt-4o-mini", "PROMPT": PROMPT}}
LLM_EVENTSTREAM = "database"
LLM_TSDB = "database"

if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # The benchmark counts this server's connections in pg_stat_activity by this name.
    DATABASES["default"].setdefault("OPTIONS", {})["application_name"] = os.environ.get(
        "BENCH_APPLICATION_NAME", "llmapp-bench"
    )
