"""Django's DEBUG error page without credentials.

Django's own filter hides settings by name (``API``, ``KEY``, ``TOKEN``...); a
credential in a URL (``LLM_PROVIDERS[...]["OPTIONS"]["base_url"]``,
``http://user:pass@host``) or under a name that says nothing is shown as is. Use this
one instead::

    DEFAULT_EXCEPTION_REPORTER_FILTER = "llmapp.debug.SafeExceptionReporterFilter"
"""

from django.views import debug

from llmapp.conf.secrets import redact


class SafeExceptionReporterFilter(debug.SafeExceptionReporterFilter):
    """Also mask, in every string setting, URL credentials, known secrets and key shapes."""

    def cleanse_setting(self, key, value):
        # Django recurses into dicts, lists and tuples through this method: every string passes here.
        cleansed = super().cleanse_setting(key, value)
        return redact(cleansed) if isinstance(cleansed, str) else cleansed
