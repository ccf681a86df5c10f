"""Settings of the in-process benchmarks (per-call, async, metrics): the test settings, plus providers.

The database is the host project's, as settings.base builds it from ``DATABASE_URL``
(a migrated SQLite copy, set by ``bench.harness.setup_django``, or PostgreSQL in a
``bench.child`` process); the event stream and TSDB are the defaults a user has,
``database``, with its default options. The per-call benchmarks point the openai
provider at their fake server with ``override_settings``.
"""

from settings import base
from settings.test import *  # noqa: F403

from .harness import PROMPT as BENCH_PROMPT
from .harness import USECASE

# Not the test settings' database: the one a user of the host project has.
DATABASES = base.DATABASES

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
    USECASE: {"PROVIDER": "openai", "MODEL": "gpt-4o-mini", "PROMPT": BENCH_PROMPT},
    "bench-locmem": {"PROVIDER": "locmem", "PROMPT": BENCH_PROMPT},
}
LLM_EVENTSTREAM = "database"
# The test settings may write events inline, for the tests' transactions: a user's are the defaults.
LLM_EVENTSTREAM_OPTIONS = {}
LLM_TSDB = "database"
