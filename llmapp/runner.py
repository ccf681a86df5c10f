"""Prepare the process before Django starts: settings module, `.env` file, warnings.

This is what `manage.py`, `wsgi.py` and `asgi.py` call first, the way Sentry's
runner calls its own `configure()`. It imports nothing heavy: no Django app code,
no provider SDK.
"""

import mimetypes
import os
import sys
import warnings
from pathlib import Path

_configured = False

# Types that static files need and that some systems' registries lack.
_EXTRA_MIMETYPES = {
    ".map": "application/json",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".mjs": "text/javascript",
    ".svg": "image/svg+xml",
    ".webmanifest": "application/manifest+json",
}


class LLMAppWarning(UserWarning):
    """A warning from llmapp; always shown."""


def configure(default_settings="settings.dev", root=None):
    """Set DJANGO_SETTINGS_MODULE and load the env file into os.environ, once per process.

    The env file is ``LLM_ENV_FILE`` when set (it must then exist), else ``.env``
    in ``root`` (the current directory by default) when there is one.
    """
    global _configured
    if _configured:
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", default_settings)
    _read_env_file(Path(root) if root else Path.cwd())
    warnings.filterwarnings("always", category=LLMAppWarning)
    warnings.filterwarnings("always", module=r"llmapp(\.|$)")
    for extension, mimetype in _EXTRA_MIMETYPES.items():
        if mimetypes.guess_type("file" + extension)[0] is None:
            mimetypes.add_type(mimetype, extension)
    _configured = True


def _read_env_file(root):
    named = os.environ.get("LLM_ENV_FILE")
    path = Path(named) if named else root / ".env"
    if not path.is_file():
        if named:
            sys.exit(
                f"llmapp: LLM_ENV_FILE names {path}, which does not exist; "
                "create that file or unset LLM_ENV_FILE."
            )
        return
    import environ

    # Variables already in the environment win over the file, as in django-environ.
    environ.Env.read_env(str(path), overwrite=False)
