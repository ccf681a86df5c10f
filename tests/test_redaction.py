import pytest

from llmapp.redaction import is_secret_name, mask, redact, redact_mapping


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
