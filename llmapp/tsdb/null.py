from llmapp.tsdb.base import DEFAULT_WINDOW, TSDB


class NullTSDB(TSDB):
    """Keep nothing; every page says "no data"."""

    has_data = False

    def get_usage(self, usecases=None, window=DEFAULT_WINDOW):
        return {}
