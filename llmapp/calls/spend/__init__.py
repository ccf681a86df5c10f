"""Spend and traffic control: what calls cost, budgets, rate limits and the response cache.

Each keeps its state in the shared cache (``llmapp.calls.sharedstate``), so that every
worker of a deployment holds to the same limits.
"""
