"""sttgate: a metered gateway for real-time speech-to-text."""

__version__ = "0.1.0"
