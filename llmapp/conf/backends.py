"""Build the single-instance backends named by a setting: an alias or an import string."""

from django.utils.module_loading import import_string

from llmapp import conf
from llmapp.exceptions import ConfigurationError


def backend_class(setting, aliases):
    """Return the class ``setting`` names, or raise ConfigurationError saying what it may be."""
    value = conf.get_setting(setting)
    path = aliases.get(value, value)
    try:
        return import_string(path)
    except (ImportError, TypeError) as exc:
        raise ConfigurationError(
            f"{setting} = {value!r} is neither one of {', '.join(map(repr, aliases))} "
            f"nor an importable backend ({exc}).",
            check_id="llmapp.E007",
            hint=f"Set {setting} to one of {', '.join(aliases)}, or a backend's import string.",
        ) from None
