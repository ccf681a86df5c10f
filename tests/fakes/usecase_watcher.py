"""A long-lived process that, for each line on stdin, prints what the next call of a use case sends.

Run with the host project's settings; ``LLM_TEST_RECHECK`` sets how often a per-process
cache's process re-reads the newest revision (the test's clock, not a second's wait).
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[0] = str(ROOT)  # not this folder, whose http.py would shadow the standard library's

from llmproject.runner import configure  # noqa: E402

configure(default_settings="settings.dev", root=ROOT)

import django  # noqa: E402

django.setup()

from llmapp.calls.service import plan_call  # noqa: E402
from llmapp.conf import overrides  # noqa: E402

if "LLM_TEST_RECHECK" in os.environ:
    overrides.LOCAL_RECHECK = float(os.environ["LLM_TEST_RECHECK"])

for line in sys.stdin:
    usecase = line.strip()
    overrides.refresh()
    request, _ = plan_call(usecase, "What changed?")
    print(json.dumps({"model": request.model, "prompt": request.prompt, "temperature": request.temperature}))
    sys.stdout.flush()
