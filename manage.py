#!/usr/bin/env python
"""Django's command-line utility for the llmapp host project."""

import sys
from pathlib import Path

from llmapp.runner import configure


def main():
    configure(default_settings="settings.dev", root=Path(__file__).resolve().parent)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
