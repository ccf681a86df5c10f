"""Local development: the default settings module of manage.py."""

from llmproject.envvars import flag, from_env

from .base import *  # noqa: F403

DEBUG = from_env("DJANGO_DEBUG", flag, default=True)
