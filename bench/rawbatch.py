"""The batch run's floor: the same calls through the raw SDK in a thread pool, no Django.

    python -m bench.rawbatch INPUT OUTPUT --base-url URL --concurrency N --payload JSON

Reads the JSON Lines input the CLI reads and writes one JSON line per answer, in
order, with one ``openai.OpenAI`` client shared by ``N`` threads, as the openai
provider does. ``--payload`` holds the rest of each request (model, system prompt,
temperature, token limit), the same the CLI's use case sends. The difference to the
CLI's wall time is what Django, llmapp and the CLI add; with ``--django`` it starts
Django first, so the difference is what llmapp and the CLI add.
"""

import argparse
import json
from concurrent.futures import ThreadPoolExecutor

import openai


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--payload", type=json.loads, required=True)
    parser.add_argument(
        "--django",
        action="store_true",
        help="Start Django first (the host project's settings), as any management command does.",
    )
    options = parser.parse_args()
    if options.django:
        import django

        from llmproject.runner import configure

        configure(default_settings="settings.dev")
        django.setup()
    payload = options.payload
    system = payload.pop("messages")
    client = openai.OpenAI(base_url=options.base_url, api_key="sk-bench", max_retries=0, timeout=30)

    def call(line):
        messages = [*system, {"role": "user", "content": json.loads(line)}]
        response = client.chat.completions.create(messages=messages, **payload)
        return {"text": response.choices[0].message.content, "usage": response.usage.completion_tokens}

    with (
        open(options.input, encoding="utf-8") as lines,
        open(options.output, "w", encoding="utf-8") as out,
        ThreadPoolExecutor(max_workers=options.concurrency) as pool,
    ):
        for record in pool.map(call, lines):
            out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
