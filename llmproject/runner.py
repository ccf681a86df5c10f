"""Prepare the process before Django starts: settings module, `.env` file, warnings.

This is what the host project's `manage.py`, `wsgi.py` and `asgi.py` call first, the
way Sentry's runner calls its own `configure()`. It is the host project's glue, not
part of llmapp: a project that embeds llmapp has its own. It imports nothing heavy:
no Django app code, no provider SDK.
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
    if not named and not path.exists():
        return
    problem = _unreadable(path)
    if problem:
        where = f"LLM_ENV_FILE names {path}" if named else f"the env file {path}"
        fix = "point LLM_ENV_FILE at a readable file or unset it" if named else "fix or remove it"
        sys.exit(f"llmapp: {where}, which {problem}; {fix}.")
    import environ

    # Variables already in the environment win over the file, as in django-environ.
    environ.Env.read_env(str(path), overwrite=False)


def _unreadable(path):
    """Say why ``path`` cannot be read as an env file, or return None."""
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is a directory, not a file" if path.is_dir() else "is not a regular file"
    try:
        path.read_bytes().decode("utf-8")
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    return None
