#!/usr/bin/env python
"""Django's command-line utility for the llmapp host project."""

import sys
from pathlib import Path

from llmproject.runner import configure


def main():
    configure(default_settings="settings.dev", root=Path(__file__).resolve().parent)
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A configuration mistake is one line that says what to fix, not a traceback.
        if "--traceback" in sys.argv:
            raise
        sys.exit(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
