import pytest

from llmapp import register_usecase
from llmapp.conf.usecases import (
    BUILTIN,
    CODE,
    ENVIRONMENT,
    SETTINGS,
    get_usecase,
    get_usecase_errors,
    get_usecases,
    unregister_usecase,
)
from llmapp.exceptions import ConfigurationError, InvalidUsecaseError


def test_builtin_usecases_run_on_the_default_provider():
    usecases = get_usecases()
    assert {"summarize", "example"} <= set(usecases)
    summarize = usecases["summarize"]
    assert summarize.provider == "default"
    assert "summary" in summarize.prompt and "faithful" in summarize.prompt
    assert summarize.source("provider") == BUILTIN


def test_settings_override_a_builtin_field_and_add_usecases(settings):
    settings.LLM_USECASES = {
        "summarize": {"TEMPERATURE": 0.9},
        "triage": {"PROVIDER": "test", "PROMPT": "Classify the ticket.", "DESCRIPTION": "Ticket triage"},
    }
    summarize = get_usecase("summarize")
    assert summarize.temperature == 0.9
    assert summarize.source("temperature") == SETTINGS
    assert summarize.source("prompt") == BUILTIN
    triage = get_usecase("triage")
    assert (triage.provider, triage.prompt, triage.description) == (
        "test",
        "Classify the ticket.",
        "Ticket triage",
    )


def test_code_registration_is_overridden_by_settings(settings):
    register_usecase("classify", prompt="Pick a label.", provider="test", max_output_tokens=20)
    try:
        classify = get_usecase("classify")
        assert classify.max_output_tokens == 20
        assert classify.source("prompt") == CODE
        settings.LLM_USECASES = {"classify": {"MAX_OUTPUT_TOKENS": 50}}
        classify = get_usecase("classify")
        assert classify.max_output_tokens == 50
        assert classify.source("max_output_tokens") == SETTINGS
        assert classify.source("prompt") == CODE
    finally:
        unregister_usecase("classify")


def test_environment_overrides_settings_when_enabled(settings, monkeypatch):
    monkeypatch.setenv("LLM_SUMMARIZE_PROVIDER", "test")
    monkeypatch.setenv("LLM_SUMMARIZE_TEMPERATURE", "0.7")
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "default"}}
    settings.LLM_USECASE_ENV_OVERRIDES = True
    summarize = get_usecase("summarize")
    assert (summarize.provider, summarize.temperature) == ("test", 0.7)
    assert summarize.source("provider") == ENVIRONMENT
    settings.LLM_USECASE_ENV_OVERRIDES = False
    assert get_usecase("summarize").provider == "default"


def test_bad_environment_value_names_the_variable(settings, monkeypatch):
    monkeypatch.setenv("LLM_SUMMARIZE_MAX_OUTPUT_TOKENS", "lots")
    settings.LLM_USECASE_ENV_OVERRIDES = True
    with pytest.raises(
        ConfigurationError, match="LLM_SUMMARIZE_MAX_OUTPUT_TOKENS must be a whole number"
    ) as raised:
        get_usecase("summarize")
    assert "lots" not in str(raised.value)  # masked: it may be a misplaced secret


def test_unknown_field_in_settings_is_named(settings):
    settings.LLM_USECASES = {"summarize": {"TEMPRATURE": 0.1}}
    with pytest.raises(ConfigurationError, match=r"unknown field\(s\) TEMPRATURE"):
        get_usecase("summarize")


def test_a_broken_usecase_breaks_only_itself(settings, monkeypatch):
    monkeypatch.setenv("LLM_SUMMARIZE_TIMEOUT", "soon")
    settings.LLM_USECASE_ENV_OVERRIDES = True
    assert get_usecase("example").name == "example"
    assert "summarize" not in get_usecases()
    assert "LLM_SUMMARIZE_TIMEOUT must be a number" in str(get_usecase_errors()["summarize"])
    with pytest.raises(ConfigurationError, match="LLM_SUMMARIZE_TIMEOUT"):
        get_usecase("summarize")


def test_unknown_usecase_names_the_known_ones():
    with pytest.raises(InvalidUsecaseError, match="known use cases: example, summarize"):
        get_usecase("sumarize")
