"""The container's health check: exit 0 when this container's gateway answers ``GET /healthz`` with 200.

``/healthz`` is alive-only (it stays 200 while the gateway drains), so a draining container is not restarted; see
docs/operations.md#packaging. Standard library only: the image has no curl.
"""

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("STTGATE_PORT", "8080")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthz: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
