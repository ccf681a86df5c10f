"""Test support for projects that use llmapp: a fresh ``locmem`` provider in every test.

Like Django's ``mail.outbox``, the locmem provider's outbox and queued replies are
emptied around every test: by the pytest plugin (registered through an entry point,
so pytest-django projects need nothing), or by :class:`llmapp.testing.runner.DiscoverRunner`
for Django's own test runner. Both also record usage events synchronously for the
whole run (:func:`synchronous_events`).
"""

import contextlib
import sys

LOCMEM_MODULE = "llmapp.providers.locmem"


def reset_locmem():
    """Empty the locmem outbox and reply queue, if any test has used them.

    Nothing is imported: a module not yet imported has nothing to reset, and the
    pytest plugin must cost nothing in projects that never use llmapp.
    """
    locmem = sys.modules.get(LOCMEM_MODULE)
    if locmem is not None:
        locmem.reset()


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
