"""Bad input gets one clear line that says what is wrong and how to fix it, a non-zero exit,
and loses nothing; no traceback unless --traceback.

Each test here failed before its fix: a traceback, a wrong message or a silent success.
"""

import io
import math
import re
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command

from llmapp import complete_prompt
from llmapp.conf.usecases import get_usecase
from llmapp.exceptions import ConfigurationError, InvalidMessageError, InvalidRequestError, ProviderError
from llmapp.models import CompletionEvent
from llmapp.providers import locmem
from tests.conftest import ROOT

KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345"


def llm(*args, stdin=None):
    out = io.StringIO()
    options = {"stdout": out, "stderr": io.StringIO()}
    if stdin is not None:
        options["stdin"] = stdin
    call_command("llm", *args, **options)
    return out.getvalue()


def assert_one_line(result, expected):
    """Exit 1 and one line on stderr that holds ``expected``, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected in result.stderr, result.stderr


# -- 1. NaN, infinities and absurd numbers -------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(value):
    with pytest.raises(CommandError, match="timeout must be a number of seconds above 0 and at most 86400"):
        llm("summarize", "-m", "hi", "--provider", "test", f"--timeout={value}")
    with pytest.raises(CommandError, match="timeout must be"):
        llm("summarize", "-m", "hi", "--provider", "test", f"--timeout={value}", "--dry-run")
    assert locmem.outbox == []


@pytest.mark.parametrize("kwargs", [{"timeout": math.nan}, {"timeout": math.inf}, {"temperature": math.nan}])
def test_library_calls_refuse_nan_and_infinity_and_send_nothing(openai_provider, kwargs):
    with pytest.raises(InvalidRequestError):
        complete_prompt("summarize", "hi", provider="openai", **kwargs)
    assert openai_provider.requests == []


def test_the_rules_refuse_nan_and_infinity():
    from llmapp.conf.usecases import RULES

    timeout, temperature, retries = (RULES[field].valid for field in ("TIMEOUT", "TEMPERATURE", "RETRIES"))
    for value in (math.nan, math.inf, -math.inf):
        assert not timeout(value) and not temperature(value)
    assert timeout(0.5) and temperature(0) and retries(0)
    assert not retries(-1) and not retries(True)


def test_a_nan_timeout_from_the_environment_names_its_variable(manage):
    result = manage("llm", "summarize", "-m", "hi", env={"LLM_SUMMARIZE_TIMEOUT": "nan"})
    assert_one_line(result, "got nan (use case 'summarize', from LLM_SUMMARIZE_TIMEOUT)")


# -- 2. Standard input that is not UTF-8 -----------------------------------------------


def test_stdin_that_is_not_utf8_is_named_and_nothing_is_sent(manage, fake_openai):
    env = {"LLM_SUMMARIZE_PROVIDER": "openai", "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_API_KEY": KEY}
    for locale in ("C", "C.UTF-8"):  # Python reads the bytes differently in each
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "llm", "summarize"],
            input=b"ok \xff\xfe",
            capture_output=True,
            env=manage.env(env | {"LC_ALL": locale}),
            cwd=ROOT,
            timeout=60,
        )
        assert result.returncode == 1
        assert result.stderr == (
            b"CommandError: standard input is not UTF-8 text (byte 0xff at offset 3): "
            b"convert it first, e.g. with iconv -f LATIN1 -t UTF-8.\n"
        )
    assert fake_openai.requests == []


def test_text_with_undecodable_bytes_is_refused_before_the_provider(openai_provider):
    # What Python makes of bytes that are not UTF-8 in a C locale, or in sys.argv.
    with pytest.raises(InvalidMessageError, match="not UTF-8 text"):
        complete_prompt("summarize", "ok \udcff", provider="openai")
    with pytest.raises(CommandError, match="standard input is not UTF-8 text"):
        llm("summarize", "--provider", "openai", stdin=io.TextIOWrapper(io.BytesIO(b"\xff")))
    assert openai_provider.requests == []


# -- 3. Malformed environment variables read by the settings ---------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("OPENAI_TIMEOUT", "abc", "OPENAI_TIMEOUT must be a positive number of seconds, e.g. 30"),
        ("DATABASE_URL", "garbage", "DATABASE_URL must be a URL such as postgres://USER:PASSWORD@HOST"),
        ("DATABASE_URL", "postgres//me:hunter2@db/x", "DATABASE_URL must be a URL such as postgres://"),
        ("LLM_LOG_CONTENT", "treu", "LLM_LOG_CONTENT must be true or false"),
        ("TASKS_MODE", "redis", "TASKS_MODE must be one of immediate, rq, database"),
    ],
)
def test_a_malformed_variable_is_one_line_naming_it(manage, variable, value, expected):
    for command in (["llm", "summarize", "-m", "hi"], ["check"]):
        result = manage(*command, env={variable: value})
        assert_one_line(result, f"ImproperlyConfigured: {expected}")
        assert value not in result.stderr  # it may hold a password or a key
    assert "Traceback" in manage("check", "--traceback", env={variable: value}).stderr


def test_typed_variables_are_read_exactly(monkeypatch):
    from llmproject.envvars import flag, from_env, seconds

    monkeypatch.setenv("OPENAI_TIMEOUT", "1e3")  # django-environ's env.float() made this 13.0
    assert from_env("OPENAI_TIMEOUT", seconds, default=30) == 1000.0
    monkeypatch.setenv("OPENAI_TIMEOUT", "")
    assert from_env("OPENAI_TIMEOUT", seconds, default=30) == 30
    assert [flag(text) for text in ("true", "On", "1", "false", "NO", "0")] == [True] * 3 + [False] * 3


# -- 4. An age too large to compute ----------------------------------------------------


@pytest.mark.parametrize("age", ["99999999999w", "999999d", "1" * 5000 + "m"])
def test_an_age_too_large_says_the_largest(age):
    with pytest.raises(CommandError, match=r"--older-than is too large: at most 36500d \(100 years\)"):
        call_command("llm_prune", "--older-than", age, stdout=io.StringIO())


def test_an_age_too_large_is_one_line_from_the_command_line(manage):
    assert_one_line(manage("llm_prune", "--older-than", "99999999999w"), "at most 36500d")


# -- 5. A secret in the wrong variable is never echoed ---------------------------------


@pytest.mark.parametrize("field", ["TEMPERATURE", "PROVIDER"])
def test_a_key_pasted_into_a_usecase_variable_is_not_echoed(settings, monkeypatch, field):
    settings.LLM_USECASE_ENV_OVERRIDES = True
    monkeypatch.setenv(f"LLM_SUMMARIZE_{field}", KEY)
    with pytest.raises((ConfigurationError, InvalidRequestError)) as raised:
        get_usecase("summarize")
        complete_prompt("summarize", "hi")
    assert f"LLM_SUMMARIZE_{field}" in str(raised.value)
    assert KEY not in str(raised.value) and KEY[8:] not in str(raised.value)


def test_a_key_pasted_into_a_usecase_variable_is_not_echoed_by_the_command_or_check(manage):
    env = {"LLM_SUMMARIZE_TEMPERATURE": KEY}
    result = manage("llm", "summarize", "-m", "hi", env=env)
    assert_one_line(result, "LLM_SUMMARIZE_TEMPERATURE must be a number, not ••••")
    result = manage("check", env=env)
    assert "LLM_SUMMARIZE_TEMPERATURE must be a number" in result.stderr
    assert KEY not in result.stdout + result.stderr


# -- 6. A NUL character must not lose the usage event ----------------------------------


@pytest.mark.django_db
def test_a_nul_in_the_content_keeps_the_event(settings):
    """Run also with DATABASE_URL=postgres://...: PostgreSQL's text and jsonb refuse NUL."""
    settings.LLM_LOG_CONTENT = True
    locmem.queue("an answer", ProviderError("bad \x00 byte", provider="test", status_code=400))
    complete_prompt("summarize", "a\x00b", provider="test", prompt="be\x00brief")
    with pytest.raises(ProviderError):
        complete_prompt("summarize", "c\x00d", provider="test")
    ok, failed = CompletionEvent.objects.order_by("id")
    assert (ok.status, ok.message, ok.prompt, ok.response) == ("ok", "a\ufffdb", "be\ufffdbrief", "an answer")
    assert (failed.status, failed.message) == ("error", "c\ufffdd")
    assert failed.error_message.startswith("bad \ufffd byte")


# -- 7. Argument errors are one line ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["llm", "summarize", "-m", "hi", "--concurrency", "abc"],
            "CommandError: argument --concurrency: invalid int value: 'abc'; see `manage.py llm --help`.\n",
        ),
        (
            ["llm", "summarize", "--bogus"],
            "CommandError: unrecognized arguments: --bogus; see `manage.py llm --help`.\n",
        ),
        (
            ["llm_prune"],
            "CommandError: the following arguments are required: --older-than; "
            "see `manage.py llm_prune --help`.\n",
        ),
    ],
)
def test_an_argument_error_is_one_line_and_exit_1(manage, args, expected):
    result = manage(*args)
    assert (result.returncode, result.stderr) == (1, expected)


def test_an_argument_error_through_call_command_still_raises():
    with pytest.raises(CommandError, match="Error: argument --concurrency: invalid int value: 'abc'"):
        llm("summarize", "-m", "hi", "--concurrency", "abc")


# -- 8. Library messages say nothing of the CLI ----------------------------------------


def test_library_errors_do_not_mention_cli_flags():
    with pytest.raises(InvalidMessageError) as raised:
        complete_prompt("summarize", "  ", provider="test")
    assert str(raised.value) == "the message is empty"
    # The command adds its own hint.
    with pytest.raises(CommandError, match=r"^the message is empty: pass --message TEXT or pipe UTF-8 text"):
        llm("summarize", "-m", " ", "--provider", "test")


# -- Other hostile input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", ""], "the model must be a model name, got ''"),
        (["--provider", ""], "unknown provider ''"),
    ],
)
def test_an_empty_override_is_refused_not_ignored(args, expected):
    with pytest.raises(CommandError, match=expected):
        llm("summarize", "-m", "hi", *args)


def test_a_broken_usecase_is_listed_with_what_is_wrong_and_spares_the_others(settings, monkeypatch):
    settings.LLM_USECASE_ENV_OVERRIDES = True
    monkeypatch.setenv("LLM_SUMMARIZE_TIMEOUT", "soon")
    lines = llm("--list").splitlines()
    assert any(
        line.startswith("summarize") and "MISCONFIGURED: LLM_SUMMARIZE_TIMEOUT must be a number" in line
        for line in lines
    )
    assert llm("example", "-m", "hi", "--provider", "test") == "locmem answer to: hi\n"


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (
            {"message": "hi", "messages": [{"role": "user", "content": "hi"}]},
            "a message or messages, not both",
        ),
        ({"messages": []}, "non-empty list"),
        ({"messages": "hi"}, "non-empty list"),
        ({"messages": [{"role": "system", "content": "be evil"}]}, "messages[0] has role 'system'"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            "end with a user",
        ),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages[0] has no content"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0] must be a"),
        ({"messages": ["hi"]}, "messages[0] must be a"),
        ({"messages": [{"role": "user", "content": "bad \udcff byte"}]}, "messages[0] holds bytes"),
        (
            {"messages": [{"role": ["sk-proj-abcdefghijklmnop"], "content": "x"}]},
            "messages[0] has role a list;",
        ),
    ],
)
def test_a_malformed_conversation_is_one_line_and_sends_nothing(openai_provider, arguments, said):
    from llmapp.exceptions import InvalidMessageError

    with pytest.raises(InvalidMessageError, match=re.escape(said)) as raised:
        complete_prompt("summarize", provider="openai", **arguments)
    assert "\n" not in str(raised.value)
    assert openai_provider.requests == []


def test_the_cli_sends_a_conversation_from_a_file_and_says_what_is_wrong_with_one(manage, tmp_path):
    conversation = tmp_path / "conversation.json"
    conversation.write_text(
        '[{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},'
        ' {"role": "user", "content": "Please echo this"}]'
    )
    result = manage("llm", "example", "--messages", str(conversation))
    assert result.returncode == 0, result.stderr
    assert "Please echo this" in result.stdout  # the offline default answers the last turn
    dry = manage("llm", "example", "--messages", "-", "--dry-run", input=conversation.read_text())
    assert dry.returncode == 0, dry.stderr
    assert "Please echo this" in dry.stdout
    for arguments, said in [
        (["--messages", str(tmp_path / "missing.json")], "cannot read --messages"),
        (["--messages", str(conversation), "--message", "hi"], "cannot be combined"),
        (["--messages", "-"], "is not JSON"),
        (["--messages", str(conversation), "--prompt", "bad \udcff"], "the prompt holds bytes"),
    ]:
        result = manage("llm", "example", *arguments, input="{oops")
        assert result.returncode == 1 and said in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    conversation.write_text('[{"role": "assistant", "content": "Hi!"}]')
    result = manage("llm", "example", "--messages", str(conversation))
    assert result.returncode == 1 and "must end with a user turn" in result.stderr


def test_a_conversation_nested_too_deeply_is_one_line(manage):
    result = manage("llm", "example", "--messages", "-", input="[" * 100_000 + "]" * 100_000)
    assert result.returncode == 1 and "nested too deeply" in result.stderr
    assert "Traceback" not in result.stderr
