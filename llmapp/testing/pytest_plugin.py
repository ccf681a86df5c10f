"""pytest plugin: each test starts with an empty locmem outbox and reply queue, and reads
the use-case overrides of its own database.

Registered through the ``pytest11`` entry point, so installing llmapp is enough. Under
pytest-django, usage events are also recorded synchronously for the whole session.
"""

import sys

import pytest

from llmapp.testing import (
    OVERRIDES_MODULE,
    may_read_overrides,
    reset_locmem,
    reset_overrides,
    synchronous_events,
)

DEFAULT_DB_ALIAS = "default"  # django.db's, without importing it where Django is not set up


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
def _llmapp_reset_locmem(request):
    reset_locmem()
    if OVERRIDES_MODULE in sys.modules:  # else nothing to reset, and maybe no Django to ask
        reset_overrides(database=_uses_database(request))
    yield
    reset_locmem()
    reset_overrides()


def _uses_database(request):
    """Whether pytest-django lets the test read the overrides' database: a Django test case
    class by its ``databases``, else a django_db mark or a fixture that needs the database."""
    testcases = sys.modules.get("django.test")  # imported already if the test is one of its cases
    if (
        request.cls is not None
        and testcases is not None
        and issubclass(request.cls, testcases.SimpleTestCase)
    ):
        return may_read_overrides(request.cls.databases)
    marker = request.node.get_closest_marker("django_db")
    if marker is not None:
        return may_read_overrides(marker.kwargs.get("databases") or {DEFAULT_DB_ALIAS})
    if {"db", "transactional_db", "django_db_reset_sequences", "live_server"} & set(request.fixturenames):
        return may_read_overrides({DEFAULT_DB_ALIAS})
    return False
