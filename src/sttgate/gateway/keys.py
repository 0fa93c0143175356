"""Typed keys of the gateway's ``web.Application`` state, in a module of their own so every part can import them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from sttgate.config import Settings

if TYPE_CHECKING:
    from sttgate.gateway.manager import SessionManager
    from sttgate.gateway.metrics import GatewayMetrics
    from sttgate.store import Store

SETTINGS = web.AppKey("sttgate_settings", Settings)
STORE: web.AppKey[Store] = web.AppKey("sttgate_store")
SESSIONS: web.AppKey[SessionManager] = web.AppKey("sttgate_sessions")
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("sttgate_metrics")
UPSTREAM_HTTP = web.AppKey("sttgate_upstream_http", aiohttp.ClientSession)
GATEWAY_ID = web.AppKey("sttgate_gateway_id", str)
