"""Local emulators of the providers (docs/contract.md#emulators): see :mod:`sttgate.emulators.app`."""

from .app import EmulatorConfig, create_app, serve
from .recorder import RECORDER, Recorder, SessionRecord

__all__ = ["RECORDER", "EmulatorConfig", "Recorder", "SessionRecord", "create_app", "serve"]
