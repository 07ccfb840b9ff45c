"""The aiohttp application: routes, auth, size limits, and errors as one-line JSON."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import client_api, dashboard, drain_api, openapi
from .auth import presented_secret
from .errors import BadRequest, RedisOutOfMemory, Refused, StorageError, StoreUnavailable
from .runtime import CALLER, HUB_KEY, Hub
from .worker_ws import handle_worker_socket, on_hub_request

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Workers authenticate with their own token (/ws/, /worker/); the dashboard's static files
# hold no data.
OPEN_PATHS = ("/health", "/metrics", "/ws/", "/worker/", "/dashboard/", "/openapi.json")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    try:
        return await handler(request)
    except BadRequest as exc:
        log.info("%s %s refused: %s", request.method, request.path, exc)  # one line, no trace
        response = web.json_response({"error": str(exc)}, status=exc.status)
        if request.get(client_api.CLOSE_AFTER):
            response.force_close()
        return response
    except Refused as exc:
        return web.json_response(
            {"error": str(exc)},
            status=exc.status,
            headers={"Retry-After": str(max(1, round(exc.retry_after_s)))},
        )
    except web.HTTPRequestEntityTooLarge:
        limit = hub.config.max_body_bytes
        return web.json_response({"error": f"the body exceeds {limit} bytes"}, status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(
            {"error": exc.reason},
            status=exc.status,
            headers={
                k: v for k, v in exc.headers.items() if k.lower() in ("www-authenticate", "allow")
            },
        )
    except RedisOutOfMemory as exc:
        hub.redis_failed(exc)
        return web.json_response(
            {"error": "redis out of memory"}, status=503, headers={"Retry-After": "5"}
        )
    except StorageError as exc:
        log.warning("%s %s: output storage failed: %s", request.method, request.path, exc)
        return web.json_response({"error": f"output storage failed: {exc}"}, status=503)
    except StoreUnavailable as exc:
        hub.redis_failed(exc)
        return web.json_response(
            {
                "error": f"Redis at {hub.redis_where} is unavailable: "
                "the hub reconnects by itself, retry shortly"
            },
            status=503,
        )


@web.middleware
async def api_keys(request: web.Request, handler: Handler) -> web.StreamResponse:
    keyring = request.app[HUB_KEY].keyring
    open_path = request.path == "/" or request.path.startswith(OPEN_PATHS)
    if keyring.enabled and not open_path:
        key = keyring.match(presented_secret(request))
        if key is None:
            raise web.HTTPUnauthorized(
                reason="a valid API key is required (Authorization: Bearer KEY or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request[CALLER] = key
    return await handler(request)


@web.middleware
async def per_ip(request: web.Request, handler: Handler) -> web.StreamResponse:
    """At most max_connections_per_ip requests in flight per peer (streams and sockets count
    for as long as they are open). Behind a reverse proxy every peer is the proxy: raise it."""
    peer = request.remote or ""
    counter = request.app[HUB_KEY].connections
    counter.opened(peer)
    try:
        return await handler(request)
    finally:
        counter.closed(peer)


def make_app(hub: Hub) -> web.Application:
    app = web.Application(
        client_max_size=hub.config.max_body_bytes, middlewares=[errors, per_ip, api_keys]
    )
    app[HUB_KEY] = hub
    client_api.add_routes(app)
    dashboard.add_routes(app)
    openapi.add_routes(app)
    drain_api.add_routes(app)
    app.router.add_get("/ws/worker/{worker_id}", handle_worker_socket)
    # Other hubs ask this one about the worker sockets it holds (hello.lua).
    hub.dispatcher.own_channel = hub.store.hub_channel(hub.hub_id)
    hub.dispatcher.on_own_message = lambda data: on_hub_request(hub, data)
    return app
