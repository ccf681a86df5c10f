"""Test support for projects that use llmapp: a fresh ``locmem`` provider in every test.

Like Django's ``mail.outbox``, the locmem provider's outbox and queued replies are
emptied around every test, and the use-case overrides are read again from each test's
database: by the pytest plugin (registered through an entry point, so pytest-django
projects need nothing), or by :class:`llmapp.testing.runner.DiscoverRunner` for Django's
own test runner. Both also record usage events synchronously for the
whole run (:func:`synchronous_events`).
"""

import contextlib
import sys

LOCMEM_MODULE = "llmapp.providers.locmem"
OVERRIDES_MODULE = "llmapp.conf.overrides"


def reset_locmem():
    """Empty the locmem outbox and reply queue, if any test has used them.

    Nothing is imported: a module not yet imported has nothing to reset, and the
    pytest plugin must cost nothing in projects that never use llmapp.
    """
    locmem = sys.modules.get(LOCMEM_MODULE)
    if locmem is not None:
        locmem.reset()


def may_read_overrides(databases):
    """Whether a test allowed ``databases`` (a Django test case's, or a django_db mark's) may
    read the use-case overrides: from the database the router reads them from."""
    if databases == "__all__":
        return True
    from django.db import router

    from llmapp.models import UseCaseRevision

    return router.db_for_read(UseCaseRevision) in (databases or ())


def reset_overrides(database=True):
    """Forget the use-case overrides this process read: each test reads its own database's.

    A test saves an override in its transaction, which is rolled back; without this the
    next test would go on with what the last one read. Without a ``database`` (a test
    that may not query), there are none to read, and no read is tried until the test
    saves one itself.
    """
    overrides = sys.modules.get(OVERRIDES_MODULE)
    if overrides is None:
        return
    overrides.assume_none(not database)


@contextlib.contextmanager
def synchronous_events():
    """Record usage events on the caller's connection, in its transaction, while the block runs.

    In tests: each test sees its own events at once and rolls them back with its
    transaction, and no writer thread holds a connection to the test database (which
    could then not be dropped) or outlives it (and write into the real database).
    """
    from django.conf import settings
    from django.test.utils import override_settings

    options = {**(getattr(settings, "LLM_EVENTSTREAM_OPTIONS", None) or {}), "synchronous": True}
    with override_settings(LLM_EVENTSTREAM_OPTIONS=options):
        yield
