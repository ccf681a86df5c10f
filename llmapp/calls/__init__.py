"""The call path: service → retries and circuit breaker → provider, recorded once it ends.

``output/`` reads answers into their types; ``spend/`` holds calls to their prices,
budgets, rate limits and response cache.
"""
