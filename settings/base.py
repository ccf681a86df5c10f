"""Settings shared by every environment; values come from the environment or `.env`.

`llmproject.runner.configure()` reads the `.env` file into the environment before
Django imports this module, so everything here is a plain `env(...)` read; a typed
value goes through `from_env()`, which refuses a malformed one in one line.
"""

from pathlib import Path

from llmproject.envvars import cache_url, database_url, env, flag, fraction, from_env, one_of, seconds

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = env("DJANGO_SECRET_KEY", default="django-insecure-llmapp-development-only")
DEBUG = from_env("DJANGO_DEBUG", flag, default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "llmapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Django's DEBUG page lists every setting: this filter also masks URL credentials
# (OPENAI_BASE_URL=http://user:pass@host) and custom header values.
DEFAULT_EXCEPTION_REPORTER_FILTER = "llmapp.debug.SafeExceptionReporterFilter"

ROOT_URLCONF = "llmproject.urls"
WSGI_APPLICATION = "llmproject.wsgi.application"
ASGI_APPLICATION = "llmproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": from_env(
        "DATABASE_URL", database_url, default=database_url(f"sqlite:///{BASE_DIR}/db.sqlite3")
    ),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Every call inserts a usage event, from many threads in a batch run. WAL lets
    # readers and a writer work at once, synchronous=NORMAL skips the fsync of each
    # commit (WAL stays consistent; a power cut may lose the last commits), and
    # IMMEDIATE takes the write lock up front, so that writers queue rather than fail.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        **DATABASES["default"].get("OPTIONS", {}),
    }
# Keep connections between requests and batch items rather than reconnecting each time.
DATABASES["default"].setdefault(
    "CONN_MAX_AGE", from_env("CONN_MAX_AGE", int, default=60, expected="a whole number of seconds, e.g. 60")
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": from_env("CACHE_URL", cache_url, default=cache_url("locmemcache://"))}
# How long a call waits for that cache (circuit breaker, limits, overrides' version) before
# it goes on without it.
LLM_CACHE_TIMEOUT = from_env("LLM_CACHE_TIMEOUT", seconds, default=0.25)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- llmapp -----------------------------------------------------------------
# Providers by alias, like CACHES: BACKEND is an import string, OPTIONS its keyword
# arguments, MODELS an optional allow-list. "default" is the offline preview.
LLM_PROVIDERS = {
    "default": {"BACKEND": "llmapp.providers.preview.PreviewProvider"},
    "openai": {
        "BACKEND": "llmapp.providers.openai.OpenAIProvider",
        "OPTIONS": {
            "api_key": env("OPENAI_API_KEY", default=""),
            "base_url": env("OPENAI_BASE_URL", default=None),
            "model": env("OPENAI_MODEL", default="gpt-4o-mini"),
            "timeout": from_env("OPENAI_TIMEOUT", seconds, default=30),
        },
        "MODELS": env.list("OPENAI_MODELS", default=[]),
    },
    "anthropic": {
        "BACKEND": "llmapp.providers.anthropic.AnthropicProvider",
        "OPTIONS": {
            "api_key": env("ANTHROPIC_API_KEY", default=""),
            "base_url": env("ANTHROPIC_BASE_URL", default=None),
            "model": env("ANTHROPIC_MODEL", default="claude-sonnet-5-5"),
        },
    },
    "gemini": {
        "BACKEND": "llmapp.providers.gemini.GeminiProvider",
        "OPTIONS": {
            "api_key": env("GEMINI_API_KEY", default=""),
            "vertexai": from_env("GEMINI_VERTEXAI", flag, default=False),
            "project": env("GOOGLE_CLOUD_PROJECT", default=None),
            "location": env("GOOGLE_CLOUD_LOCATION", default=None),
            "model": env("GEMINI_MODEL", default="gemini-2.5-flash"),
        },
    },
}

# Use cases: override a built-in (summarize, example) or add your own. Any field can
# also be set from the environment alone: LLM_SUMMARIZE_PROVIDER=openai,
# LLM_SUMMARIZE_MODEL=llama3.2, LLM_SUMMARIZE_TEMPERATURE=0.3, ...
LLM_USECASES = {}

# Usage events: where each call is recorded (database, logging, null) and what reads
# them back for the admin and the CLI (database, null). Prompts and answers are kept
# only with LLM_LOG_CONTENT=true: they may hold personal data.
LLM_EVENTSTREAM = env("LLM_EVENTSTREAM", default="database")
LLM_TSDB = env("LLM_TSDB", default="database")
LLM_LOG_CONTENT = from_env("LLM_LOG_CONTENT", flag, default=False)

# Metrics: dummy (default), logging, or DogStatsD over UDP.
LLM_METRICS_BACKEND = env("LLM_METRICS_BACKEND", default="llmapp.metrics.dummy.DummyMetricsBackend")
LLM_METRICS_OPTIONS = (
    {
        "host": env("STATSD_HOST", default="127.0.0.1"),
        "port": from_env("STATSD_PORT", int, default=8125, expected="a port number, e.g. 8125"),
    }
    if LLM_METRICS_BACKEND.endswith("StatsdMetricsBackend")
    else {}
)

# Sentry: errors and traces go to SENTRY_DSN and, when set, also to a Relay at
# SENTRY_RELAY_DSN. Nothing is sent (and sentry_sdk is not even imported) without a DSN.
SENTRY_SDK_CONFIG = {
    "dsn": env("SENTRY_DSN", default=None),
    "relay_dsn": env("SENTRY_RELAY_DSN", default=None),
    "environment": env("SENTRY_ENVIRONMENT", default="development"),
    "traces_sample_rate": from_env("SENTRY_TRACES_SAMPLE_RATE", fraction, default=0.0),
}
send_default_pii = from_env("SENTRY_SEND_DEFAULT_PII", flag, default=None)
if send_default_pii is not None:
    # Also attaches prompts and answers to the gen_ai spans.
    SENTRY_SDK_CONFIG["send_default_pii"] = send_default_pii
SENTRY_SDK_UPSTREAM_METRICS_ENABLED = from_env("SENTRY_SDK_UPSTREAM_METRICS_ENABLED", flag, default=False)

# Batch tasks: where `manage.py llm USECASE --input FILE --enqueue` runs its items.
# immediate (the default): in the enqueuing process, no worker needed. rq: RQ workers on
# Redis (pip install "llmapp[rq]"). database: workers polling this database
# (pip install "llmapp[tasks-db]"). On Django 6 the framework is built in (django.tasks).
TASKS_MODE = from_env("TASKS_MODE", one_of("immediate", "rq", "database"), default="immediate")
if TASKS_MODE == "rq":
    INSTALLED_APPS += ["django_tasks", "django_rq", "django_tasks_rq"]
    RQ_QUEUES = {
        # Seconds a job may run: longer than the slowest use case's TIMEOUT.
        "default": {"URL": env("REDIS_URL", default="redis://127.0.0.1:6379/0"), "DEFAULT_TIMEOUT": 360},
    }
    RQ = {"JOB_CLASS": "django_tasks_rq.Job"}  # so that a plain `manage.py rqworker` runs Django tasks
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}
elif TASKS_MODE == "database":
    INSTALLED_APPS += ["django_tasks", "django_tasks_db"]
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
# A queue of its own for LLM batches: set LLM_BATCH_QUEUE and add it to QUEUES (and RQ_QUEUES).
LLM_BATCH_QUEUE = env("LLM_BATCH_QUEUE", default="default")
