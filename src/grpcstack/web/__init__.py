"""Connect (HTTP/JSON and binary), and gRPC-Web, over the same services and middleware chain.

Set ``GRPC_HTTP_PORT`` and every service an ``AsyncBaseServer`` serves over gRPC is also served on
that port over HTTP/1.1 and HTTP/2 (h2c), to curl, browsers and any Connect or gRPC-Web client::

    curl -H 'content-type: application/json' -H 'user-id: demo' \\
        -d '{"message": "hi"}' http://127.0.0.1:8080/echo.v1.EchoService/Echo

``server.web_app()`` is the same ASGI application, for mounting in an existing app.
"""

from __future__ import annotations

from .app import WebApp
from .jsonmap import JsonError, JsonMapper
from .listener import WebListener
from .protocol import CODE_NAMES, HTTP_STATUS

__all__ = ["CODE_NAMES", "HTTP_STATUS", "JsonError", "JsonMapper", "WebApp", "WebListener"]
