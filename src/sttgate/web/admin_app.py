"""The admin listener's application (docs/operations.md#the-admin-listener): ``/metrics``, the admin API
(``/admin/v1``, docs/admin-api.md) and the console (``/admin/``), on an address of their own
(``STTGATE_ADMIN_HOST``/``STTGATE_ADMIN_PORT``) that the public never reaches.

It is built over the public app's :class:`~sttgate.web.services.Services` and shares them (store, sessions,
metrics); it never starts or stops them, so it is started after the public app and cleaned up before it.
"""

from __future__ import annotations

from aiohttp import web

from sttgate.web import metrics
from sttgate.web.admin_api import add_admin_api_routes
from sttgate.web.admin_console import add_admin_console_routes
from sttgate.web.services import SERVICES, Services


def build_admin_app(services: Services) -> web.Application:
    """The admin app over ``services`` (those of a public app that has started, or will have before a request)."""
    app = web.Application()
    app[SERVICES] = services
    metrics.setup(app)
    add_admin_api_routes(app)
    add_admin_console_routes(app)
    return app
