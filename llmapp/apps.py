from django.apps import AppConfig


class LlmAppConfig(AppConfig):
    name = "llmapp"
    verbose_name = "LLM"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.core import checks

        from llmapp.conf.checks import check_llmapp, check_overrides
        from llmapp.conf.startup import initialize_app

        checks.register(check_llmapp, "llmapp")
        checks.register(check_overrides, "llmapp", checks.Tags.database)
        initialize_app()
