from django.db import connection, transaction

from .base import EventStream


class DatabaseEventStream(EventStream):
    """Insert a CompletionEvent row: one INSERT on the caller's thread, nothing more."""

    writes_to_database = True

    def record(self, event):
        from ..models import CompletionEvent

        row = CompletionEvent(**event.as_dict())
        if connection.in_atomic_block:
            # A savepoint, so that a failed insert cannot break the caller's transaction.
            with transaction.atomic():
                row.save(force_insert=True)
        else:
            row.save(force_insert=True)
