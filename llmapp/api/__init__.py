"""The JSON API over use cases: ``include("llmapp.urls")``; see ``llmapp.api.views``."""
