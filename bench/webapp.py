"""The web benchmark's ASGI application: two async views that differ only in how they call.

    python -m uvicorn bench.webapp:application --loop asyncio --workers 1 --no-access-log

``/llm`` awaits ``acomplete_prompt``; ``/raw`` awaits a raw ``openai.AsyncOpenAI``
client with the same payload, against the same fake server; both answer the text.
``/ready`` answers once Django is up. It is also the URLconf (bench.websettings).
"""

import asyncio

from llmproject.runner import configure

from .harness import MESSAGE, ROOT, USECASE

configure(default_settings="bench.websettings", root=ROOT)

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()

from django.conf import settings  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from llmapp import acomplete_prompt  # noqa: E402
from llmapp.calls.service import prepare_request  # noqa: E402

_raw = {}


def raw_client():
    """The raw SDK client and payload: what the openai provider would send, built once per loop."""
    loop = asyncio.get_running_loop()
    if loop not in _raw:
        import openai

        options = settings.LLM_PROVIDERS["openai"]["OPTIONS"]
        request, backend = prepare_request(USECASE, MESSAGE)
        payload = {key: value for key, value in backend.build_payload(request).items() if key != "timeout"}
        client = openai.AsyncOpenAI(
            base_url=options["base_url"],
            api_key=options["api_key"],
            max_retries=0,
            timeout=options["timeout"],
        )
        _raw[loop] = client, payload
    return _raw[loop]


async def llm(request):
    completion = await acomplete_prompt(USECASE, MESSAGE)
    return HttpResponse(completion.text, content_type="text/plain")


async def raw(request):
    client, payload = raw_client()
    response = await client.chat.completions.create(**payload)
    return HttpResponse(response.choices[0].message.content, content_type="text/plain")


async def ready(request):
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [path("llm", llm), path("raw", raw), path("ready", ready)]
