"""Signals sent once each call ends, for a project's own accounting or alerts.

    from django.dispatch import receiver
    from llmapp.signals import completion_finished

    @receiver(completion_finished, sender="triage")  # the use case's name is the sender
    def count_spend(sender, completion, request, **kwargs):
        ...

Sent for sync, async and streamed calls alike (an async call awaits its async receivers),
after the usage event is queued. A receiver that raises is logged and never fails the call.
"""

from django.dispatch import Signal

#: The call answered: ``completion`` (a Completion), ``request`` (its CompletionRequest).
completion_finished = Signal()
#: The call failed: ``error`` (the exception it raised), ``request``.
completion_failed = Signal()
#: The call was refused by a budget before anything was sent: ``error`` (BudgetExceeded), ``request``.
budget_exceeded = Signal()
#: The call was held back by a rate limit: ``error`` (RateLimited), ``request``.
rate_limited = Signal()
