import json
import signal
import threading
import warnings

import pytest

from llmapp.conf import secrets as redaction
from llmapp.conf.secrets import is_secret_name, mask, redact, redact_mapping
from llmapp.sentry import scrubbing


@pytest.mark.parametrize(
    "name",
    ["api_key", "OPENAI_API_KEY", "Authorization", "auth_token", "csrftoken", "DB_PASSWORD", "SENTRY_DSN"],
)
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["max_tokens", "max_output_tokens", "input_tokens", "model", "base_url"])
def test_names_that_are_not_secret(name):
    assert not is_secret_name(name)


def test_mask_shows_at_most_the_last_four_characters_of_long_values():
    assert mask("sk-test-1234567890abcd") == "••••abcd"
    assert mask("short") == "••••"
    assert mask("") == ""


def test_redact_masks_known_secrets_url_credentials_and_key_shapes():
    text = (
        "key sk-proj-abcdefghijklmnop at http://bob:hunter22@host/v1 with Bearer abcdefghijk and s3cr3tvalue"
    )
    redacted = redact(text, secrets=["s3cr3tvalue"])
    for secret in ("sk-proj-abcdefghijklmnop", "hunter22", "abcdefghijk", "s3cr3tvalue"):
        assert secret not in redacted
    assert "http://••••@host/v1" in redacted


def test_redact_mapping_masks_by_key_and_keeps_counts():
    data = {
        "OPTIONS": {"api_key": "sk-test-0123456789", "max_tokens": 400},
        "headers": [{"Authorization": "x"}],
    }
    assert redact_mapping(data) == {
        "OPTIONS": {"api_key": "••••6789", "max_tokens": 400},
        "headers": [{"Authorization": "••••"}],
    }


def test_url_credentials_without_a_user_or_with_an_at_sign_are_masked_whole():
    assert redact("http://:tok3nsecret@127.0.0.1:9/v1") == "http://••••@127.0.0.1:9/v1"
    assert redact("https://user:pa@ss@host/x") == "https://••••@host/x"
    assert (
        redact("redis://:pw@h:6379/0 then mail@example.com") == "redis://••••@h:6379/0 then mail@example.com"
    )


def test_google_api_keys_are_key_shaped():
    key = "AIza" + "SyA1234567890abcdefghijklmnopqrstuv"
    assert redact(f"key={key} rejected") == "key=•••• rejected"


# -- every form a credential takes ------------------------------------------------------------


def test_url_credentials_are_found_in_every_form_they_travel_in():
    found = redaction.url_secrets("http://user:pa%40ss@host/v1")
    # As written, decoded, the password alone, and the Basic value httpx sends for them.
    assert {"user:pa%40ss", "user:pa@ss", "pa%40ss", "pa@ss", "dXNlcjpwYUBzcw=="} <= set(found)
    assert "user" not in found  # a user name beside a password is no secret
    assert "tok3n" in redaction.url_secrets("https://tok3n@host/")  # a user alone is a token


def test_redact_masks_the_basic_value_and_the_decoded_credentials_of_a_url():
    secrets = redaction.url_secrets("http://user:pa%40ss@host/v1")
    text = redact('{"authorization": "Basic dXNlcjpwYUBzcw==", "who": "user:pa@ss"}', secrets)
    assert text == '{"authorization": "Basic ••••", "who": "••••"}'


@pytest.mark.parametrize(
    "url",
    [
        "https://r.example/v1?api-key=s3cret1&api-version=2024-10-21",
        "https://r.example/v1?subscription-key=s3cret1",
        "https://r.example/v1?x=1&key=s3cret1#frag",
        "https://r.example/v1;token=s3cret1",
        "see https://r.example/v1?access_token=s3cret1 for more",
        "https://r.example/v1?sig=s3cret1&max_tokens=5",
    ],
)
def test_query_string_credentials_are_masked_in_any_url(url):
    redacted = redact(url)
    assert "s3cret1" not in redacted and "=••••" in redacted
    # Counts and versions are not credentials.
    assert "api-version=2024-10-21" in redact("https://r.example/?api-version=2024-10-21")
    assert "max_tokens=5" in redact("https://r.example/?max_tokens=5")


def test_a_key_full_of_regex_metacharacters_is_masked_as_written_and_escaped():
    key = r"k3y+(meta)*[chars]$^|.?{2}\end"
    text = f"as written {key}, as JSON {json.dumps(key)}, as a repr {key!r}"
    redacted = redact(text, [key])
    assert "k3y" not in redacted and redacted.count("••••") == 3


def test_a_key_shorter_than_four_characters_is_masked_where_it_stands_alone():
    text = '{"x-key": "q$3", "note": "aq$3b stays"}'
    assert redact(text, ["q$3"]) == '{"x-key": "••••", "note": "aq$3b stays"}'


def test_mask_shows_no_tail_of_a_basic_credential():
    assert mask("Basic dXNlcjpwYUBzcw==") == "Basic ••••"
    assert mask("Bearer sk-test-1234567890abcd") == "Bearer ••••abcd"


def test_custom_headers_are_secret_unless_known_to_be_public():
    options = {
        "api_key": "k",
        "token_limit_parameter": "max_tokens",
        "default_headers": {"Ocp-Apim-Subscription-Key": "sub", "X-Tenant": "t1", "X-Title": "my app"},
    }
    assert set(redaction.secrets_in(options, secret_names={"api_key"})) == {"k", "sub", "t1"}


# -- cost ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a" * 1_000_000,  # a scheme that never ends: quadratic before
        "a://" + "b" * 1_000_000,  # an authority with no "@"
        "x:" * 500_000,
        "?" + "a-" * 500_000,  # a query parameter name with a dash at every step
        "Bearer " * 150_000,
    ],
)
def test_redact_does_linear_work_on_adversarial_input(text):
    """1 MB of each worst case, under a budget 1000 times what linear work needs.

    Not a timing assertion: linear work on 1 MB takes milliseconds, quadratic work
    (what the URL pattern did) hours, so no machine lands near the budget. The patterns
    are linear by construction: every repeated part is one character class, and a
    look-behind lets a match start only where a word starts (see redaction.py).
    """

    def out_of_budget(signum, frame):
        raise TimeoutError("redact() did more than linear work")

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    previous = signal.signal(signal.SIGALRM, out_of_budget)
    signal.setitimer(signal.ITIMER_REAL, 20)  # re checks for signals while it matches
    try:
        redact(text)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- settings ------------------------------------------------------------------------------


def test_known_secrets_read_no_setting_through_its_deprecation_warning(settings, monkeypatch):
    """Django 6.1 warns on every read of EMAIL_HOST and kin: the scan must not read them that way."""
    from django.conf import LazySettings

    original = LazySettings.__getattr__

    def deprecated(self, name):
        if name == "EMAIL_HOST":
            warnings.warn("The EMAIL_HOST setting is deprecated.", DeprecationWarning, stacklevel=2)
        return original(self, name)

    monkeypatch.setattr(LazySettings, "__getattr__", deprecated)
    settings.LLM_PROVIDERS = {"x": {"OPTIONS": {"api_key": "a-provider-key"}}}  # also empties the cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "a-provider-key" in scrubbing.secret_values()


def test_a_configured_backends_key_shape_is_masked_without_editing_llmapp(settings):
    key = "inh_0123456789abcdef"
    assert redact(f"echoed {key}") == f"echoed {key}"  # not a shape llmapp knows of itself
    settings.LLM_PROVIDERS = {
        **settings.LLM_PROVIDERS,
        "inhouse": {"BACKEND": "tests.fakes.custom_provider.InHouseProvider"},
    }
    assert redact(f"echoed {key}") == "echoed ••••"
    # The shipped backends' shapes hold whatever is configured.
    for shipped in ("sk-proj-abcdefghijklmnop", "sk-ant-api03-abcdefghijkl", "AIza" + "S" * 35):
        assert shipped not in redact(f"echoed {shipped}")


@pytest.mark.parametrize(
    "backend", ["tests.fakes.broken_backend.Provider", "tests.fakes.custom_provider.BadPatternProvider"]
)
def test_a_backend_that_cannot_be_read_breaks_no_redaction(settings, backend):
    settings.LLM_PROVIDERS = {**settings.LLM_PROVIDERS, "broken": {"BACKEND": backend}}
    text = redact("https://user:hunter2secret@gateway.internal/v1 with sk-proj-abcdefghijklmnop")
    assert "hunter2secret" not in text and "sk-proj-abcdefghijklmnop" not in text
