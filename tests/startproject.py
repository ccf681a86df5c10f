"""A fresh `django-admin startproject` with llmapp installed, as a user's project starts out."""

import subprocess
import sys
from pathlib import Path

from tests.environment import isolated_environ


class Project:
    """A project made by ``startproject`` in ``root``, run with ``python``."""

    def __init__(self, root, python=sys.executable, name="mysite"):
        self.root = Path(root)
        self.python = python
        self.name = name
        self.root.mkdir(parents=True, exist_ok=True)
        result = self.run("-m", "django", "startproject", name, ".")
        assert result.returncode == 0, result.stderr
        self.settings = self.root / name / "settings.py"
        self.add_settings('INSTALLED_APPS += ["llmapp"]')

    def add_settings(self, text):
        with self.settings.open("a") as handle:
            handle.write("\n" + text.strip() + "\n")

    def env(self, extra=None):
        # Nothing of this repository on the path: only what is installed.
        return isolated_environ() | {"PYTHONPATH": ""} | (extra or {})

    def run(self, *args, env=None, input=None, timeout=120):
        """Run ``python *args`` in the project's folder."""
        return subprocess.run(
            [self.python, *args],
            cwd=self.root,
            env=self.env(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def manage(self, *args, **kwargs):
        return self.run("manage.py", *args, **kwargs)
