"""pytest plugin: each test starts with an empty locmem outbox and reply queue.

Registered through the ``pytest11`` entry point, so installing llmapp is enough.
"""

import pytest

from . import reset_locmem


@pytest.fixture(autouse=True)
def _llmapp_reset_locmem():
    reset_locmem()
    yield
    reset_locmem()
