"""pytest plugin: each test starts with an empty locmem outbox and reply queue.

Registered through the ``pytest11`` entry point, so installing llmapp is enough. Under
pytest-django, usage events are also recorded synchronously for the whole session.
"""

import pytest

from llmapp.testing import reset_locmem, synchronous_events


@pytest.fixture(scope="session", autouse=True)
def _llmapp_synchronous_events(request):
    if not request.config.pluginmanager.hasplugin("django"):
        yield  # not a Django project's tests
        return
    request.getfixturevalue("django_test_environment")
    from django.conf import settings

    if not settings.configured:
        yield
        return
    with synchronous_events():
        yield


@pytest.fixture(autouse=True)
def _llmapp_reset_locmem():
    reset_locmem()
    yield
    reset_locmem()
