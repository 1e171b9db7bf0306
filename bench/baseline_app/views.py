"""Parse one JSON event and count it in Redis: the least a webhook endpoint can do."""

import json

import redis
from django.conf import settings
from django.http import HttpResponse, JsonResponse

_redis = redis.Redis.from_url(settings.REDIS_URL)


def count_event(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    try:
        event = json.loads(request.body)
        key = f"bench:baseline:{event['ip']}"
        field = event["type"]
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "expected a JSON object with ip and type"}, status=400)
    _redis.hincrby(key, field, 1)
    return JsonResponse({"accepted": 1, "duplicates": 0, "unattributed": 0, "ignored": 0, "rejected": []})
