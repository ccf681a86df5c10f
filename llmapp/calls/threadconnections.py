"""Closing the database connections of llmapp's own threads, safely at any moment.

The usage events' writer, the shared state's cache thread and the overrides' reader each
hold connections of their own, which Django's request cycle never closes. Each closes them
before it tells its caller it is done, so that a process which exits right after has
nothing left to close; and none closes them once the interpreter is finalizing (a thread
that a timed-out caller left behind): closing a SQLite connection calls back into the
interpreter, which crashes the process then (seen once in a hundred CLI runs). The OS
closes them instead.
"""

import contextlib
import sys

from django.db import InterfaceError, OperationalError, connections


def close_thread_connections():
    """Close this thread's database connections; a failure to close is not an error."""
    if sys.is_finalizing():
        return
    for connection in connections.all(initialized_only=True):
        with contextlib.suppress(OperationalError, InterfaceError):
            connection.close()
