"""Call LLM providers by named use case from Django.

The public API is imported lazily so that importing ``llmapp`` (as manage.py does
before Django starts) costs nothing.
"""

from typing import TYPE_CHECKING

__version__ = "0.2.0"

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time, __getattr__ imports it on use
    from llmapp.calls.service import acomplete_prompt, astream_prompt, complete_prompt, stream_prompt
    from llmapp.calls.types import CallOptions, Completion
    from llmapp.conf.usecases import register_usecase

_EXPORTS = {
    "complete_prompt": "llmapp.calls.service",
    "stream_prompt": "llmapp.calls.service",
    "acomplete_prompt": "llmapp.calls.service",
    "astream_prompt": "llmapp.calls.service",
    "Completion": "llmapp.calls.types",
    "CallOptions": "llmapp.calls.types",
    "register_usecase": "llmapp.conf.usecases",
}

__all__ = [
    "CallOptions",
    "Completion",
    "acomplete_prompt",
    "astream_prompt",
    "complete_prompt",
    "register_usecase",
    "stream_prompt",
]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llmapp' has no attribute {name!r}")
