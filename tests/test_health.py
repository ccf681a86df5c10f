import sys

import pytest

from llmapp.admin.health import provider_health
from llmapp.providers.base import BaseProvider
from tests.conftest import API_KEY


class NeedsMissingSDK(BaseProvider):
    option_names = frozenset({"api_key"})
    package = "llmapp_tests_no_such_sdk"
    extra = "nosuch"


class ExplodingSDK(BaseProvider):
    """Its SDK raises when imported: health must find it without importing it."""

    option_names = frozenset()
    package = "llmapp_tests_exploding_sdk"
    extra = "exploding"


def configure(settings, alias, backend, **options):
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, alias: {"BACKEND": backend, "OPTIONS": options}}


def test_the_preview_provider_is_healthy():
    health = provider_health("default")
    assert health.ok and health.problems == []
    assert health.importable and health.extra_installed
    assert (health.backend, health.package, health.needs_key) == (
        "llmapp.providers.preview.PreviewProvider",
        None,
        False,
    )
    assert health.default_model == "preview"


def test_openai_with_a_key_shows_it_masked_and_url_credentials_removed(settings):
    configure(
        settings,
        "openai",
        "llmapp.providers.openai.OpenAIProvider",
        api_key=API_KEY,
        base_url="https://user:pa55word@llm.example.com/v1",
        default_headers={"Authorization": f"Bearer {API_KEY}", "X-Team": "ops"},
        token_limit_parameter="max_tokens",
    )
    health = provider_health("openai")
    # The HTTP client sends URL credentials as Authorization: Basic, in place of the key's Bearer.
    [problem] = health.problems
    assert "base_url'] carries credentials" in problem and "the API key is not sent" in problem
    assert (health.needs_key, health.key_present, health.masked_key) == (True, True, "••••" + API_KEY[-4:])
    assert health.package == "openai" and health.extra_installed
    assert health.base_url == "https://••••@llm.example.com/v1"
    assert health.options["api_key"] == "••••" + API_KEY[-4:]
    assert health.options["base_url"] == "https://••••@llm.example.com/v1"
    # Every custom header's value is a secret unless the header is a well-known public one.
    assert health.options["default_headers"] == {
        "Authorization": "Bearer ••••" + API_KEY[-4:],
        "X-Team": "••••",
    }
    # Only the backend's secret options are masked, not every name that mentions a token.
    assert health.options["token_limit_parameter"] == "max_tokens"
    assert API_KEY not in repr(health) and "pa55word" not in repr(health)


def test_the_key_can_come_from_the_environment(settings, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-1234")
    configure(settings, "openai", "llmapp.providers.openai.OpenAIProvider")
    health = provider_health("openai")
    assert health.ok
    assert health.key_present and health.masked_key == "••••1234"


def test_a_missing_key_is_a_problem(settings, monkeypatch):
    configure(settings, "openai", "llmapp.providers.openai.OpenAIProvider", api_key="")
    health = provider_health("openai")
    assert not health.ok
    assert (health.key_present, health.masked_key) == (False, "")
    [problem] = health.problems
    assert "has no API key: set OPENAI_API_KEY" in problem
    assert "Calls to this provider will fail until this is fixed." in problem  # the check's hint


def test_a_local_server_needs_no_key(settings, monkeypatch):
    configure(
        settings, "local", "llmapp.providers.openai.OpenAIProvider", base_url="http://127.0.0.1:11434/v1"
    )
    health = provider_health("local")
    assert health.ok
    assert not health.key_present


def test_a_backend_that_cannot_be_imported(settings):
    configure(settings, "broken", "llmapp.providers.nope.NopeProvider")
    health = provider_health("broken")
    assert not health.importable and not health.ok
    assert "cannot be imported" in health.problems[0]
    assert health.backend == "llmapp.providers.nope.NopeProvider"


def test_a_missing_sdk_gives_the_pip_command(settings):
    configure(settings, "missing", f"{__name__}.NeedsMissingSDK", api_key="k" * 20)
    health = provider_health("missing")
    assert health.importable and not health.extra_installed
    assert any('pip install "llmapp[nosuch]"' in problem for problem in health.problems)
    assert health.masked_key == "••••kkkk"


def test_an_sdk_too_old_gives_the_upgrade_command(settings):
    configure(settings, "future", "tests.test_checks.FutureOpenAIProvider", api_key="k" * 20)
    health = provider_health("future")
    assert health.extra_installed
    assert any("999.1 or newer" in p and 'pip install -U "llmapp[openai]"' in p for p in health.problems)


def test_the_sdk_is_found_without_being_imported(settings, tmp_path, monkeypatch):
    package = tmp_path / "llmapp_tests_exploding_sdk"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    configure(settings, "exploding", f"{__name__}.ExplodingSDK")
    health = provider_health("exploding")
    assert health.ok and health.extra_installed
    assert "llmapp_tests_exploding_sdk" not in sys.modules


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"OPTIONS": {}}, "must be a dict with a 'BACKEND' import string"),
        (
            {"BACKEND": "llmapp.providers.preview.PreviewProvider", "OPTIONS": {"api_key": "x"}},
            "unknown key(s)",
        ),
    ],
)
def test_bad_configuration_is_reported_not_raised(settings, config, expected):
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "bad": config}
    health = provider_health("bad")
    assert not health.ok
    assert expected in health.problems[0]


def test_an_unknown_alias():
    health = provider_health("nowhere")
    assert not health.ok and not health.importable
    assert "LLM_PROVIDERS has no provider 'nowhere'" in health.problems[0]
