"""A Django test runner: the locmem provider emptied around every test, usage events synchronous.

TEST_RUNNER = "llmapp.testing.runner.DiscoverRunner"
"""

import unittest

from django.test import runner

from llmapp.testing import may_read_overrides, reset_locmem, reset_overrides, synchronous_events


class ResetLocmemResult:
    """A test result mixin: every test starts and ends with an empty locmem outbox."""

    def startTest(self, test):
        reset_locmem()
        # A SimpleTestCase may not query, and a TestCase only its databases.
        reset_overrides(database=may_read_overrides(getattr(test, "databases", None)))
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        reset_locmem()
        reset_overrides()


class RemoteTestResult(ResetLocmemResult, runner.RemoteTestResult):
    pass


class RemoteTestRunner(runner.RemoteTestRunner):
    resultclass = RemoteTestResult


class ParallelTestSuite(runner.ParallelTestSuite):
    # Parallel workers report through their own result class, not get_resultclass()'s.
    runner_class = RemoteTestRunner


class DiscoverRunner(runner.DiscoverRunner):
    """Django's DiscoverRunner; each test starts and ends with an empty locmem outbox, and usage
    events are recorded in each test's own transaction."""

    parallel_test_suite = ParallelTestSuite

    def setup_test_environment(self, **kwargs):
        super().setup_test_environment(**kwargs)
        self._synchronous_events = synchronous_events()
        self._synchronous_events.__enter__()

    def teardown_test_environment(self, **kwargs):
        self._synchronous_events.__exit__(None, None, None)
        super().teardown_test_environment(**kwargs)

    def get_resultclass(self):
        base = super().get_resultclass() or unittest.TextTestResult
        return type(f"ResetLocmem{base.__name__}", (ResetLocmemResult, base), {})
