import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmapp.providers import locmem
from tests.fakes.openai_server import fake_openai  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
# Shaped like a real key so that key-shaped redaction is exercised too.
API_KEY = "sk-test-9f8e7d6c5b4a39281706SECRET"


@pytest.fixture(autouse=True)
def _empty_locmem():
    locmem.reset()
    yield
    locmem.reset()


@pytest.fixture
def openai_provider(settings, fake_openai):  # noqa: F811
    """Point an 'openai' provider at the fake OpenAI server; return the server."""
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "openai": {
            "BACKEND": "llmapp.providers.openai.OpenAIProvider",
            "OPTIONS": {"api_key": API_KEY, "base_url": fake_openai.base_url, "timeout": 3},
        },
    }
    return fake_openai


@pytest.fixture
def manage(tmp_path):
    """Run manage.py in a subprocess as a user would, isolated from the developer's .env."""
    env_file = tmp_path / "test.env"
    env_file.write_text("")

    def run(*args, env=None, input=None, timeout=60):
        full_env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("LLM_", "OPENAI_", "SENTRY_", "DJANGO_"))
        }
        full_env |= {"LLM_ENV_FILE": str(env_file), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
        full_env |= env or {}
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            capture_output=True,
            text=True,
            env=full_env,
            input=input,
            timeout=timeout,
            cwd=ROOT,
        )

    return run
