"""Benchmark harness: sttgate measured side by side with a direct connection and with nginx."""
