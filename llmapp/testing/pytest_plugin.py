"""pytest plugin: each test starts with an empty locmem outbox and reply queue, and reads
the use-case overrides of its own database.

Registered through the ``pytest11`` entry point, so installing llmapp is enough. Under
pytest-django, usage events are also recorded synchronously for the whole session.
"""

import pytest

from llmapp.testing import reset_locmem, reset_overrides, synchronous_events


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
    reset_overrides(database=_uses_database(request))
    yield
    reset_locmem()
    reset_overrides()


def _uses_database(request):
    """Whether pytest-django lets the test query: a django_db mark, a fixture that needs the
    database, or a Django test case class whose ``databases`` it names."""
    databases = getattr(request.cls, "databases", None)  # Django's SimpleTestCase and its subclasses
    if databases is not None:
        return bool(databases)
    if request.node.get_closest_marker("django_db") is not None:
        return True
    return bool(
        {"db", "transactional_db", "django_db_reset_sequences", "live_server"} & set(request.fixturenames)
    )
