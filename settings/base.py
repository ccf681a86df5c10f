"""Settings shared by every environment; values come from the environment or `.env`.

`llmapp.runner.configure()` reads the `.env` file into the environment before
Django imports this module, so everything here is a plain `env(...)` read.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

SECRET_KEY = env("DJANGO_SECRET_KEY", default="django-insecure-llmapp-development-only")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
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
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

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
            "timeout": env.float("OPENAI_TIMEOUT", default=30),
        },
        "MODELS": env.list("OPENAI_MODELS", default=[]),
    },
}

# Use cases: override a built-in (summarize, example) or add your own. Any field can
# also be set from the environment alone: LLM_SUMMARIZE_PROVIDER=openai,
# LLM_SUMMARIZE_MODEL=llama3.2, LLM_SUMMARIZE_TEMPERATURE=0.3, ...
LLM_USECASES = {}
