class EventStream:
    """Receives one UsageEvent per completion."""

    #: True when events land in CompletionEvent rows, where the database TSDB reads them.
    writes_to_database = False
    #: True when record() drops every event, so that callers need not build them.
    discards_events = False

    def record(self, event):
        raise NotImplementedError
