"""Settings of the in-process benchmarks (per-call, metrics): the test settings, plus providers.

The database is the host project's, as settings.base builds it from ``DATABASE_URL``
(a migrated SQLite copy, set by ``bench.harness.setup_django``); the event stream
and TSDB are the defaults a user has, ``database``. The per-call benchmark points
the openai provider at its fake server with ``override_settings``.
"""

from settings import base
from settings.test import *  # noqa: F403

# Not the test settings' database: the one a user of the host project has.
DATABASES = base.DATABASES

BENCH_PROMPT = "You summarize text. Write a faithful, concise summary of the user's message."

LLM_PROVIDERS = {
    "default": {"BACKEND": "llmapp.providers.preview.PreviewProvider"},
    "locmem": {"BACKEND": "llmapp.providers.locmem.LocmemProvider"},
    "openai": {
        "BACKEND": "llmapp.providers.openai.OpenAIProvider",
        "OPTIONS": {
            "api_key": "sk-bench",
            "base_url": "http://127.0.0.1:9/v1",
            "timeout": 30,
        },
    },
}
LLM_USECASES = {
    "bench-openai": {"PROVIDER": "openai", "MODEL": "gpt-4o-mini", "PROMPT": BENCH_PROMPT},
    "bench-locmem": {"PROVIDER": "locmem", "PROMPT": BENCH_PROMPT},
}
LLM_EVENTSTREAM = "database"
LLM_TSDB = "database"
