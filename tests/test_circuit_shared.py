"""The circuit breaker's state is shared by every worker process through a shared cache."""

import pytest

from tests.services import require_redis

DATABASE = 14  # a Redis database of its own, emptied around the test


@pytest.fixture
def redis_cache_url():
    import redis

    url = require_redis()
    client = redis.Redis.from_url(f"{url}/{DATABASE}")
    client.flushdb()
    yield f"{url}/{DATABASE}"
    client.flushdb()


def test_workers_share_one_circuit(manage, fake_openai, redis_cache_url):
    env = {
        "CACHE_URL": redis_cache_url,
        "LLM_SUMMARIZE_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "LLM_SUMMARIZE_RETRIES": "0",
    }
    for _ in range(5):  # the default threshold: five consecutive transient failures
        fake_openai.reply_error(503, "overloaded")
    for worker in range(5):
        result = manage("llm", "summarize", "-m", f"from worker {worker}", env=env)
        assert result.returncode == 1 and "HTTP 503" in result.stderr
    assert len(fake_openai.requests) == 5

    # Another process: the circuit is open, so nothing reaches the provider.
    result = manage("llm", "summarize", "-m", "after", env=env)
    assert result.returncode == 1
    assert "the circuit of provider(s) openai is open" in result.stderr
    assert len(fake_openai.requests) == 5

    # With a fallback, the open circuit sends the call straight there.
    result = manage("llm", "summarize", "-m", "after", env=env | {"LLM_SUMMARIZE_FALLBACKS": "default"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[preview answer")
    assert len(fake_openai.requests) == 5
