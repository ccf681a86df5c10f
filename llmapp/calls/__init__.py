"""The call path: service → retries and circuit breaker → provider, recorded once it ends."""
