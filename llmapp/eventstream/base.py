class EventStream:
    """Receives one UsageEvent per completion.

    A backend takes its options (``LLM_EVENTSTREAM_OPTIONS``) as keyword arguments and
    names them in ``option_names``.
    """

    #: True when events land in CompletionEvent rows, where the database TSDB reads them.
    writes_to_database = False
    #: True when record() drops every event, so that callers need not build them.
    discards_events = False
    #: True when record() may wait on I/O in the caller's thread: async callers then run it
    #: off the event loop. A stream that only hands events on (to a queue) sets it False.
    blocking = True
    option_names = frozenset()

    def record(self, event):
        raise NotImplementedError

    def congested(self, headroom=0):
        """Say whether events wait in numbers that a producer able to wait should let drain.

        ``headroom``: how many more events the producer may add before it looks again.
        """
        return False

    def flush(self, timeout):
        """Wait until every event recorded so far is stored; return False on timeout."""
        return True

    def close(self, timeout):
        """Store what is pending, within ``timeout``, and release what the stream holds."""
        return self.flush(timeout)
