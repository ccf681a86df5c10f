"""A provider backend of a project's own, as a project would write one on llmapp's template."""

from llmapp.providers.preview import PreviewProvider


class InHouseProvider(PreviewProvider):
    """Answers offline, like preview; declares what the rest of llmapp needs of it."""

    key_pattern = r"\binh_[a-z0-9]{16}\b"
    sentry_integration = "sentry_sdk.integrations.httpx.HttpxIntegration"
    sdk_loggers = ("inhouse_sdk",)
