"""The HTTP face of the gateway: every aiohttp route, the refusal middleware and the app's services.

Build the app with :func:`sttgate.web.app.create_app`; run processes with :mod:`sttgate.process`.
"""
