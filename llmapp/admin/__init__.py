"""llmapp in the Django admin: the use-case registry and the completion log.

Use cases live in code, settings and the environment, not in a table: they are
shown the way django-rq shows its queues, through an unmanaged placeholder model
whose ModelAdmin renders the registry. Completions and evaluation runs are ordinary
rows, read-only.
"""

from llmapp.admin.completions import CompletionEventAdmin
from llmapp.admin.evaluations import EvaluationRunAdmin
from llmapp.admin.usecases import UseCaseAdmin

__all__ = ["CompletionEventAdmin", "EvaluationRunAdmin", "UseCaseAdmin"]
