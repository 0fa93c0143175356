"""Helpers shared by every test suite, imported one way: ``from tests.support.<module> import ...``.

- ``emulator``: the in-process provider emulators and the one mapping of each provider to its emulator path; the
  per-provider gateway settings and environment are derived from the provider registry and that mapping.
- ``gateway``: a running gateway app on an ephemeral port, and its admin listener (``/metrics``) on another
  (``Gateway``, ``gateway_settings``, ``running_gateway``).
- ``servers``: any aiohttp app on an ephemeral loopback port.
- ``upgrade``: raw WebSocket upgrade requests that keep a refusal's JSON body and headers.
- ``accounts``: an account with a key in a store.
- ``serve``: ``sttgate serve`` subprocesses (admin listener off unless asked for: its default port is shared).
- ``postgres``: a fresh schema on the test PostgreSQL, or a skip.
- ``waiting``: polling a condition with a bound.
- ``emulator_client``, ``browser``, ``rtsp``, ``pull``: helpers of the emulator, page and pull suites.

The ``conftest.py`` files only wire these up as fixtures.
"""
