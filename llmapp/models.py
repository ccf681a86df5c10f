from django.conf import settings
from django.db import models
from django.utils import timezone


class CompletionEvent(models.Model):
    """One call to a use case, as the ``database`` event stream records it."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"
        # The model or the provider's filters declined to answer (ProviderRefused), on every route.
        REFUSED = "refused", "Refused"

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
    # How many turns the call's conversation had: 1 for a message alone.
    messages = models.PositiveIntegerField(default=1)
    request_id = models.CharField(max_length=200, blank=True)
    error_type = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    # Only with LLM_LOG_CONTENT = True: prompts and answers may hold personal data.
    prompt = models.TextField(blank=True)
    message = models.TextField(blank=True)
    response = models.TextField(blank=True)
    # The turns before the message, when the call carried a conversation (content too).
    conversation = models.JSONField(null=True, blank=True)
    # How an answer did not match the use case's output type (InvalidOutputError), one line
    # each: places in the answer and what was expected, never its content.
    output_errors = models.JSONField(null=True, blank=True)
    # US dollars over the call's attempts, and the rates it was priced at (PRICES may change
    # since); null when a model that answered has no price.
    cost = models.DecimalField(max_digits=24, decimal_places=12, null=True, blank=True)
    rates = models.JSONField(null=True, blank=True)
    # Given again from the use case's response cache: nothing was sent.
    cached = models.BooleanField(default=False)
    # Whom the call was for (app_label.model:pk, or the string the caller gave).
    subject = models.CharField(max_length=200, blank=True)
    # What the prompt was: "revision N" of the use case's override, or its templates' names
    # and source hashes ("llm/triage.txt@3f2a9c1b2d4e"), or a hash of its PROMPT.
    prompt_version = models.CharField(max_length=200, blank=True)
    # A failed call's exception and stack frames, secrets scrubbed and size bounded.
    exception = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["usecase", "created_at"], name="llmapp_event_usecase_time")]
        verbose_name = "completion"
        verbose_name_plural = "completion log"

    def __str__(self):
        return f"{self.usecase} via {self.provider} ({self.status}) at {self.created_at:%Y-%m-%d %H:%M:%S}"


class NoRows(models.Manager):
    """The manager of a model with no table: every queryset is empty and sends no query."""

    def get_queryset(self):
        return super().get_queryset().none()


class UseCase(models.Model):  # noqa: DJ008 (never instantiated, so never printed)
    """A placeholder with no table, so that use cases (defined in code) get an admin page.

    Its migration only registers the content type and the permissions below; the admin
    renders the registry (``llmapp.conf.usecases``). Both managers return nothing without a
    query, so that whole-project tools (``dumpdata``, ``loaddata``, serialized test
    databases) pass over it rather than fail on the missing table.
    """

    objects = NoRows()

    class Meta:
        managed = False
        base_manager_name = "objects"
        # change: edit its override (in the admin or over the API); view: read it and its history.
        default_permissions = ("view", "change")
        permissions = [("test_usecase", "Can send test prompts to use cases")]
        verbose_name = "use case"


class Batch(models.Model):
    """A use case run over many inputs by Django's Tasks framework, one task per item.

    ``manage.py llm USECASE --input FILE --enqueue`` creates it; ``manage.py llm_batch``
    follows it and collects its results.
    """

    usecase = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    total = models.PositiveIntegerField(default=0, help_text="How many items the input had.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"

    def __str__(self):
        return f"batch {self.pk} of {self.usecase} ({self.total} items)"

    def counts(self):
        """Return {status: number of items} for every BatchItem status, in lifecycle order."""
        counts = dict.fromkeys(BatchItem.Status.values, 0)
        rows = self.items.order_by().values_list("status").annotate(n=models.Count("pk"))
        counts.update(dict(rows))
        return counts

    @staticmethod
    def finished(counts):
        """How many items of ``counts`` have their record: done or failed."""
        return counts[BatchItem.Status.DONE] + counts[BatchItem.Status.FAILED]


class BatchItem(models.Model):
    """One input of a Batch: what to send, where its task is, and its output record.

    The message and its overrides are stored because a worker, possibly on another
    machine, runs the item later; the answer is kept in ``result`` until collected.
    So unlike CompletionEvent (which keeps content only with LLM_LOG_CONTENT), a batch
    holds its inputs and answers, which may be personal data: delete a batch once it is
    collected (its items go with it).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField(help_text="The item's place in the input, from 0.")
    item_id = models.TextField(help_text="The input's id, or its line number.")
    message = models.TextField(blank=True)
    overrides = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    # The item's output line, exactly as a local run writes it (JSON text, because
    # PostgreSQL's jsonb would reorder the keys): an answer, or {"id", "error"}.
    result = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(
        default=0, help_text="How many times a task for this item was delivered; it runs only once."
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["batch", "position"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "position"], name="llmapp_batchitem_position"),
        ]
        indexes = [models.Index(fields=["batch", "status"], name="llmapp_batchitem_status")]

    def __str__(self):
        return f"item {self.item_id} of batch {self.batch_id} ({self.status})"


class ApiToken(models.Model):
    """A bearer token of the JSON API (``manage.py llm_token``), acting as its user.

    Only a SHA-256 of the token is kept: the token has 256 random bits, so no slow hash
    is needed, and a leaked table gives nothing to send.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="llm_api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    # The token's first characters, to tell tokens apart in lists; not enough to use it.
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.prefix}… of {self.user}"


class UseCaseRevision(models.Model):
    """One change of a use case's override, the layer the admin and the API edit; append-only.

    The newest revision of a use case is its override. ``override`` holds the fields it
    sets (setting names, upper case); ``config`` the use case's whole effective
    configuration of editable fields once it was saved, so that history reads without
    replaying it. A revert is a new revision with an older one's override.
    """

    usecase = models.CharField(max_length=100, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept when the user is deleted; "" for a change made without one (llm_config import).
    author_name = models.CharField(max_length=150, blank=True)
    comment = models.TextField(blank=True)
    override = models.JSONField(default=dict, blank=True)
    config = models.JSONField(default=dict, blank=True)
    # The revision this one restores, for a revert.
    reverts = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-pk"]
        get_latest_by = "pk"
        verbose_name = "use-case revision"

    def __str__(self):
        return f"revision {self.pk} of {self.usecase}"


class EvaluationRun(models.Model):
    """One ``manage.py llm_eval``: a use case's cases run on several routes, and how each route did.

    ``summary`` holds each route's figures (accuracy, passed, failed, errored, latency
    p50 and p95, tokens, cost, failing cases); ``disagreements`` the cases on which the
    routes' outcomes differ, with each route's answer. Those are answers, which may be
    personal data, as a batch's results are: delete a run once it is read.
    """

    usecase = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    input_name = models.CharField(max_length=500, blank=True)
    routes = models.JSONField(default=list)
    # What the prompt was (UseCase.prompt_version), and the override revision run, if one was named.
    prompt_version = models.CharField(max_length=200, blank=True)
    revision = models.PositiveIntegerField(null=True, blank=True)
    judge = models.CharField(max_length=100, blank=True)
    cases = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=list)
    disagreements = models.JSONField(default=list)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "evaluation run"

    def __str__(self):
        return f"evaluation {self.pk} of {self.usecase} ({self.cases} cases on {len(self.routes)} routes)"
