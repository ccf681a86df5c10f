"""A Django test runner that empties the locmem provider around every test.

TEST_RUNNER = "llmapp.testing.runner.DiscoverRunner"
"""

import unittest

from django.test import runner

from . import reset_locmem


class ResetLocmemResult:
    """A test result mixin: every test starts and ends with an empty locmem outbox."""

    def startTest(self, test):
        reset_locmem()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        reset_locmem()


class RemoteTestResult(ResetLocmemResult, runner.RemoteTestResult):
    pass


class RemoteTestRunner(runner.RemoteTestRunner):
    resultclass = RemoteTestResult


class ParallelTestSuite(runner.ParallelTestSuite):
    # Parallel workers report through their own result class, not get_resultclass()'s.
    runner_class = RemoteTestRunner


class DiscoverRunner(runner.DiscoverRunner):
    """Django's DiscoverRunner; each test also starts and ends with an empty locmem outbox."""

    parallel_test_suite = ParallelTestSuite

    def get_resultclass(self):
        base = super().get_resultclass() or unittest.TextTestResult
        return type(f"ResetLocmem{base.__name__}", (ResetLocmemResult, base), {})
