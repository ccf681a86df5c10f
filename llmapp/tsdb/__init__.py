"""What reads usage back (LLM_TSDB = database or null), for the admin and the CLI."""

import functools

from llmapp import conf
from llmapp.conf.backends import backend_class

ALIASES = {
    "database": "llmapp.tsdb.database.DatabaseTSDB",
    "null": "llmapp.tsdb.null.NullTSDB",
}


@functools.cache
def get_tsdb():
    return backend_class("LLM_TSDB", ALIASES)()


conf.on_change(get_tsdb.cache_clear)
