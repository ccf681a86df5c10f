from django.db import connection, transaction

from .base import EventStream


class DatabaseEventStream(EventStream):
    """Insert a CompletionEvent row: one INSERT on the caller's thread, nothing more."""

    writes_to_database = True

    def record(self, event):
        from ..models import CompletionEvent

        row = CompletionEvent(**storable(event.as_dict()))
        if connection.in_atomic_block:
            # A savepoint, so that a failed insert cannot break the caller's transaction.
            with transaction.atomic():
                row.save(force_insert=True)
        else:
            row.save(force_insert=True)


def storable(value):
    """Return ``value`` with every NUL character in its strings replaced by U+FFFD.

    PostgreSQL's text and jsonb cannot hold NUL: one in a message would lose the whole
    event. Replaced on every database, so that stored events read the same everywhere.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value
