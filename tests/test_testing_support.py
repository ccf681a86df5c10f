"""A project's own tests get a fresh locmem provider in every test, under pytest and Django's runner."""

import logging
import subprocess
import sys
import textwrap

import pytest

from tests.environment import isolated_environ
from tests.services import drop_postgresql_database, postgresql_database

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


# A project with the default usage recording (the database stream), like any user's.
RECORDING_SETTINGS = """
SECRET_KEY = "test"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "llmapp"]
DATABASES = {"default": DATABASE}
LLM_PROVIDERS = {"default": {"BACKEND": "llmapp.providers.locmem.LocmemProvider"}}
TEST_RUNNER = "llmapp.testing.runner.DiscoverRunner"
"""

RECORDING_TESTS = """
import time

from django.test import TestCase

from llmapp import complete_prompt
from llmapp.models import CompletionEvent


class RecordingTests(TestCase):
    def test_1_sees_its_event_at_once(self):
        complete_prompt("summarize", "first")
        self.assertEqual(CompletionEvent.objects.count(), 1)
        time.sleep(0.5)  # longer than the writer thread would wait to write it

    def test_2_sees_no_event_of_another_test(self):
        self.assertEqual(CompletionEvent.objects.count(), 0)
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def real_database(request, tmp_path):
    """The project's own database (not the test one): it must get no event from the tests."""
    if request.param == "sqlite":
        yield {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "real.sqlite3")}
        return
    database = postgresql_database()
    yield database
    drop_postgresql_database(database)


@pytest.mark.parametrize("runner", ["pytest", "django"])
def test_usage_events_stay_in_each_test_and_out_of_the_real_database(project, real_database, runner):
    (project / "proj_settings.py").write_text(f"DATABASE = {real_database!r}\n" + RECORDING_SETTINGS)
    (project / "checks" / "tests.py").write_text(textwrap.dedent(RECORDING_TESTS))
    migrated = run(project, "-m", "django", "migrate", "-v0")
    assert migrated.returncode == 0, migrated.stderr
    if runner == "pytest":
        result = run(project, "-m", "pytest", "-p", "no:cacheprovider", "-q", "checks/tests.py")
        output = result.stdout + result.stderr
        assert "2 passed" in result.stdout, output
    else:
        result = run(project, "-m", "django", "test", "checks", "-v", "2")
        output = result.stdout + result.stderr
        assert "Ran 2 tests" in result.stderr, output
    assert result.returncode == 0, output
    assert "being accessed by other users" not in output
    count = run(
        project,
        "-c",
        "import django; django.setup(); from llmapp.models import CompletionEvent as E; "
        "print(E.objects.count())",
    )
    assert count.stdout.strip() == "0", count.stderr


OVERRIDE_TESTS = """
from django.test import TestCase

from llmapp.calls.service import plan_call
from llmapp.conf import overrides


class OverrideTests(TestCase):
    def test_1_saves_an_override(self):
        overrides.save_override("summarize", {"PROMPT": "Test one's prompt."})
        overrides.refresh()
        self.assertEqual(plan_call("summarize", "x")[0].prompt, "Test one's prompt.")

    def test_2_reads_its_own_database(self):
        overrides.refresh()  # within the second that a per-process cache would trust
        self.assertNotEqual(plan_call("summarize", "x")[0].prompt, "Test one's prompt.")
"""


@pytest.mark.parametrize("runner", ["pytest", "django"])
def test_an_override_saved_in_one_test_is_not_seen_in_the_next(project, tmp_path, runner):
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "real.sqlite3")}
    (project / "proj_settings.py").write_text(f"DATABASE = {database!r}\n" + RECORDING_SETTINGS)
    (project / "checks" / "tests.py").write_text(textwrap.dedent(OVERRIDE_TESTS))
    passes(project, runner, 2)


def passes(project, runner, tests):
    """Run the project's checks/tests.py with ``runner`` (pytest, or Django's); all ``tests`` pass."""
    if runner == "pytest":
        result = run(project, "-m", "pytest", "-p", "no:cacheprovider", "-q", "checks/tests.py")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{tests} passed" in result.stdout
    else:
        result = run(project, "-m", "django", "test", "checks", "-v", "2")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"Ran {tests} test" in result.stderr


def test_a_test_without_the_database_reads_no_overrides_after_settings_change(settings, monkeypatch, caplog):
    # A settings change forgets what was read; the plugin's "this test may not query" must
    # outlast it, or the next call tries the database, is refused, and logs a failure.
    from llmapp import complete_prompt
    from llmapp.conf import overrides
    from llmapp.metrics.throttle import Throttle

    monkeypatch.setattr(overrides._state, "throttle", Throttle(60.0))
    settings.LLM_EVENTSTREAM = "null"
    with caplog.at_level(logging.WARNING, logger="llmapp.overrides"):
        assert complete_prompt("summarize", "hi", provider="test").text
    assert [r.getMessage() for r in caplog.records if r.name == "llmapp.overrides"] == []


@pytest.mark.django_db
def test_a_save_lifts_the_assumption_that_a_test_has_no_database(settings):
    # A test judged "no database" when it started may still get one (pytest-django's
    # request.getfixturevalue("db")): its save shows that it has, and is read.
    from llmapp.calls.service import plan_call
    from llmapp.conf import overrides

    overrides.assume_none()  # what the plugin does for a test without a django_db mark
    settings.LLM_EVENTSTREAM = "null"  # a change of settings: the assumption outlasts it
    overrides.refresh()
    overrides.save_override("summarize", {"PROMPT": "A prompt saved late."})
    overrides.refresh()
    assert plan_call("summarize", "x")[0].prompt == "A prompt saved late."


OTHER_DATABASE_SETTINGS = """
SECRET_KEY = "test"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "llmapp"]
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", "TEST": {"DEPENDENCIES": []}},
}
LLM_PROVIDERS = {"default": {"BACKEND": "llmapp.providers.locmem.LocmemProvider"}}
LLM_EVENTSTREAM = "null"
LLM_TSDB = "null"
TEST_RUNNER = "llmapp.testing.runner.DiscoverRunner"
"""

OTHER_DATABASE_TESTS = """
from django.test import TestCase

from llmapp import complete_prompt


class OtherDatabaseTests(TestCase):
    databases = {"other"}  # not the one the overrides are read from: Django refuses that one

    def test_calls_without_reading_the_overrides(self):
        with self.assertNoLogs("llmapp.overrides"):
            complete_prompt("summarize", "hi")
"""


@pytest.mark.parametrize("runner", ["pytest", "django"])
def test_a_test_case_of_another_database_reads_no_overrides(project, runner):
    (project / "proj_settings.py").write_text(OTHER_DATABASE_SETTINGS)
    (project / "checks" / "tests.py").write_text(textwrap.dedent(OTHER_DATABASE_TESTS))
    passes(project, runner, 1)


def test_the_outbox_keeps_what_was_sent_not_the_call_that_sent_it(settings):
    import gc

    from llmapp import complete_prompt
    from llmapp.calls.retries import Attempts
    from llmapp.providers import locmem

    settings.LLM_EVENTSTREAM, settings.LLM_TSDB = "null", "null"
    settings.LLM_USECASES = {"summarize": {"PROVIDER": "test"}}
    locmem.reset()
    try:
        for number in range(3):
            complete_prompt("summarize", f"call {number}", timeout=7)
        assert [sent.message for sent in locmem.outbox] == ["call 0", "call 1", "call 2"]
        assert all(sent.deadline is None and sent.timeout <= 7 for sent in locmem.outbox)
        # A long outbox held each call's Attempts (its routes, breakers and budgets) alive.
        # type(), not isinstance(): that would set up the lazy objects among them.
        gc.collect()
        assert not [held for held in gc.get_objects() if type(held) is Attempts]
    finally:
        locmem.reset()
