"""llmapp in a fresh `django-admin startproject`: a misconfiguration is listed, never a traceback."""

import re
import textwrap

import pytest

from tests.conftest import ROOT
from tests.startproject import Project

PREVIEW = "llmapp.providers.preview.PreviewProvider"
# A typo in one provider's OPTIONS, and a use case whose temperature is not a number.
MISCONFIGURED = {"LLM_SUMMARIZE_TEMPERATURE": "hot"}
TYPO = f"""
LLM_PROVIDERS = {{
    "default": {{"BACKEND": "{PREVIEW}"}},
    "spare": {{"BACKEND": "{PREVIEW}", "OPTIONS": {{"modle": "preview"}}}},
}}
LLM_USECASES = {{"triage": {{"PROVIDER": "spare"}}}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """startproject's defaults (DEBUG on, SQLite) plus llmapp, migrated."""
    project = Project(tmp_path_factory.mktemp("startproject"))
    project.add_settings(TYPO)
    result = project.manage("migrate", "-v0")
    assert result.returncode == 0, result.stderr
    return project


def assert_no_traceback(result):
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def test_check_lists_each_problem_with_its_id_and_hint(project):
    result = project.manage("check", env=MISCONFIGURED)
    assert result.returncode == 1
    assert_no_traceback(result)
    assert "(llmapp.E003) LLM_PROVIDERS['spare']['OPTIONS'] has unknown key(s) modle" in result.stderr
    assert "LLM_SUMMARIZE_TEMPERATURE" in result.stderr
    assert "HINT:" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("showmigrations", "llmapp"),
        ("shell", "-c", "print('shell ran')"),
        ("help",),
        ("makemigrations", "--check", "--dry-run"),
        ("migrate", "-v0"),
        ("dumpdata", "llmapp"),
    ],
)
def test_commands_that_inspect_or_repair_still_run(project, command):
    result = project.manage(*command, env=MISCONFIGURED)
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)


def test_a_call_of_a_misconfigured_use_case_fails_with_one_line(project):
    result = project.manage("llm", "summarize", "-m", "hi", env=MISCONFIGURED)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "LLM_SUMMARIZE_TEMPERATURE" in result.stderr
    result = project.manage("llm", "triage", "-m", "hi", env=MISCONFIGURED)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "unknown key(s) modle" in result.stderr


def test_use_cases_that_are_configured_well_keep_working(project):
    result = project.manage("llm", "example", "-m", "hi", env=MISCONFIGURED)
    assert result.returncode == 0, result.stderr
    assert "You said: hi" in result.stdout


def test_silenced_checks_are_honoured(project):
    project.add_settings('SILENCED_SYSTEM_CHECKS = ["llmapp.E003", "llmapp.E020"]')
    try:
        result = project.manage("check", env=MISCONFIGURED)
    finally:
        project.settings.write_text(project.settings.read_text().replace("SILENCED_SYSTEM_CHECKS", "# "))
    assert result.returncode == 0, result.stderr
    assert "llmapp.E003" not in result.stderr + result.stdout


def test_a_server_logs_the_problems_at_start_up_and_serves(project):
    code = (
        "from mysite.wsgi import application;"
        "from django.test import Client;"
        "print(Client(HTTP_HOST='localhost').get('/admin/login/').status_code)"
    )
    result = project.run("-c", code, env=MISCONFIGURED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "200"
    assert "(llmapp.E003) LLM_PROVIDERS['spare']['OPTIONS'] has unknown key(s) modle" in result.stderr
    assert_no_traceback(result)


def readme_snippets():
    """Return {name: code} of the README's code blocks marked ``<!-- snippet: name -->``."""
    text = (ROOT / "README.md").read_text()
    pattern = r"<!-- snippet: (?P<name>[^>]+?) -->\s*```python\n(?P<code>.*?)```"
    return {match["name"]: textwrap.dedent(match["code"]) for match in re.finditer(pattern, text, flags=re.S)}


def test_the_readme_embedding_snippets_run_as_written(tmp_path):
    snippets = readme_snippets()
    assert set(snippets) == {
        "settings",
        "tickets/views.py",
        "mysite/urls.py",
        "test settings",
        "tickets/tests.py",
    }
    project = Project(tmp_path)
    project.settings.write_text(project.settings.read_text().replace('INSTALLED_APPS += ["llmapp"]', ""))
    result = project.manage("startapp", "tickets")
    assert result.returncode == 0, result.stderr
    project.add_settings(snippets["settings"])
    for name in ("tickets/views.py", "mysite/urls.py", "tickets/tests.py"):
        (project.root / name).write_text(snippets[name])

    result = project.manage("check")
    assert result.returncode == 0, result.stderr
    result = project.manage("migrate", "-v0")
    assert result.returncode == 0, result.stderr
    result = project.manage("llm", "triage", "-m", "The export button crashes.")
    assert result.returncode == 0, result.stderr
    code = (
        "from django.test import Client; client = Client(HTTP_HOST='localhost');"
        "print(client.post('/triage/', {'ticket': 'Refund please'}).json()['provider']);"
        "print(client.get('/summary/', {'text': 'One. Two.'}).json()['summary'].splitlines()[-1])"
    )
    result = project.manage("shell", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-3:-1] == ["default", "One. Two."]

    # The JSON API the urls snippet mounts: a token's PUT changes the use case's next call.
    result = project.manage(
        "createsuperuser",
        "--noinput",
        "--username",
        "ops",
        "--email",
        "ops@example.com",
        env={"DJANGO_SUPERUSER_PASSWORD": "a-long-password-1"},
    )
    assert result.returncode == 0, result.stderr
    result = project.manage("llm_token", "create", "ops")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    code = (
        "import json; from django.test import Client; client = Client(HTTP_HOST='localhost');"
        f"answer = client.put('/api/llm/usecases/triage/', json.dumps({{'MAX_OUTPUT_TOKENS': 7}}),"
        f" content_type='application/json', HTTP_AUTHORIZATION='Bearer {token}');"
        "print(answer.status_code, answer.json()['sources']['MAX_OUTPUT_TOKENS'])"
    )
    result = project.manage("shell", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "200 override"
    result = project.manage("llm", "triage", "--list")
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("MAX_OUTPUT_TOKENS")]
    assert line.split()[1] == "7" and "from its override" in line

    project.add_settings(snippets["test settings"])
    result = project.manage("test", "tickets", "-v", "2")
    assert result.returncode == 0, result.stderr
    assert "Ran 2 tests" in result.stderr
    result = project.run(
        "-m", "pytest", "-p", "no:cacheprovider", "--ds", "mysite.settings", "tickets/tests.py"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
