"""ASGI entry point: configure the environment, then build the Django application."""

from pathlib import Path

from llmproject.runner import configure

configure(default_settings="settings.prod", root=Path(__file__).resolve().parent.parent)

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
