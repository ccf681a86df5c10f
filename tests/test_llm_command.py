"""`manage.py llm`: in-process through call_command, and as a user runs it in a subprocess."""

import io
import json
import signal
import subprocess
import sys
import time

import pytest
from django.core.management import CommandError, call_command

from llmapp.providers import locmem
from tests.conftest import API_KEY, ROOT
from tests.environment import interruptible


def llm(*args, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    options = {"stdout": out, "stderr": err}
    if stdin is not None:
        options["stdin"] = stdin
    call_command("llm", *args, **options)
    return out.getvalue(), err.getvalue()


class TTY(io.StringIO):
    def isatty(self):
        return True


def test_prints_the_answer():
    out, _ = llm("summarize", "--message", "Alpha. Beta.", "--provider", "test")
    assert out == "locmem answer to: Alpha. Beta.\n"


def test_reads_the_message_from_piped_stdin_and_from_dash():
    llm("summarize", "--provider", "test", stdin=io.StringIO("from a pipe"))
    llm("summarize", "-m", "-", "--provider", "test", stdin=io.StringIO("from dash"))
    assert [request.message for request in locmem.outbox] == ["from a pipe", "from dash"]


def test_overrides_reach_the_request():
    llm(
        "example",
        "-m",
        "hi",
        "--provider",
        "test",
        "--model",
        "m2",
        "--prompt",
        "P",
        "--temperature",
        "0.25",
        "--max-output-tokens",
        "33",
    )
    request = locmem.outbox[0]
    assert (request.model, request.prompt, request.temperature, request.max_output_tokens) == (
        "m2",
        "P",
        0.25,
        33,
    )


def test_json_prints_one_object():
    out, _ = llm("summarize", "-m", "hi", "--provider", "test", "--json")
    data = json.loads(out)
    assert data["text"] == "locmem answer to: hi"
    assert (data["usecase"], data["provider"], data["model"]) == ("summarize", "test", "locmem")
    assert set(data["usage"]) == {"input_tokens", "output_tokens"}
    assert data["latency_ms"] >= 0


def test_stream_prints_the_chunks():
    locmem.queue("streamed words here")
    out, _ = llm("summarize", "-m", "hi", "--provider", "test", "--stream")
    assert out == "streamed words here\n"


def test_list_shows_usecases_with_provider_model_and_description(settings):
    settings.LLM_USECASES = {"triage": {"PROVIDER": "test", "DESCRIPTION": "Sort tickets"}}
    out, _ = llm("--list")
    lines = out.splitlines()
    assert lines[0].split() == ["USE", "CASE", "PROVIDER", "MODEL", "OVERRIDE", "DESCRIPTION"]
    assert any(line.split()[:4] == ["summarize", "default", "preview", "-"] for line in lines)
    assert any(line.split() == ["triage", "test", "locmem", "-", "Sort", "tickets"] for line in lines)


def test_dry_run_prints_the_request_and_sends_nothing(openai_provider):
    out, _ = llm("summarize", "-m", "hi", "--provider", "openai", "--dry-run")
    described = json.loads(out)
    assert described["json"]["messages"][1] == {"role": "user", "content": "hi"}
    assert API_KEY not in out and "••••" in out
    assert openai_provider.requests == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "-m", "hi"], "unknown use case 'nope'; known use cases: example, summarize"),
        (["summarize", "-m", "hi", "--temperature", "2"], "temperature must be a number from 0 to 1"),
        (["summarize", "-m", "hi", "--temperature", "warm"], "--temperature must be a number from 0 to 1"),
        (["summarize", "-m", "hi", "--max-output-tokens", "-3"], "max_output_tokens must be a positive"),
        (["summarize", "-m", "hi", "--provider", "nope"], "unknown provider 'nope'"),
        (["summarize", "-m", ""], "the message is empty"),
        (["-m", "hi"], "name a use case"),
        (["summarize", "-m", "hi", "--stream", "--json"], "cannot be combined"),
    ],
)
def test_bad_input_is_one_clear_error(args, message):
    with pytest.raises(CommandError, match=message) as raised:
        llm(*args)
    assert "\n" not in str(raised.value)
    assert locmem.outbox == []


def test_no_message_at_a_terminal_says_how_to_give_one():
    with pytest.raises(CommandError, match="no message: pass --message TEXT"):
        llm("summarize", stdin=TTY())


# -- as a user runs it ----------------------------------------------------------------


def test_summarize_on_the_offline_default(manage):
    result = manage("llm", "summarize", "--message", "Tickets doubled this week. Most are about login.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[preview answer")
    assert "Tickets doubled this week." in result.stdout


def test_environment_alone_points_summarize_at_an_openai_compatible_server(manage, fake_openai):
    env = {
        "LLM_SUMMARIZE_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "LLM_SUMMARIZE_MODEL": "llama3.2",
    }
    result = manage("llm", "summarize", "-m", "Servers are on fire.", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Fake answer to: Servers are on fire.\n"
    assert fake_openai.requests[0].body["model"] == "llama3.2"

    fake_openai.reply_stream(["Streamed ", "from ", "the server."])
    result = manage("llm", "summarize", "-m", "x", "--stream", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Streamed from the server.\n"


def test_provider_errors_are_one_line_and_non_zero(manage, fake_openai):
    env = {
        "LLM_SUMMARIZE_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_API_KEY": API_KEY,
    }
    fake_openai.reply_error(401, f"Incorrect API key provided: {API_KEY}")
    result = manage("llm", "summarize", "-m", "hi", env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "HTTP 401" in result.stderr and "check the provider's api_key" in result.stderr
    assert API_KEY not in result.stderr + result.stdout

    env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    result = manage("llm", "summarize", "-m", "hi", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("CommandError: cannot reach http://127.0.0.1:9/v1")
    assert result.stderr.count("\n") == 1

    result = manage("llm", "summarize", "-m", "hi", "--traceback", env=env)
    assert "Traceback" in result.stderr


def test_missing_api_key_is_one_line(manage):
    result = manage("llm", "summarize", "-m", "hi", env={"LLM_SUMMARIZE_PROVIDER": "openai"})
    assert result.returncode == 1
    assert result.stderr.startswith("CommandError: provider 'openai' has no API key: set OPENAI_API_KEY")
    assert result.stderr.count("\n") == 1


def test_ctrl_c_while_streaming_exits_130(fake_openai, manage):
    fake_openai.reply_stream(["first "] + ["more "] * 50, delay_between=0.2)
    env = {
        "PATH": "/usr/bin:/bin",
        "LLM_ENV_FILE": str(manage.env_file),
        "DATABASE_URL": f"sqlite:///{manage.database}",
        "LLM_SUMMARIZE_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "llm", "summarize", "-m", "hi", "--stream"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=interruptible,
    )
    assert process.stdout.read(6) == "first "
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130
    assert "Traceback" not in err
    assert err.strip() == "Interrupted."
