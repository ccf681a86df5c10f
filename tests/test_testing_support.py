"""A project's own tests get a fresh locmem provider in every test, under pytest and Django's runner."""

import subprocess
import sys
import textwrap

import pytest

from tests.environment import isolated_environ

SETTINGS = """
SECRET_KEY = "test"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "llmapp"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
LLM_PROVIDERS = {"default": {"BACKEND": "llmapp.providers.locmem.LocmemProvider"}}
LLM_EVENTSTREAM = "null"
LLM_TSDB = "null"
TEST_RUNNER = "llmapp.testing.runner.DiscoverRunner"
"""

# Two tests in order: the first queues a reply it never uses and sends a call; the
# second must find neither the reply nor the call.
PYTEST_TESTS = """
from llmapp import complete_prompt
from llmapp.providers import locmem


def test_1_leaves_state_behind():
    complete_prompt("summarize", "first")
    locmem.queue("a reply meant for test 1")


def test_2_starts_clean():
    assert locmem.outbox == []
    assert complete_prompt("summarize", "second").text == "locmem answer to: second"
"""

UNITTEST_TESTS = """
from django.test import SimpleTestCase

from llmapp import complete_prompt
from llmapp.providers import locmem


class LocmemTests(SimpleTestCase):
    def test_1_leaves_state_behind(self):
        complete_prompt("summarize", "first")
        locmem.queue("a reply meant for test 1")

    def test_2_starts_clean(self):
        self.assertEqual(locmem.outbox, [])
        self.assertEqual(complete_prompt("summarize", "second").text, "locmem answer to: second")


class MoreTests(SimpleTestCase):
    test_1_leaves_state_behind = LocmemTests.test_1_leaves_state_behind
    test_2_starts_clean = LocmemTests.test_2_starts_clean
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "proj_settings.py").write_text(SETTINGS)
    tests = tmp_path / "checks"
    tests.mkdir()
    (tests / "__init__.py").write_text("")
    return tmp_path


def run(project, *args):
    env = isolated_environ() | {"DJANGO_SETTINGS_MODULE": "proj_settings", "PYTHONPATH": str(project)}
    return subprocess.run(
        [sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_pytest_plugin_comes_with_the_package(project):
    (project / "checks" / "test_locmem.py").write_text(textwrap.dedent(PYTEST_TESTS))
    # No conftest and no -p option: the plugin is registered through the package's entry point.
    result = run(project, "-m", "pytest", "-p", "no:cacheprovider", "-q", "checks")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_the_django_runner_resets_locmem(project, parallel):
    (project / "checks" / "tests.py").write_text(textwrap.dedent(UNITTEST_TESTS))
    result = run(project, "-m", "django", "test", "checks", "--parallel", parallel, "-v", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 4 tests" in result.stderr
