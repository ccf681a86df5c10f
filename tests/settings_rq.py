"""Settings of the RQ workers that tests/test_batch_rq.py starts: settings.test plus RQ.

What a worker must share with the test process, the test passes as JSON in
LLM_TEST_SHARED_SETTINGS: the database, the providers and use cases, TASKS, RQ_QUEUES
and RQ. So the workers run exactly what the test configured, fake server URL included.
"""

import json
import os

from settings.test import *  # noqa: F403
from settings.test import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks", "django_rq", "django_tasks_rq"]

globals().update(json.loads(os.environ["LLM_TEST_SHARED_SETTINGS"]))
