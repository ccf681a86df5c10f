from django.db import models
from django.utils import timezone


class CompletionEvent(models.Model):
    """One call to a use case, as the ``database`` event stream records it."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    usecase = models.CharField(max_length=100)
    provider = models.CharField(max_length=100)
    model = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices)
    latency_ms = models.FloatField()
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    request_id = models.CharField(max_length=200, blank=True)
    error_type = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    # Only with LLM_LOG_CONTENT = True: prompts and answers may hold personal data.
    prompt = models.TextField(blank=True)
    message = models.TextField(blank=True)
    response = models.TextField(blank=True)
    # A failed call's exception and stack frames, secrets scrubbed and size bounded.
    exception = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["usecase", "created_at"], name="llmapp_event_usecase_time")]
        verbose_name = "completion"
        verbose_name_plural = "completion log"

    def __str__(self):
        return f"{self.usecase} via {self.provider} ({self.status}) at {self.created_at:%Y-%m-%d %H:%M:%S}"
