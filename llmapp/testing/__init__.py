"""Test support for projects that use llmapp: a fresh ``locmem`` provider in every test.

Like Django's ``mail.outbox``, the locmem provider's outbox and queued replies are
emptied around every test: by the pytest plugin (registered through an entry point,
so pytest-django projects need nothing), or by :class:`llmapp.testing.runner.DiscoverRunner`
for Django's own test runner.
"""

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
