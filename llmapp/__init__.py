"""Call LLM providers by named use case from Django.

The public API is imported lazily so that importing ``llmapp`` (as manage.py does
before Django starts) costs nothing.
"""

__version__ = "0.2.0"

_EXPORTS = {
    "complete_prompt": "llmapp.calls.service",
    "stream_prompt": "llmapp.calls.service",
    "acomplete_prompt": "llmapp.calls.service",
    "astream_prompt": "llmapp.calls.service",
    "Completion": "llmapp.calls.types",
    "register_usecase": "llmapp.conf.usecases",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llmapp' has no attribute {name!r}")
