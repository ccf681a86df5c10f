"""Every validation rule, through `manage.py check` as an operator runs it."""

import importlib.machinery
import io
import re
import tomllib
from importlib.metadata import version

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from llmapp import complete_prompt
from llmapp.exceptions import ImproperlyInstalled
from llmapp.providers.anthropic import AnthropicProvider
from llmapp.providers.base import _release
from llmapp.providers.gemini import GeminiProvider
from llmapp.providers.openai import OpenAIProvider
from tests.conftest import ROOT

# Django 6.1's `check` asks the database whether it supports JSONField.
pytestmark = pytest.mark.django_db

OPENAI = "llmapp.providers.openai.OpenAIProvider"
LOCMEM = "llmapp.providers.locmem.LocmemProvider"


def check():
    """Run `check` and return (ids, full output); ids in the order reported."""
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        call_command("check", stdout=stdout, stderr=stderr)
        output = stdout.getvalue() + stderr.getvalue()
    except SystemCheckError as exc:
        output = str(exc)
    return re.findall(r"\((llmapp\.[\w.]+)\)", output), output


def test_the_shipped_configuration_passes():
    ids, output = check()
    assert ids == [], output


@pytest.mark.parametrize(
    ("providers", "expected", "text"),
    [
        ([], "llmapp.E001", "LLM_PROVIDERS must be a non-empty dict"),
        (
            {"default": {"OPTIONS": {}}},
            "llmapp.E015",
            "LLM_PROVIDERS['default'] must be a dict with a 'BACKEND' import string",
        ),
        (
            {"default": {"BACKEND": LOCMEM, "TIMEOUT": 5}},
            "llmapp.E015",
            "LLM_PROVIDERS['default'] has unknown key(s) TIMEOUT",
        ),
        (
            {"default": {"BACKEND": "nowhere.Provider"}},
            "llmapp.E002",
            "'nowhere.Provider' cannot be imported",
        ),
        (
            {"default": {"BACKEND": LOCMEM, "OPTIONS": {"api_kye": "x"}}},
            "llmapp.E003",
            "unknown key(s) api_kye for LocmemProvider",
        ),
        (
            {"default": {"BACKEND": LOCMEM, "MODELS": ["small"], "OPTIONS": {"model": "large"}}},
            "llmapp.E005",
            "model 'large' is not allowed for provider 'default'; its MODELS allow: small",
        ),
    ],
)
def test_provider_rules(settings, providers, expected, text):
    settings.LLM_PROVIDERS = providers
    ids, output = check()
    assert expected in ids
    assert text in output


def test_usecase_naming_an_unconfigured_provider(settings):
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "opneai"}}
    ids, output = check()
    assert ids == ["llmapp.E004"]
    assert (
        "unknown provider 'opneai' (use case 'summarize', from LLM_USECASES['summarize']['PROVIDER']); "
        "LLM_PROVIDERS has: default, test." in output
    )
    assert "HINT: Name one of those, or add 'opneai' to LLM_PROVIDERS." in output


def test_the_check_and_a_call_say_the_same(settings):
    from llmapp import complete_prompt
    from llmapp.exceptions import LLMError

    settings.LLM_USECASES = {"summarize": {"PROVIDER": "opneai"}, "example": {"TEMPERATURE": 3}}
    _, output = check()
    for usecase in ("summarize", "example"):
        with pytest.raises(LLMError) as raised:
            complete_prompt(usecase, "hi")
        assert str(raised.value) in output


def test_a_fallback_naming_an_unconfigured_provider(settings):
    settings.LLM_USECASES = {"summarize": {"FALLBACKS": ["test", "opneai:small"]}}
    ids, output = check()
    assert ids == ["llmapp.E021"]
    assert "falls back to unknown provider 'opneai'" in output


def test_usecase_field_values(settings, monkeypatch):
    settings.LLM_USECASES = {"summarize": {"TEMPERATURE": 1.5, "MAX_OUTPUT_TOKENS": 0}, "bad": {"TONE": "x"}}
    ids, output = check()
    # One id per problem: the temperature, the token limit, a field that is no field.
    assert sorted(ids) == ["llmapp.E011", "llmapp.E014", "llmapp.E019"]
    assert "temperature must be a number from 0 to 1, got 1.5" in output
    assert "max_output_tokens must be a positive whole number, got 0" in output
    assert "unknown field(s) TONE" in output


@pytest.mark.parametrize(
    ("usecases", "expected"),
    [(["summarize"], "llmapp.E006"), ({"Summarize!": {}}, "llmapp.E018"), ({"summarize": 5}, "llmapp.E019")],
)
def test_malformed_use_cases(settings, usecases, expected):
    settings.LLM_USECASES = usecases
    assert check()[0] == [expected]


def test_environment_values_are_checked_too(settings, monkeypatch):
    monkeypatch.setenv("LLM_EXAMPLE_MAX_OUTPUT_TOKENS", "many")
    settings.LLM_USECASE_ENV_OVERRIDES = True
    ids, output = check()
    assert ids == ["llmapp.E020"]
    assert "LLM_EXAMPLE_MAX_OUTPUT_TOKENS must be a whole number" in output and "many" not in output


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_a_timeout_that_is_no_number_of_seconds_is_an_error(settings, monkeypatch, value):
    monkeypatch.setenv("LLM_SUMMARIZE_TIMEOUT", value)
    settings.LLM_USECASE_ENV_OVERRIDES = True
    ids, output = check()
    assert ids == ["llmapp.E012"]
    assert f"got {float(value)!r} (use case 'summarize', from LLM_SUMMARIZE_TIMEOUT)" in output


def test_unknown_eventstream_or_tsdb(settings):
    settings.LLM_EVENTSTREAM = "kafka"
    settings.LLM_TSDB = "snuba.TSDB"
    ids, output = check()
    assert ids == ["llmapp.E007", "llmapp.E007"]
    assert "LLM_EVENTSTREAM = 'kafka' is neither one of 'database', 'logging', 'null'" in output


def test_database_tsdb_without_database_events_is_an_error(settings):
    settings.LLM_EVENTSTREAM = "logging"
    settings.LLM_TSDB = "database"
    ids, output = check()
    assert ids == ["llmapp.E008"]
    assert "no data will be written where it is read" in output


def test_database_events_with_null_tsdb_is_a_warning(settings):
    settings.LLM_EVENTSTREAM = "database"
    settings.LLM_TSDB = "null"
    ids, output = check()  # a warning: no SystemCheckError
    assert ids == ["llmapp.W001"]
    assert "the admin and the CLI will show no usage" in output


class FutureOpenAIProvider(OpenAIProvider):
    """The openai backend of a later llmapp, which needs a release of the SDK not out yet."""

    min_version = "999.1"


def test_an_sdk_older_than_the_backend_needs_is_a_warning_and_a_one_line_error(openai_provider, settings):
    settings.LLM_PROVIDERS["openai"]["BACKEND"] = "tests.test_checks.FutureOpenAIProvider"
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai"}}
    installed = version("openai")  # read from the real metadata, not mocked
    ids, output = check()
    assert ids == ["llmapp.W010"]
    expected = (
        f'needs openai 999.1 or newer, and {installed} is installed: run pip install -U "llmapp[openai]"'
    )
    assert expected in output
    with pytest.raises(ImproperlyInstalled, match=re.escape(expected)) as raised:
        complete_prompt("summarize", "hi")
    assert "\n" not in str(raised.value)
    assert openai_provider.requests == []  # refused before anything was sent


class HalfRemovedSDKProvider(OpenAIProvider):
    distribution = "llmapp-tests-half-removed-sdk"
    min_version = "1.0"


def test_an_sdk_whose_version_cannot_be_read_is_taken_as_it_is(
    openai_provider, settings, tmp_path, monkeypatch
):
    # What an interrupted pip uninstall leaves: a dist-info folder without its METADATA.
    (tmp_path / "llmapp_tests_half_removed_sdk-1.0.dist-info").mkdir()
    monkeypatch.syspath_prepend(tmp_path)
    settings.LLM_PROVIDERS["openai"]["BACKEND"] = "tests.test_checks.HalfRemovedSDKProvider"
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "openai"}}
    assert check()[0] == []
    assert complete_prompt("summarize", "hi").text


@pytest.mark.parametrize(
    ("installed", "release"),
    [
        *[
            ("1.50.0", (1, 50, 0)),
            ("1.50.0rc1", (1, 50, 0)),
            ("2.0.0.post1", (2, 0, 0)),
            ("3.6.1+x", (3, 6, 1)),
        ],
        *[("1!2.0", None), ("", None), (None, None), ("dev", None)],
    ],
)
def test_a_release_is_read_from_any_version_string(installed, release):
    assert _release(installed) == release


def test_each_extra_asks_for_the_sdk_release_its_backend_needs():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for backend in (OpenAIProvider, AnthropicProvider, GeminiProvider):
        assert f"{backend.distribution}>={backend.min_version}" in extras[backend.extra]


def test_missing_sdk_and_missing_key_are_warnings(settings, monkeypatch):
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *args: None if name == "openai" else importlib.machinery.ModuleSpec(name, None),
    )
    settings.LLM_PROVIDERS = {"default": {"BACKEND": OPENAI}}
    ids, output = check()
    assert ids == ["llmapp.W002", "llmapp.W003"]
    assert 'pip install "llmapp[openai]"' in output
    assert "has no API key: set OPENAI_API_KEY" in output


def test_bad_metrics_backend(settings):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.nope.Backend"
    ids, _ = check()
    assert ids == ["llmapp.metrics.E001"]


def test_every_problem_is_listed_at_once_with_hints_and_a_non_zero_exit(manage):
    result = manage(
        "check",
        env={
            "LLM_SUMMARIZE_PROVIDER": "nope",
            "LLM_EXAMPLE_TEMPERATURE": "7",
            "LLM_EVENTSTREAM": "logging",
            "LLM_TSDB": "database",
        },
    )
    assert result.returncode == 1
    for problem in ("llmapp.E004", "llmapp.E011", "llmapp.E008"):
        assert f"({problem})" in result.stderr
    assert result.stderr.count("HINT:") == 3
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "options",
    [{"base_url": "http://user:pass@gateway.internal/v1"}, {"default_headers": {"X-Tenant": "t-1"}}],
)
def test_debug_with_credentials_django_would_show_is_a_warning(settings, options):
    settings.DEBUG = True
    settings.DEFAULT_EXCEPTION_REPORTER_FILTER = "django.views.debug.SafeExceptionReporterFilter"
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "gateway": {"BACKEND": OPENAI, "OPTIONS": options}}
    assert "llmapp.W005" in check()[0]
    settings.DEFAULT_EXCEPTION_REPORTER_FILTER = "llmapp.debug.SafeExceptionReporterFilter"
    assert "llmapp.W005" not in check()[0]


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"queue_sise": 10}, "unknown key(s) queue_sise"),
        ({"batch_size": "many"}, "do not fit DatabaseEventStream"),
        ([1], "must be a dict"),
    ],
)
def test_bad_eventstream_options(settings, options, text):
    settings.LLM_EVENTSTREAM_OPTIONS = options
    ids, output = check()
    assert ids == ["llmapp.E009"]
    assert text in output


def test_synchronous_events_on_postgresql_want_a_connect_timeout():
    from llmapp.conf.checks import check_synchronous_connect

    postgresql = {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}
    [warning] = check_synchronous_connect("default", postgresql)
    assert warning.id == "llmapp.W006" and "connect_timeout" in warning.hint
    assert check_synchronous_connect("default", postgresql | {"OPTIONS": {"connect_timeout": 5}}) == []
    assert check_synchronous_connect("default", {"ENGINE": "django.db.backends.sqlite3"}) == []


def test_the_synchronous_test_settings_bound_their_connect(settings):
    settings.LLM_EVENTSTREAM_OPTIONS = {"synchronous": True}
    assert "llmapp.W006" not in check()[0]


@pytest.mark.parametrize(
    ("entry", "expected", "text"),
    [
        ({"OPTIONS": "oops"}, "llmapp.E016", "['OPTIONS'] must be a dict"),
        ({"MODELS": 5}, "llmapp.E016", "['MODELS'] must be a list of model names"),
        (
            {"CIRCUIT_BREAKER": {"FAILURES": "five"}},
            "llmapp.E017",
            "['CIRCUIT_BREAKER'] must be a dict of FAILURES",
        ),
        (
            {"CIRCUIT_BREAKER": {"COOLDOWN": -1}},
            "llmapp.E017",
            "['CIRCUIT_BREAKER'] must be a dict of FAILURES",
        ),
    ],
)
def test_a_malformed_entry_is_one_error_and_calls_fail_with_one_line(settings, entry, expected, text):
    from llmapp import complete_prompt
    from llmapp.conf.startup import report_problems
    from llmapp.exceptions import ConfigurationError

    settings.LLM_PROVIDERS = settings.LLM_PROVIDERS | {"test": {"BACKEND": LOCMEM, **entry}}
    ids, output = check()
    assert ids == [expected] and text in output
    report_problems()  # what a server logs at start-up: no exception either
    with pytest.raises(ConfigurationError, match=re.escape(text)):
        complete_prompt("summarize", "hi", provider="test")


def test_a_key_pasted_into_any_field_is_never_shown(settings, monkeypatch):
    key = "abcd1234efgh5678ijklmnop"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    settings.LLM_USECASE_ENV_OVERRIDES = True
    monkeypatch.setenv("LLM_SUMMARIZE_FALLBACKS", key)
    monkeypatch.setenv("LLM_EXAMPLE_MODEL", key)
    settings.LLM_PROVIDERS = settings.LLM_PROVIDERS | {"default": {"BACKEND": LOCMEM, "MODELS": ["small"]}}
    ids, output = check()
    assert "llmapp.E021" in ids and "llmapp.E005" in ids
    assert key not in output


def test_a_check_that_crashes_is_one_error(monkeypatch):
    from llmapp.conf import checks as llmapp_checks

    def broken():
        raise RuntimeError("surprise")

    monkeypatch.setattr(llmapp_checks, "check_debug_page", broken)
    ids, output = check()
    assert ids == ["llmapp.E010"] and "RuntimeError: surprise" in output


def test_every_check_id_is_documented_once_and_used():
    """The README's table lists each id llmapp reports, once; it lists none that nothing reports."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    source = "\n".join(path.read_text() for path in (root / "llmapp").rglob("*.py"))
    used = set(re.findall(r'"(llmapp\.[EW]\d{3})"', source))
    documented = re.findall(r"^\| `(llmapp\.[EW]\d{3})` \|", (root / "README.md").read_text(), re.M)
    assert sorted(documented) == sorted(set(documented)), "an id is documented twice"
    assert used == set(documented)


def test_a_backend_module_that_fails_to_import_is_its_entrys_error(settings):
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "broken": {"BACKEND": "tests.fakes.broken_backend.X"}}
    ids, output = check()
    assert ids == ["llmapp.E002"] and "RuntimeError: this module is broken" in output


def test_a_backend_of_a_projects_own_that_cannot_be_called_is_a_warning(settings):
    settings.LLM_PROVIDERS = {"default": {"BACKEND": "tests.fakes.custom_provider.TokenProvider"}}
    ids, output = check()  # a warning: no SystemCheckError
    assert ids == ["llmapp.W003"] and "set INHOUSE_TOKEN" in output


@pytest.mark.parametrize(
    ("output", "text"),
    [
        (
            "tests.fakes.nope.Ticket",
            "OUTPUT of use case 'triage' (from LLM_USECASES['triage']['OUTPUT']) 'tests.",
        ),
        ({"type": "object", "if": {}}, "JSON Schema uses keyword 'if', which llmapp cannot check"),
        ({"properties": {}}, "JSON Schema has no type"),
        (5, "5 is not a type: name a class"),
        ({"type": "strnig"}, "JSON Schema uses type 'strnig' (JSON's types are array"),
        ({"type": "string", "pattern": "("}, "pattern '(' that is not a regular expression"),
    ],
)
def test_an_output_that_cannot_be_asked_for_is_an_error(settings, output, text):
    settings.LLM_USECASES = {"triage": {"OUTPUT": output, "OUTPUT_RETRIES": -1}}
    ids, result = check()
    assert sorted(ids) == ["llmapp.E023", "llmapp.E024"]
    assert text in result and "output_retries must be a whole number from 0 to 10, got -1" in result
    assert "HINT: OUTPUT is a pydantic model, a dataclass, a TypedDict, a JSON Schema dict" in result


def test_an_output_from_the_environment_is_a_dotted_path(settings, monkeypatch):
    from llmapp import complete_prompt

    settings.LLM_USECASE_ENV_OVERRIDES = True
    monkeypatch.setenv("LLM_SUMMARIZE_OUTPUT", "tests.fakes.output_types.Routing")
    assert check()[0] == []
    assert complete_prompt("summarize", "x").parsed == {"queue": "billing", "urgent": False}
    monkeypatch.setenv("LLM_SUMMARIZE_OUTPUT", "tests.fakes.output_types.Nope")
    settings.LLM_USECASE_ENV_OVERRIDES = True  # read again
    assert check()[0] == ["llmapp.E023"]


def test_a_structured_output_option_the_backend_cannot_do_is_an_error(settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "local": {
            "BACKEND": OPENAI,
            "OPTIONS": {"base_url": "http://127.0.0.1:9/v1", "structured_output": "json"},
        },
    }
    ids, output = check()
    assert ids == ["llmapp.E025"]
    assert "['structured_output'] is 'json'; OpenAIProvider can do: 'native', 'prompted'" in output


def test_a_typed_use_case_on_a_backend_that_cannot_type_is_a_warning(settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "plain": {"BACKEND": "tests.fakes.custom_provider.UntypedProvider"},
    }
    settings.LLM_USECASES = {
        "triage": {"OUTPUT": "tests.fakes.output_types.Ticket", "FALLBACKS": ["plain"]},
        "prose": {"PROVIDER": "plain"},  # not typed: nothing to say
    }
    ids, output = check()
    assert ids == ["llmapp.W007"]
    assert "provider 'plain' (UntypedProvider) can ask for it neither natively nor in the prompt" in output


def test_malformed_prices_are_an_error(settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {**settings.LLM_PROVIDERS["test"], "PRICES": {"locmem": {"INPUT": 0.1, "OUTPUT": "1"}}},
    }
    ids, output = check()
    assert ids == ["llmapp.E026"]
    assert "LLM_PROVIDERS['test']['PRICES']['locmem']['INPUT'] is the float 0.1" in output


def test_budgets_want_a_cache_every_worker_shares(settings):
    settings.LLM_USECASES = {"summarize": {"BUDGET": {"USD": "5"}, "PROVIDER": "test"}}
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {**settings.LLM_PROVIDERS["test"], "PRICES": {"locmem": {"FREE": True}}},
    }
    settings.DEBUG = False
    ids, output = check()
    assert ids == ["llmapp.cache.W001"]
    assert "summarize have a BUDGET or RATE_LIMIT kept in cache 'default' (LocMemCache)" in output
    settings.DEBUG = True  # a developer's single process: nothing to say
    assert check()[0] == []
    settings.LLM_LIMITS_CACHE = "nope"
    assert check()[0] == ["llmapp.cache.E003"]


def test_a_malformed_provider_rate_limit_is_an_error(settings):
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "test": {**settings.LLM_PROVIDERS["test"], "RATE_LIMIT": {"CONCURRENCY": 2}},
    }
    settings.DEBUG = True  # one process: the limits cache's own warning is not this test's
    ids, output = check()
    assert ids == ["llmapp.E029"]
    assert "LLM_PROVIDERS['test']['RATE_LIMIT'] must be a dict of RPM, TPM" in output


def test_budgets_in_a_cache_whose_increments_are_not_atomic_are_a_warning(settings):
    settings.CACHES = {
        **settings.CACHES,
        "db": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "llm_cache"},
    }
    settings.LLM_LIMITS_CACHE = "db"
    settings.LLM_USECASES = {"summarize": {"RATE_LIMIT": {"RPM": 5}}}
    settings.DEBUG = True
    ids, output = check()
    assert ids == ["llmapp.cache.W001"]
    assert "(DatabaseCache), whose increments are not atomic" in output
    settings.LLM_LIMITS_CACHE = ["default"]
    assert check()[0] == ["llmapp.cache.E003"]
