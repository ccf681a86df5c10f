"""Evaluate a use case on a dataset, on several routes: ``manage.py llm_eval``.

Each case is a batch item (``id``, ``message`` or ``messages``, overrides) with the
``expected`` answer and how to ``check`` it; ``cases`` reads them, ``checks`` says
whether an answer passes, ``runner`` runs each case on each route through the batch
machinery (resumable, concurrent, paced by rate limits), ``report`` sums it up per route.
"""
