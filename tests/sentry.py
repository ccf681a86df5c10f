"""What the Sentry tests share: a client each test puts back, and a request through WSGI."""

import contextlib
from wsgiref.util import setup_testing_defaults

import sentry_sdk
from django.core.handlers.wsgi import WSGIHandler


@contextlib.contextmanager
def restored_sentry(close_timeout=2):
    """Run the block in a fresh scope; then close any client it made and put the previous one back."""
    previous = sentry_sdk.get_client()
    with sentry_sdk.isolation_scope(), sentry_sdk.new_scope():
        yield
    client = sentry_sdk.get_client()
    if client is not previous:
        client.close(timeout=close_timeout)
    sentry_sdk.get_global_scope().set_client(previous)


def wsgi_get(path_info, **environ):
    """GET ``path_info`` through Django's WSGI handler, as a WSGI server would; return the status."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path_info, **environ}
    setup_testing_defaults(environ)
    statuses = []
    response = WSGIHandler()(environ, lambda status, headers, exc_info=None: statuses.append(status))
    b"".join(response)
    response.close()
    return statuses[0]
