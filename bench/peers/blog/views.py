import asyncio
import json

import httpx
from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_page

from .models import Post

EVENTS_GROUP = "bench_events"


async def health(request):
    return HttpResponse("ok", content_type="text/plain")


async def page(request):
    """W1: one query (the 20 newest posts, async ORM), a template extending a base layout."""
    posts = [p async for p in Post.objects.order_by("-published_at")[:20]]
    return render(request, "blog/page.html", {"posts": posts})


# W2: the same view behind Django's standard per-view page cache, 60 s, Redis backend.
cached = cache_page(60)(page)

_upstream = None


def upstream_client():
    """One pooled keep-alive client per worker process (httpx default pool limits)."""
    global _upstream
    if _upstream is None:
        _upstream = httpx.AsyncClient(base_url=settings.UPSTREAM_URL, timeout=10.0)
    return _upstream


async def gather(request):
    """W3: three concurrent GETs to the 50 ms upstream stub, combined."""
    client = upstream_client()
    replies = await asyncio.gather(*(client.get(f"/upstream/{n}") for n in (1, 2, 3)))
    results = []
    for r in replies:
        r.raise_for_status()
        results.append(r.json())
    return JsonResponse({"count": len(results), "results": results})


async def events(request):
    """W6: subscribe first, then send a comment, then one `data:` event per published message."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(EVENTS_GROUP, channel)

    async def stream():
        try:
            yield ": connected\n\n"
            while True:
                msg = await layer.receive(channel)
                yield "data: " + json.dumps({"message": msg["message"]}) + "\n\n"
        finally:
            await layer.group_discard(EVENTS_GROUP, channel)

    response = StreamingHttpResponse(stream(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


async def publish(request):
    """W6: POST {"message": ...} -> group_send to every open /bench/events stream."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    message = json.loads(request.body)["message"]
    await get_channel_layer().group_send(EVENTS_GROUP, {"type": "sse.message", "message": message})
    return HttpResponse(status=204)
