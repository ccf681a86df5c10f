from django.apps import AppConfig


class LlmAppConfig(AppConfig):
    name = "llmapp"
    verbose_name = "LLM"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from .startup import initialize_app

        initialize_app()
