"""configure() before Django starts, and initialize_app() from LlmAppConfig.ready()."""

import mimetypes
import subprocess
import sys
import warnings

import pytest

from llmapp.conf import startup
from llmproject import runner
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda path: None, "does not exist"),
        (lambda path: path.mkdir(), "is a directory, not a file"),
        (lambda path: path.write_bytes(b"LLM_X=\xff\n"), "is not UTF-8 text"),
    ],
)
def test_an_env_file_that_cannot_be_read_stops_with_one_line_naming_it(manage, tmp_path, make, problem):
    named = tmp_path / "named.env"
    make(named)
    result = manage("llm", "--list", env={"LLM_ENV_FILE": str(named)})
    assert result.returncode == 1
    assert result.stderr == (
        f"llmapp: LLM_ENV_FILE names {named}, which {problem}; "
        "point LLM_ENV_FILE at a readable file or unset it.\n"
    )


def test_env_file_values_apply_and_the_environment_wins(manage):
    manage.env_file.write_text("LLM_SUMMARIZE_MAX_OUTPUT_TOKENS=3\nLLM_EXAMPLE_MAX_OUTPUT_TOKENS=3\n")
    result = manage("llm", "summarize", "-m", "One two three four five.", "--json")
    assert result.returncode == 0, result.stderr
    assert '"finish_reason": "length"' in result.stdout
    result = manage(
        "llm",
        "summarize",
        "-m",
        "One two three four five.",
        "--json",
        env={"LLM_SUMMARIZE_MAX_OUTPUT_TOKENS": "50"},
    )
    assert '"finish_reason": "stop"' in result.stdout


def test_configure_runs_once_shows_llmapp_warnings_and_adds_mimetypes(monkeypatch, tmp_path):
    env_file = tmp_path / "a.env"
    env_file.write_text("LLMAPP_TEST_FROM_FILE=yes\n")
    monkeypatch.setenv("LLM_ENV_FILE", str(env_file))
    monkeypatch.setattr(runner, "_configured", False)
    monkeypatch.delenv("LLMAPP_TEST_FROM_FILE", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        runner.configure("settings.test")
        import os

        assert os.environ.pop("LLMAPP_TEST_FROM_FILE") == "yes"
        runner.configure("settings.test")  # a second call reads nothing again
        assert "LLMAPP_TEST_FROM_FILE" not in os.environ
        for _ in range(2):
            warnings.warn("shown every time", runner.LLMAppWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["shown every time"] * 2
    assert mimetypes.guess_type("app.js.map")[0] == "application/json"
    assert mimetypes.guess_type("font.woff2")[0] == "font/woff2"


def test_initialize_app_touches_no_database_and_runs_once(monkeypatch):
    # No django_db mark: any query here would fail the test.
    calls = []
    monkeypatch.setattr(startup, "_initialized", False)
    monkeypatch.setattr(startup, "setup_services", lambda report: calls.append("services"))
    startup.initialize_app()
    startup.initialize_app()
    assert calls == ["services"]


@pytest.mark.parametrize("debug", [True, False])
def test_start_up_logs_each_error_once_and_raises_nothing(settings, monkeypatch, caplog, debug):
    monkeypatch.setattr(startup, "_initialized", False)
    settings.DEBUG = debug
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "nope"}}
    settings.LLM_EVENTSTREAM = "logging"
    settings.LLM_TSDB = "database"
    startup.initialize_app()
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 2
    assert errors[0].startswith("(llmapp.E004) unknown provider 'nope' (use case 'summarize'")
    assert "HINT: Name one of those, or add 'nope' to LLM_PROVIDERS." in errors[0]
    assert errors[1].startswith("(llmapp.E008) LLM_TSDB reads usage from the database")


def test_silenced_checks_and_skipped_backend_validation_are_not_logged(settings, monkeypatch, caplog):
    monkeypatch.setattr(startup, "_initialized", False)
    monkeypatch.setenv("LLM_SKIP_BACKEND_VALIDATION", "1")
    settings.SILENCED_SYSTEM_CHECKS = ["llmapp.E004"]
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "nope"}}
    settings.LLM_EVENTSTREAM = "logging"
    settings.LLM_TSDB = "database"
    startup.initialize_app()
    assert "llmapp.E0" not in caplog.text


def test_a_misconfigured_backend_stops_no_command(manage):
    env = {"LLM_EVENTSTREAM": "logging", "LLM_TSDB": "database"}
    result = manage("llm", "summarize", "-m", "hi", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[preview answer")
    result = manage("check", env=env)
    assert result.returncode == 1
    assert "(llmapp.E008) LLM_TSDB reads usage from the database" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module", ["llmproject.wsgi", "llmproject.asgi"])
def test_wsgi_and_asgi_initialize_the_app(module, tmp_path):
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    code = (
        f"import {module} as entry, llmapp.conf.startup as s;"
        "print(type(entry.application).__name__, s._initialized)"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "LLM_ENV_FILE": str(env_file),
        "DJANGO_SECRET_KEY": "x" * 50,
        "DJANGO_ALLOWED_HOSTS": "example.com",
    }
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1] == "True"
