"""`manage.py llm` with two DSNs: both ingests receive the call, secrets reach neither."""

import socket

import pytest

from tests.conftest import API_KEY


@pytest.fixture
def sentry_env(sentry_ingests, fake_openai):
    upstream, relay = sentry_ingests(project_id=1), sentry_ingests(project_id=2)
    env = {
        "SENTRY_DSN": upstream.dsn,
        "SENTRY_RELAY_DSN": relay.dsn,
        "SENTRY_TRACES_SAMPLE_RATE": "1.0",
        "LLM_SUMMARIZE_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_API_KEY": API_KEY,
    }
    return upstream, relay, env


def gen_ai_spans(ingest):
    """Return the gen_ai.chat spans as {name, op, origin, data}, from either span format.

    sentry-sdk sends a transaction's spans inside it, or (newer releases, for gen_ai
    spans) as separate "span" items whose data are typed attributes.
    """
    spans = [
        {
            "name": span.get("description"),
            "op": span.get("op"),
            "origin": span.get("origin"),
            "data": span.get("data") or {},
        }
        for item in ingest.items_of_type("transaction")
        for span in item.json.get("spans", [])
    ]
    for item in ingest.items_of_type("span"):
        payload = item.json
        for span in payload.get("items", [payload]):
            data = {key: value.get("value") for key, value in (span.get("attributes") or {}).items()}
            spans.append(
                {
                    "name": span.get("name"),
                    "op": data.get("sentry.op"),
                    "origin": data.get("sentry.origin"),
                    "data": data,
                }
            )
    return [span for span in spans if span["op"] == "gen_ai.chat"]


def test_one_call_reaches_upstream_and_relay(manage, sentry_env):
    upstream, relay, env = sentry_env
    env["LLM_METRICS_BACKEND"] = "llmapp.metrics.sentry.SentryMetricsBackend"
    result = manage("llm", "summarize", "-m", "The build is green again.", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Fake answer to: The build is green again.\n"

    for ingest in (upstream, relay):
        [transaction] = [item.json for item in ingest.items_of_type("transaction")]
        assert transaction["transaction"] == "manage.py llm summarize"
        assert transaction["release"].startswith("llmapp@")
        [span] = gen_ai_spans(ingest)
        data = span["data"]
        assert span["name"] == "chat gpt-4o-mini"
        assert span["origin"] == "auto.ai.llmapp"
        assert data["gen_ai.operation.name"] == "chat"
        assert data["gen_ai.provider.name"] == "openai"
        assert data["gen_ai.request.model"] == "gpt-4o-mini"
        assert data["gen_ai.response.model"] == "gpt-4o-mini"
        assert data["gen_ai.pipeline.name"] == "summarize"
        assert data["gen_ai.request.temperature"] == 0.2
        assert data["gen_ai.request.max_tokens"] == 400
        assert data["gen_ai.usage.output_tokens"] == 8
        assert data["gen_ai.usage.input_tokens"] > 0
        # send_default_pii is off: neither the message nor the answer is attached.
        assert "gen_ai.request.messages" not in data and "gen_ai.response.text" not in data
        # The SDK's own OpenAI integration adds no second span for the same call.
        assert [span["origin"] for span in gen_ai_spans(ingest)] == ["auto.ai.llmapp"]

    assert relay.items_of_type("trace_metric"), relay.item_types
    assert not upstream.items_of_type("trace_metric")
    for ingest in (upstream, relay):
        for body in ingest.received_bytes:
            assert API_KEY.encode() not in body
            assert API_KEY[-12:].encode() not in body


def test_provider_error_is_reported_to_both(manage, sentry_env, fake_openai):
    upstream, relay, env = sentry_env
    fake_openai.reply_error(500, f"upstream exploded; key {API_KEY}")
    result = manage("llm", "summarize", "-m", "hi", env=env | {"LLM_SUMMARIZE_RETRIES": "0"})
    assert result.returncode == 1
    for ingest in (upstream, relay):
        [event] = [item.json for item in ingest.items_of_type("event")]
        [exception] = event["exception"]["values"]
        assert exception["type"] == "ProviderError"
        assert "HTTP 500" in exception["value"]
        for body in ingest.received_bytes:
            assert API_KEY.encode() not in body


def test_sent_request_counters_and_call_metrics_reach_statsd(manage, sentry_env):
    _, _, env = sentry_env
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        env |= {
            "LLM_METRICS_BACKEND": "llmapp.metrics.statsd.StatsdMetricsBackend",
            "STATSD_HOST": "127.0.0.1",
            "STATSD_PORT": str(sock.getsockname()[1]),
        }
        result = manage("llm", "summarize", "-m", "hi", env=env)
        assert result.returncode == 0, result.stderr
        lines = []
        sock.settimeout(0.5)
        try:
            while True:
                lines += sock.recv(65536).decode().splitlines()
        except TimeoutError:
            pass
    assert any(line.startswith("llmapp.internal.sent_requests.upstream.events:1|c") for line in lines), lines
    assert any(line.startswith("llmapp.internal.sent_requests.relay.events:1|c") for line in lines), lines
    [calls] = [line for line in lines if line.startswith("llmapp.complete_prompt.calls:")]
    assert calls.startswith("llmapp.complete_prompt.calls:1|c|#")
    for tag in ("usecase:summarize", "provider:openai", "model:gpt-4o-mini", "status:ok"):
        assert tag in calls
    assert any(line.startswith("llmapp.complete_prompt.latency_ms:") and "|ms" in line for line in lines)
    assert any(line.startswith("llmapp.complete_prompt.output_tokens:4|c") for line in lines)
