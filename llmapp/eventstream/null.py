from llmapp.eventstream.base import EventStream


class NullEventStream(EventStream):
    """Drop every event."""

    discards_events = True
    blocking = False

    def record(self, event):
        pass
