import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levipanel.settings")

from levipanel.handler import get_asgi_application  # noqa: E402

# Set up Django (and its app registry) before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from engines_app.web.consumers import ConnectGate  # noqa: E402
from engines_app.web.origin import SameOriginValidator  # noqa: E402
from engines_app.web.routing import websocket_urlpatterns  # noqa: E402
from levipanel.collector import freeze_loaded  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Pages of this panel's exact origin with a session only: the consumer closes
        # anonymous users; a user out of connections is refused before the database.
        "websocket": SameOriginValidator(
            ConnectGate(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)
freeze_loaded()
