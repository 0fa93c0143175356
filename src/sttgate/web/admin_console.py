"""The admin console (docs/admin-api.md#console): ``GET /admin/``, a page of plain ES modules and CSS under
``web/static/admin/`` that calls the admin API (``/admin/v1``) from the operator's browser with an admin token.

The page is static: it holds no secret and renders nothing on the server, so this module only serves files. They
are served with a Content-Security-Policy that allows this origin's scripts, styles and API only (the console has
no inline script or style and loads nothing from elsewhere), and may not be framed. The admin app mounts it next to
the admin API with :func:`add_admin_console_routes`.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

from aiohttp import web

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONSOLE_CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}


def _console_dir() -> Traversable:
    return resources.files("sttgate.web") / "static" / "admin"


# The page's modules and style sheets, by name: only these are served (no path ever reaches the file system).
CONSOLE_FILES = frozenset(
    f.name for f in _console_dir().iterdir() if f.is_file() and f.name.endswith(tuple(_CONTENT_TYPES))
)


def add_admin_console_routes(app: web.Application) -> None:
    """Serve the console on ``app`` (before it starts): ``/admin`` → ``/admin/``, the page, its static files."""
    app.router.add_get("/admin", console_redirect)
    app.router.add_get("/admin/", console_page)
    app.router.add_get("/admin/static/{name}", console_static)


async def console_redirect(request: web.Request) -> web.Response:
    """``/admin`` → ``/admin/``, relative so that a reverse proxy's path prefix survives (the page uses relative
    URLs, for its files and for the API)."""
    raise web.HTTPPermanentRedirect("admin/")


async def console_page(request: web.Request) -> web.Response:
    body = (_console_dir() / "index.html").read_bytes()
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=_HEADERS)


async def console_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in CONSOLE_FILES:
        raise web.HTTPNotFound()
    content_type = _CONTENT_TYPES[name[name.rindex(".") :]]
    body = (_console_dir() / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)
