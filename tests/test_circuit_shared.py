"""The circuit breaker's state is shared by every worker process through a shared cache."""

import pytest

from tests.services import redis_namespace


@pytest.fixture
def redis_cache():
    """A key prefix of this test's own on the machine's Redis: other runs use the same server."""
    with redis_namespace() as namespace:
        yield namespace


def test_workers_share_one_circuit(manage, fake_openai, redis_cache):
    # Without the prefix, the children would write where every other run reads.
    result = manage(
        "shell",
        "-c",
        "from django.core.cache import cache; print(cache.key_prefix)",
        env={"CACHE_URL": redis_cache.url},
    )
    assert result.stdout.splitlines()[-1:] == [redis_cache.prefix], (
        "manage.py ignored ?key_prefix= in CACHE_URL: the host settings must pass it on as KEY_PREFIX"
    )

    env = {
        **redis_cache.env,
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

    # The state is under this test's own prefix (a parallel run's is under another), and
    # the fixture deletes it: the next run starts with the circuit closed.
    stored = redis_cache.stored_keys()
    circuit_keys = {key.rpartition(":llmapp:circuit:")[2] for key in stored if ":llmapp:circuit:" in key}
    assert circuit_keys == {"openai:failures", "openai:opened"}
