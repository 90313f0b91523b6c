import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peer.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

http_app = get_asgi_application()  # sets Django up before the consumer import

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from blog.consumers import ChatConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": URLRouter([re_path(r"^ws/chat/(?P<room>[\w-]{1,64})/$", ChatConsumer.as_asgi())]),
    }
)
