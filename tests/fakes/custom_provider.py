"""A provider backend of a project's own, as a project would write one on llmapp's template."""

from llmapp.providers.preview import PreviewProvider


class InHouseProvider(PreviewProvider):
    """Answers offline, like preview; declares what the rest of llmapp needs of it."""

    key_pattern = r"\binh_[a-z0-9]{16}\b"
    sentry_integration = "sentry_sdk.integrations.httpx.HttpxIntegration"
    sdk_loggers = ("inhouse_sdk",)


class BadPatternProvider(PreviewProvider):
    """Declares a key pattern that does not compile."""

    key_pattern = r"inh_[a-z"


class TokenProvider(PreviewProvider):
    """Needs a token it does not have, and says so with a plain ConfigurationError."""

    def check_connection(self):
        from llmapp.exceptions import ConfigurationError

        raise ConfigurationError("provider needs a token: set INHOUSE_TOKEN.")


class UntypedProvider(PreviewProvider):
    """A backend that cannot ask for a typed answer (it sends no system prompt, say)."""

    output_modes = ()
