"""Closing the database connections of llmapp's own threads where a process may exit.

The usage events' writer, the shared state's cache thread and the overrides' reader each
hold connections of their own, which Django's request cycle never closes. Each closes them
before it tells its caller it is done, so that a process which exits right after has
nothing left to close: closing a SQLite connection calls back into the interpreter, and
a close still under way as the interpreter finalized crashed the process (seen once in a
hundred CLI runs). A thread whose caller gave up on it (a hung database) closes nothing
after that: the process may be exiting, and the OS closes them.
"""

import contextlib

from django.db import InterfaceError, OperationalError, connections


def close_thread_connections():
    """Close this thread's database connections; a failure to close is not an error."""
    for connection in connections.all(initialized_only=True):
        with contextlib.suppress(OperationalError, InterfaceError):
            connection.close()
