"""initialize_app(): what LlmAppConfig.ready() runs once per process."""

_initialized = False


def initialize_app():
    """Bring up llmapp's services; touches no database and no network."""
    global _initialized
    if _initialized:
        return
    _initialized = True
